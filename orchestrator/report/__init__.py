"""One self-contained HTML page per search: `python -m orchestrator.report EXPERIMENT_DIR [--wandb MODE]`.

Reads the experiment's summary.json (written by the search at its end), the Optuna study in optuna.db,
best/model_card.json and best/samples.png, and writes EXPERIMENT_DIR/report.html: every plot and image
is embedded as a base64 PNG, there is no external CSS or JavaScript, so the file can be mailed or
archived alone. With `--wandb online` it also builds a W&B Report of the same search (needs the network
and the wandb-workspaces package; without them it says so in one line and writes the HTML anyway).

    load.py          what the report reads from the experiment folder, importances from the study
    plots.py         the four plots
    page.py          the page's sections, rendered from page.html.j2, and the file written
    wandb_report.py  the W&B Report
    cli.py           the command line (__main__.py runs it)
"""

from orchestrator.report.page import write_report
from orchestrator.tracking.report import publish_wandb_report

__all__ = ["publish_wandb_report", "write_report"]
