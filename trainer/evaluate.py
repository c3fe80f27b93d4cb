"""`python -m trainer.evaluate`: score a checkpoint on a split against the identity baseline.

The checkpoint carries its own config and generator architecture, and its folder holds the run's
split.json, so evaluation sees exactly the images the run held out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import torch
from rich.console import Console

from trainer.checkpoint import load_torch
from trainer.config import Device, TrainConfig
from trainer.data import SPLITS, PairedData, PairedImages
from trainer.errors import UserError, exits_cleanly_on_user_error
from trainer.export import generator_from_checkpoint
from trainer.loop import evaluate, identity_baseline, load_run_data, pick_device, translate
from trainer.models import UNetGenerator
from trainer.train import OneLineErrorParser, comparison_table
from trainer.visualize import save_grid

GRID_SAMPLES = 8


@dataclass
class CheckpointModel:
    generator: UNetGenerator  # eval mode, on the requested device
    config: TrainConfig
    epoch: int
    split_hash: str


@dataclass
class Evaluation:
    split: str
    epoch: int  # epochs the checkpoint had trained
    metrics: dict[str, float]  # <split>_ssim, <split>_psnr, <split>_mae
    baseline: dict[str, float] | None  # identity baseline; None when A and B differ in channels
    samples: tuple[torch.Tensor, ...]  # inputs, outputs, targets (CPU, [-1, 1])
    pairs: int


def load_checkpoint_generator(path: Path, device: torch.device) -> CheckpointModel:
    """Rebuild the generator a checkpoint (last.pt / best.pt) was trained as, with its weights."""
    state = load_torch(Path(path))
    cfg = TrainConfig.from_dict(state["config"], source=str(path))
    return CheckpointModel(generator_from_checkpoint(state).to(device), cfg, state["epoch"], state["split_hash"])


def load_checkpoint_data(model: CheckpointModel, run_dir: Path) -> PairedData:
    """The run's data and split (split.json in run_dir), refusing data that no longer gives that split."""
    data = load_run_data(model.config, run_dir)
    if data.split_hash != model.split_hash:
        raise UserError(
            f"{model.config.data}: gives a different train/val/test split than the one this model was trained on; "
            f"keep split.json next to the checkpoint in {run_dir} and the data folder unchanged"
        )
    return data


def first_samples(G: UNetGenerator, images: PairedImages) -> tuple[torch.Tensor, ...]:
    a, b = images.batch(torch.arange(min(GRID_SAMPLES, len(images))))
    return a, translate(G, a).cpu(), b


def evaluate_checkpoint(checkpoint: Path, split: str = "test", device: str = "auto") -> Evaluation:
    """Metrics of a checkpoint's generator on one split of its run, the identity baseline, and samples.

    Always in fp32, whatever precision the run trained in, so the numbers do not depend on the hardware.
    """
    if split not in SPLITS:
        raise UserError(f"split {split!r} does not exist; choose one of {', '.join(SPLITS)}")
    checkpoint = Path(checkpoint)
    torch_device = pick_device(device)
    model = load_checkpoint_generator(checkpoint, torch_device)
    data = load_checkpoint_data(model, checkpoint.parent)
    images = data.splits[split]
    batch_size = model.config.val_batch_size
    metrics = evaluate(model.generator, images, batch_size, prefix=split)
    baseline = identity_baseline(images, torch_device, batch_size, prefix=split) if data.has_identity_baseline else None
    samples = first_samples(model.generator, images)
    return Evaluation(split, model.epoch, metrics, baseline, samples, len(images))


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
    result = evaluate_checkpoint(args.checkpoint, args.split, args.device)
    grid = args.grid if args.grid is not None else args.checkpoint.parent / f"{args.split}_samples.png"
    save_grid(grid, *result.samples)
    console = Console()
    title = f"{args.checkpoint} (epoch {result.epoch}) on {args.split} ({result.pairs} pairs)"
    console.print(comparison_table(title, result.metrics, result.baseline, prefix=args.split))
    console.print(f"samples: {grid}")


if __name__ == "__main__":
    main()
