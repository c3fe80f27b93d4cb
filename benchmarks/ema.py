"""`python -m benchmarks.ema`: does an EMA of the generator (`ema_decay`) give better or steadier models?

Trains each built-in 2D set with each seed twice, without and with the EMA, everything else equal,
and prints per set the best val SSIM (the epoch a search would export) and the mean absolute change
of val SSIM from one epoch to the next (how much the model a search sees jumps between epochs), as
the mean over seeds with the per-seed values. Val SSIM is the loop's own (fp32, G in eval mode; the
EMA's weights when on). Not a test: it prints a table for the README.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.quality import DEFAULT_RUN
from trainer.config import TrainConfig
from trainer.data import load_run_data
from trainer.errors import exits_cleanly_on_user_error
from trainer.loop import train

console = Console(width=max(Console().width, 110))  # no wrapped rows in logs
SETS = ("builtin:glyphs", "builtin:colorize", "builtin:restore")
# bench_quality's short CPU run (its lrs learn within a few epochs) with the test suite's 16-wide
# networks, at default.yaml's glyph subset, and as many epochs as it takes to see TRAIN_IMAGES pairs:
# 5 epochs of 768 glyphs, and the same 240 steps on the photo sets, whose 44 training tiles make 2
# steps an epoch. With ngf 32 one glyph run took 3.5-5 min on 2 shared cores: 18 runs would not fit
# in 20 minutes.
RUN = {**DEFAULT_RUN, "max_train_images": 768, "ngf": 16, "ndf": 16}
TRAIN_IMAGES = 3840


@dataclass
class Run:
    val_ssim: list[float]  # per epoch
    seconds: float

    @property
    def best(self) -> float:
        return max(self.val_ssim)

    @property
    def jitter(self) -> float:
        """Mean |val SSIM(epoch) - val SSIM(epoch - 1)|."""
        steps = [abs(b - a) for a, b in zip(self.val_ssim, self.val_ssim[1:])]
        return statistics.fmean(steps) if steps else 0.0


def run_once(cfg: TrainConfig, run_dir: Path) -> Run:
    started = time.perf_counter()
    history = [result.val["val_ssim"] for result in train(cfg, run_dir)]
    return Run(history, time.perf_counter() - started)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.ema", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sets", default=",".join(SETS), help="data sets, comma-separated (default: %(default)s)")
    p.add_argument("--seeds", default="0,1,2", help="trainer seeds, comma-separated (default: %(default)s)")
    p.add_argument("--ema-decay", dest="ema_decay", type=float, default=0.999, help="decay (default: %(default)s)")
    p.add_argument("--size", type=int, default=RUN["size"], help="image size (default: %(default)s)")
    p.add_argument(
        "--train-images",
        dest="train_images",
        type=int,
        default=TRAIN_IMAGES,
        help="training pairs each run sees; sets its epochs (default: %(default)s)",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="device (default: auto)")
    return p.parse_args(argv)


def cells(runs: list[Run], value: str) -> str:
    values = [getattr(r, value) for r in runs]
    return f"{statistics.fmean(values):.4f} ({', '.join(f'{v:.4f}' for v in values)})"


@exits_cleanly_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    modes = {"off": 0.0, f"ema {args.ema_decay:g}": args.ema_decay}
    base = TrainConfig(**{**RUN, "size": args.size, "device": args.device})
    console.print(
        f"[bold]EMA of G[/]: {', '.join(sets)}; {base.size} px, batch {base.batch_size}, at most "
        f"{base.max_train_images} training pairs, epochs to see {args.train_images} of them, ngf {base.ngf}, "
        f"lr_G {base.lr_G:g}, lr_D {base.lr_D:g}, dropout {base.dropout:g}, seeds {seeds}"
    )
    table = Table(title="val SSIM: mean over seeds (per seed)")
    for column in ("data", "EMA", "best val SSIM", "mean |epoch-to-epoch change|", "train s"):
        table.add_column(column, justify="right")
    wins = {"best": True, "jitter": True}
    with tempfile.TemporaryDirectory(prefix="bench-ema-") as tmp:
        for data in sets:
            by_mode: dict[str, list[Run]] = {}
            train_images = len(load_run_data(base.replace(data=data), None).splits["train"])
            epochs = base.epochs_to_see(args.train_images, train_images)
            for mode, decay in modes.items():
                for seed in seeds:
                    cfg = base.replace(data=data, seed=seed, ema_decay=decay, epochs=epochs)
                    run = run_once(cfg, Path(tmp) / f"{data.split(':')[-1]}-{seed}-{decay:g}")
                    by_mode.setdefault(mode, []).append(run)
                    console.print(
                        f"  {data} seed {seed} EMA {mode}: best {run.best:.4f}, jitter {run.jitter:.4f}, "
                        f"{run.seconds:.0f} s; per epoch {', '.join(f'{v:.4f}' for v in run.val_ssim)}"
                    )
            for mode, runs in by_mode.items():
                seconds = sum(r.seconds for r in runs)
                table.add_row(
                    f"{data} ({epochs} epochs)", mode, cells(runs, "best"), cells(runs, "jitter"), f"{seconds:.0f}"
                )
            off, on = by_mode.values()
            wins["best"] &= statistics.fmean(r.best for r in on) > statistics.fmean(r.best for r in off)
            wins["jitter"] &= statistics.fmean(r.jitter for r in on) < statistics.fmean(r.jitter for r in off)
    console.print(table)
    print(
        f"EMA {'wins' if all(wins.values()) else 'does not win'} on every set: higher mean best val SSIM "
        f"{'yes' if wins['best'] else 'no'}, smaller mean epoch-to-epoch change {'yes' if wins['jitter'] else 'no'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
