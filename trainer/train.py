"""`python -m trainer.train`: train one Pix2Pix model from the command line.

Every TrainConfig field is a flag of the same name (`--lambda_l1`, `--lr_G`; `--lambda-l1` works too),
with its help text and default taken from the dataclass, so the CLI can never drift from the config.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from trainer.builtin import BUILTIN_PREFIX
from trainer.checkpoint import BEST, LAST, RunState
from trainer.cli import OneLineErrorParser, add_dataclass_flags
from trainer.config import TrainConfig
from trainer.data import PairedData, load_run_data
from trainer.errors import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    Terminated,
    TrainingDiverged,
    UserError,
    exits_cleanly_on_user_error,
    sigterm_raises,
    storage_advice,
)
from trainer.files import check_output_folder
from trainer.loop import EpochResult, baseline_metrics, pick_device, train
from trainer.memory import OutOfMemory, allocation_failures_named
from trainer.names import BASELINE_LABELS, LOSS_NAMES
from trainer.tables import comparison_table

EXIT_FAILED = 1  # the run could not go on: diverged, or out of memory


# ---------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="python -m trainer.train",
        description="Train a Pix2Pix generator (U-Net) with a PatchGAN discriminator on paired images.",
    )
    parser.add_argument(
        "--out", type=Path, help="run folder for checkpoints and split.json (default: runs/<data>-<size>px)"
    )
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    add_dataclass_flags(parser, TrainConfig, "training settings (names as in search spaces and checkpoints)")
    return parser


def parse_args(argv: Sequence[str] | None) -> tuple[TrainConfig, Path, bool]:
    args = vars(build_parser().parse_args(argv))
    out, resume = args.pop("out"), args.pop("resume")
    cfg = TrainConfig.from_dict(args, source="command line")
    return cfg, out if out is not None else default_run_dir(cfg), resume


def default_run_dir(cfg: TrainConfig) -> Path:
    """runs/<data name>-<size>px: the same command lands in the same folder, so --resume finds it."""
    name = cfg.data.removeprefix(BUILTIN_PREFIX) if cfg.data.startswith(BUILTIN_PREFIX) else Path(cfg.data).name
    return Path("runs") / f"{name or 'data'}-{cfg.size}px"


def check_run_dir(run_dir: Path, resume: bool) -> None:
    check_output_folder(run_dir, "--out")
    if (run_dir / LAST).exists() and not resume:
        raise UserError(
            f"{run_dir / LAST}: a run already exists here; pass --resume to continue it or choose another --out"
        )


# ---------------------------------------------------------------------------------------------
# output


def step_progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("step {task.completed}/{task.total}"),
        TextColumn("{task.fields[images_per_s]:>7.1f} images/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def epoch_line(result: EpochResult, epochs: int) -> str:
    losses = "  ".join(f"{name} {result.losses[name]:.4f}" for name in LOSS_NAMES if name in result.losses)
    val = "  ".join(f"{name} {value:.4f}" for name, value in result.val.items())
    best = "  [green]best[/green]" if result.is_best else ""
    return (
        f"epoch {result.epoch}/{epochs}  {losses}  |  {val}  |  lr_G {result.lr_G:.2e}  lr_D {result.lr_D:.2e}"
        f"  |  {result.seconds:.1f}s{best}"
    )


def describe_data(data: PairedData, cfg: TrainConfig) -> str:
    counts = " / ".join(f"{len(images)} {split}" for split, images in data.splits.items())
    return f"{cfg.data}: {counts} pairs, {data.in_channels} -> {data.out_channels} channels at {cfg.size} px"


def print_summary(console: Console, cfg: TrainConfig, data: PairedData, run_dir: Path) -> None:
    state = RunState.load(run_dir / LAST)
    history = state.history
    best = next(row for row in history if row["epoch"] == state.best_epoch)
    baseline, name = baseline_metrics(data, "val", pick_device(cfg.device), cfg.val_batch_size)
    title = f"best epoch {best['epoch']}/{cfg.epochs} on val ({len(data.splits['val'])} pairs)"
    console.print(comparison_table(title, best, baseline, prefix="val", baseline_label=BASELINE_LABELS[name]))
    console.print(
        f"checkpoints: {run_dir / BEST} (epoch {best['epoch']}), {run_dir / LAST} (epoch {history[-1]['epoch']})"
    )


# ---------------------------------------------------------------------------------------------
# main


def run(cfg: TrainConfig, run_dir: Path, resume: bool, console: Console) -> None:
    check_run_dir(run_dir, resume)
    if resume and not (run_dir / LAST).exists():
        console.print(f"no {run_dir / LAST} yet: starting a new run")
    # Load (and validate) the data before anything is written, so bad input leaves no run folder behind.
    data = load_run_data(cfg, run_dir)
    console.print(describe_data(data, cfg))
    with step_progress(console) as progress:
        task = progress.add_task("starting", total=None, images_per_s=0.0)
        epoch_started = time.perf_counter()

        def on_step(epoch: int, step: int, steps: int) -> None:
            nonlocal epoch_started
            if step == 1:
                epoch_started = time.perf_counter()
            rate = step * cfg.batch_size / max(time.perf_counter() - epoch_started, 1e-9)
            progress.update(
                task, description=f"epoch {epoch}/{cfg.epochs}", completed=step, total=steps, images_per_s=rate
            )

        for result in train(cfg, run_dir, resume=resume, on_step=on_step, data=data):
            progress.console.print(epoch_line(result, cfg.epochs))
    print_summary(console, cfg, data, run_dir)


@exits_cleanly_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    cfg, run_dir, resume = parse_args(argv)
    try:
        with sigterm_raises(), allocation_failures_named(cfg):  # SIGTERM like Ctrl-C; an allocation failure: one line
            run(cfg, run_dir, resume, Console())
    except OutOfMemory as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_FAILED) from None
    except TrainingDiverged as err:
        print(
            f"error: {err}; lower lr_G/lr_D or use --precision fp32, and start again with a new --out", file=sys.stderr
        )
        raise SystemExit(EXIT_FAILED) from None
    except OSError as err:  # a full disk, a spent quota, a file-size limit: what the user must mend
        advice = storage_advice(err)
        if advice is None:
            raise
        print(
            f"error: writing {err.filename or 'a file'}: {err.strerror}; {advice} and continue with the same flags "
            f"plus --resume --out {run_dir}",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_USAGE) from None
    except (KeyboardInterrupt, Terminated) as err:
        stopped, code = (
            ("terminated", EXIT_TERMINATED) if isinstance(err, Terminated) else ("interrupted", EXIT_INTERRUPTED)
        )
        print(f"{stopped}; continue with the same flags plus --resume --out {run_dir}", file=sys.stderr)
        raise SystemExit(code) from None


if __name__ == "__main__":
    main()
