"""`python -m trainer.evaluate`: score a checkpoint on a split against a baseline.

The checkpoint carries its own config and generator architecture, and its folder holds the run's
split.json, so evaluation sees exactly the images the run held out. What is scored, and how, is
trainer.evaluation's; this command prints it and saves a sample grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import get_args

from rich.console import Console

from trainer.cli import OneLineErrorParser
from trainer.config import Device
from trainer.data import SPLITS
from trainer.errors import exits_cleanly_on_user_error
from trainer.evaluation import evaluate_checkpoint
from trainer.files import check_output_file
from trainer.names import BASELINE_LABELS
from trainer.tables import comparison_table, volume_table
from trainer.visualize import save_grid


def build_parser() -> OneLineErrorParser:
    parser = OneLineErrorParser(
        prog="python -m trainer.evaluate",
        description="Evaluate a checkpoint on its run's split: SSIM / PSNR / MAE against the identity baseline.",
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="a run's best.pt or last.pt")
    parser.add_argument("--split", choices=SPLITS, default="test", help="which split to evaluate (default: test)")
    parser.add_argument(
        "--grid", type=Path, help="PNG of input | output | target (default: <split>_samples.png beside the checkpoint)"
    )
    parser.add_argument("--device", choices=get_args(Device), default="auto", help="where to run (default: auto)")
    return parser


@exits_cleanly_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    grid = args.grid if args.grid is not None else args.checkpoint.parent / f"{args.split}_samples.png"
    check_output_file(grid, "--grid")  # before the evaluation, not after it
    result = evaluate_checkpoint(args.checkpoint, args.split, args.device)
    save_grid(grid, *result.samples)
    console = Console()
    title = f"{args.checkpoint} (epoch {result.epoch}) on {args.split} ({result.pairs} pairs), 2D in [-1, 1]"
    label = BASELINE_LABELS[result.baseline_name]
    console.print(comparison_table(title, result.metrics, result.baseline, prefix=args.split, baseline_label=label))
    if result.native is not None:
        title = (
            f"the same at the images' own size ({result.native.describe_sizes()}): outputs resized back as "
            "trainer.predict writes them"
        )
        console.print(
            comparison_table(title, result.native.metrics, result.native.baseline, args.split, baseline_label=label)
        )
    if result.volumes is not None:
        low, high = result.volumes.value_range
        title = (
            f"whole volumes of {args.split} in the data's units inside the foreground (range {low:.4g} .. {high:.4g})"
        )
        console.print(volume_table(result.volumes, title))
    console.print(f"samples: {grid}")


if __name__ == "__main__":
    main()
