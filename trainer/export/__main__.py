"""`python -m trainer.export`: the export folder of one `trainer.train` run, as a search exports its best
trial (weights, config, model card, TorchScript, ONNX, test samples), for `trainer.predict` and others.

It takes the run's best epoch (best.pt) with the run's own split (split.json beside it) and its data,
scores it on the test split like a search's export, and writes the folder atomically."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import get_args

from trainer.checkpoint import BEST, RunState
from trainer.cli import OneLineErrorParser
from trainer.config import Device
from trainer.errors import UserError, exits_cleanly_on_user_error
from trainer.export import CARD, export_generator
from trainer.export.from_run import evaluated_card
from trainer.files import check_output_folder
from trainer.loop import pick_device


def export_run(run_dir: Path, out: Path, device: str = "auto") -> dict:
    """Export the best epoch of the run in `run_dir` into the folder `out`; returns the card written."""
    checkpoint = Path(run_dir) / BEST
    if not checkpoint.is_file():
        raise UserError(f"{run_dir}: no {BEST}; give the --out folder of a `python -m trainer.train` run")
    check_output_folder(out, "--out")
    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not (out / CARD).is_file():  # the export replaces the folder
        raise UserError(f"--out {out}: exists and is no export folder; give a new folder (or an earlier export)")
    state = RunState.load(checkpoint)
    data = state.load_data(checkpoint.parent)  # refuses data that no longer gives the run's split
    G = state.generator().to(pick_device(device))
    card, _, samples = evaluated_card(state, data, G, "pix2pix-tune generator")
    card["run"] = Path(run_dir).resolve().name  # a name, not a path: the folder may move
    return export_generator(G.cpu(), out, card, samples=samples)


def build_parser() -> OneLineErrorParser:
    parser = OneLineErrorParser(
        prog="python -m trainer.export",
        description="Export a trainer.train run's best epoch as a model folder (what trainer.predict loads).",
    )
    parser.add_argument("--run", type=Path, required=True, help="the run folder (trainer.train's --out)")
    parser.add_argument(
        "--out", type=Path, required=True, help="the export folder to write (new, or an earlier export to replace)"
    )
    parser.add_argument("--device", choices=get_args(Device), default="auto", help="where to evaluate (default: auto)")
    return parser


@exits_cleanly_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    card = export_run(args.run, args.out, args.device)
    test = card.get("test") or {}
    print(f"exported epoch {card['epoch']} of {args.run} to {args.out} (test SSIM {test.get('test_ssim', 0):.4f})")
    print(f"translate with: python -m trainer.predict --model {args.out} --input IMAGES_OR_VOLUMES --output OUT")
    print(f"model card: {Path(args.out) / CARD}")


if __name__ == "__main__":
    main()
