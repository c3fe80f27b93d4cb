"""`python -m orchestrator.report EXPERIMENT_DIR [--wandb MODE]`: rebuild report.html, and a W&B Report online."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from orchestrator.report.load import load_summary
from orchestrator.report.page import write_report
from orchestrator.tracking.report import publish_wandb_report
from orchestrator.tracking.runs import MODES, sync_command, wandb_hint
from trainer.errors import exits_cleanly_on_user_error


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.report", description="Write EXPERIMENT_DIR/report.html for a finished search."
    )
    parser.add_argument("experiment_dir", type=Path, help="the search's experiment folder (it holds summary.json)")
    parser.add_argument(
        "--wandb",
        choices=MODES,
        default=None,
        help="online: also build a W&B Report of the search (needs the network); default: the search's own mode",
    )
    return parser.parse_args(argv)


@exits_cleanly_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    path = write_report(args.experiment_dir)
    print(f"report: {path}")
    summary = load_summary(args.experiment_dir)
    mode = args.wandb or (summary.get("wandb") or {}).get("mode", "off")
    if mode == "online":
        report_url = publish_wandb_report(summary, args.experiment_dir)
        if report_url:
            print(f"W&B report: {report_url}")
    elif mode == "offline" and summary.get("wandb"):
        command = sync_command(Path(args.experiment_dir).resolve())
        print(f"W&B runs are offline; upload them with: {command}{wandb_hint()}")
    return 0
