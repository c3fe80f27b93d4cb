"""`python -m benchmarks.quality`: does the fast path cost quality? fp32 against the default fast path.

Trains the same configuration with the same seed twice, once in plain fp32 (NCHW, per-parameter Adam)
and once with the trainer's default speed switches (autocast where the hardware has it, channels_last,
fused Adam), for the same number of steps on built-in data. Both trained generators are then scored
in fp32 on the same val split, so only training precision differs. The run passes when the two val
SSIMs agree within --tolerance (0.01).

GAN training is chaotic: two runs that differ in rounding follow different trajectories. To show
what a gap means, every seed in --seeds is trained in both modes, and the table also shows how far
fp32 runs of different seeds lie apart.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from trainer.checkpoint import BEST, RunState
from trainer.config import TrainConfig
from trainer.data import load_run_data
from trainer.errors import exits_cleanly_on_user_error
from trainer.loop import autocast_dtype, evaluate, pick_device, train

console = Console(width=max(Console().width, 100))  # no wrapped rows in logs
# The plain fp32 step of the reference implementation; every other switch keeps TrainConfig's default.
FP32 = dict(precision="fp32", channels_last="off", fused_adam=False, compile="off")
FAST: dict[str, object] = {}
# A glyph run that learns well past the identity baseline in a few minutes on 2 CPU cores.
DEFAULT_RUN = dict(
    data="builtin:glyphs",
    size=64,
    batch_size=16,
    max_train_images=1120,
    epochs=5,
    ngf=32,
    ndf=32,
    lr_G=1e-3,
    lr_D=1e-4,
    dropout=0.0,
)


def train_and_score(cfg: TrainConfig, run_dir: Path) -> tuple[dict[str, float], float]:
    """Train, then score the best checkpoint's generator on val in fp32. Returns (metrics, seconds)."""
    started = time.perf_counter()
    for _ in train(cfg, run_dir):
        pass
    seconds = time.perf_counter() - started
    G = RunState.load(run_dir / BEST).generator().to(pick_device(cfg.device))
    metrics = evaluate(G, load_run_data(cfg, run_dir).splits["val"], cfg.val_batch_size, prefix="val")
    return metrics, seconds


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.quality",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", default=DEFAULT_RUN["data"], help="training data (default: %(default)s)")
    p.add_argument("--size", type=int, default=DEFAULT_RUN["size"], help="image size (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=DEFAULT_RUN["epochs"], help="epochs per run (default: %(default)s)")
    p.add_argument("--seeds", default="0,1", help="trainer seeds, comma-separated (default: %(default)s)")
    p.add_argument("--tolerance", type=float, default=0.01, help="allowed val SSIM gap (default: %(default)s)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="device (default: auto)")
    return p.parse_args(argv)


@exits_cleanly_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    base = TrainConfig(
        **{**DEFAULT_RUN, "data": args.data, "size": args.size, "epochs": args.epochs, "device": args.device}
    )
    device = pick_device(base.device)
    fast_dtype = autocast_dtype(base.precision, device)
    fast_label = f"fast path ({str(fast_dtype).removeprefix('torch.') if fast_dtype else 'fp32'} autocast)"
    console.print(
        f"[bold]fp32 vs fast path[/] on {device.type}: {base.data}, {base.size} px, {base.epochs} epochs of "
        f"batch {base.batch_size}, ngf {base.ngf}, seeds {seeds}; val scored in fp32"
    )

    table = Table(title="val metrics of the best epoch, scored in fp32")
    for column in ("seed", "mode", "val SSIM", "val PSNR", "val MAE", "train s"):
        table.add_column(column, justify="right")
    ssim: dict[tuple[int, str], float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        for seed in seeds:
            for mode, changes in (("fp32", FP32), (fast_label, FAST)):
                cfg = base.replace(seed=seed, **changes)
                metrics, seconds = train_and_score(cfg, Path(tmp) / f"{seed}-{mode.split()[0]}")
                ssim[seed, mode] = metrics["val_ssim"]
                table.add_row(
                    str(seed),
                    mode,
                    f"{metrics['val_ssim']:.4f}",
                    f"{metrics['val_psnr']:.2f}",
                    f"{metrics['val_mae']:.4f}",
                    f"{seconds:.0f}",
                )
                console.print(f"  seed {seed}, {mode}: val SSIM {metrics['val_ssim']:.4f} ({seconds:.0f} s)")
    console.print(table)

    gaps = [abs(ssim[seed, "fp32"] - ssim[seed, fast_label]) for seed in seeds]
    fp32_values = [ssim[seed, "fp32"] for seed in seeds]
    if len(seeds) > 1:
        console.print(f"fp32 seed-to-seed spread: {max(fp32_values) - min(fp32_values):.4f} val SSIM")
    passed = max(gaps) <= args.tolerance
    verdict = "PASS" if passed else "FAIL"
    print(
        f"{verdict}: largest |fp32 - fast path| val SSIM gap {max(gaps):.4f} "
        f"(per seed: {', '.join(f'{g:.4f}' for g in gaps)}); tolerance {args.tolerance}"
    )
    return 0 if passed else 1


if __name__ == "__main__":
    torch.set_float32_matmul_precision("highest")  # fp32 means fp32 on GPUs with TF32 too
    sys.exit(main())
