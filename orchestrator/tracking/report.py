"""The search as a W&B Report (online only): its trial runs, parameter views and media, built with
wandb-workspaces; without the package, a key or the server it says so in one line and the HTML report stands."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from orchestrator.outcomes import METRIC, SEARCH_METRIC
from orchestrator.report.load import best_trial_id, param_names, wandb_dir
from orchestrator.tracking.offline import WandbLogError, find_runs, read_run
from orchestrator.tracking.runs import api_key_configured, server_reachable, wandb_base_url


def build_wandb_report(summary: dict[str, Any], project: str, entity: str | None) -> Any:
    """The search as a W&B Report: its trial runs (the group) in a line plot, parameter views and media."""
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    group = summary["name"]
    space = summary.get("space") or {}
    names = param_names(summary)
    runset = wr.Runset(
        project=project,
        name=f"{group} trials",
        filters=[expr.Metric("Group") == group, expr.Metric("JobType") == "trial"],
        **({"entity": entity} if entity else {}),
    )
    log_scale = {n: bool((space.get(n) or {}).get("log")) for n in names}
    panels = [
        wr.LinePlot(title="Validation SSIM per epoch", y=[METRIC]),
        wr.ParallelCoordinatesPlot(
            columns=[wr.ParallelCoordinatesPlotColumn(metric=wr.Config(n), log=log_scale[n] or None) for n in names]
            + [wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(SEARCH_METRIC))],
        ),
        wr.ParameterImportancePlot(with_respect_to=SEARCH_METRIC),
        *(
            wr.ScatterPlot(
                title=f"{n} vs best val SSIM",
                x=wr.Config(n),
                y=wr.SummaryMetric(SEARCH_METRIC),
                log_x=log_scale[n] or None,
            )
            for n in names
        ),
        wr.MediaBrowser(title="Validation samples: input | output | target", media_keys=["val_samples"]),
    ]
    intro = f"Search {group} on {summary.get('data', '?')}: {len(summary['trials'])} trials"
    blocks = [
        wr.P(text=f"{intro}; best trial {best_trial_id(summary) or 'none'}."),
        wr.PanelGrid(runsets=[runset], panels=panels),
    ]
    return wr.Report(
        project=project,
        title=f"Search {group}",
        description="Ray Tune + Optuna search of Pix2Pix hyperparameters",
        blocks=blocks,
        **({"entity": entity} if entity else {}),
    )


def wandb_project(summary: dict[str, Any], experiment_dir: Path) -> str | None:
    """The project the search logged to: from summary.json, else from the runs on disk."""
    info = summary.get("wandb") or {}
    if info.get("project"):
        return str(info["project"])
    folder = wandb_dir(summary, experiment_dir)
    for run_dir in find_runs(folder) if folder is not None and folder.is_dir() else []:
        try:
            return read_run(run_dir).project or None
        except WandbLogError:
            continue
    return None


def publish_wandb_report(summary: dict[str, Any], experiment_dir: Path) -> str | None:
    """Save the W&B Report and return its URL; otherwise print one line saying why not, and return None."""
    try:
        import wandb_workspaces.reports.v2  # noqa: F401 - only checking that it is installed
    except ImportError:
        print("W&B report skipped: the wandb-workspaces package is not installed (pip install wandb-workspaces)")
        return None
    url = wandb_base_url()
    project = wandb_project(summary, experiment_dir)
    if project is None:
        problem = "the W&B project of this search is unknown (no project in summary.json and no runs on disk)"
    elif not api_key_configured(url):
        problem = "no W&B API key is configured (run `wandb login`)"
    elif not server_reachable(url):
        problem = f"the W&B server {url} is unreachable"
    else:
        problem = None
    if problem is not None:
        print(f"W&B report skipped: {problem}; the HTML report is written anyway")
        return None
    entity = (summary.get("wandb") or {}).get("entity") or os.environ.get("WANDB_ENTITY")
    try:
        report = build_wandb_report(summary, project, entity)
        report.save()
    except Exception as err:  # any failure of the remote save: one line, the HTML report stands
        print(f"W&B report not saved: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        return None
    return str(report.url)
