"""`python -m benchmarks.fused`: K trials fused in one process (trainer.fused) on one device.

For each count in --trials it builds K reference-size trials (3 -> 3 channels, the default fast
path: precision, channels-last and fused Adam as TrainConfig's defaults resolve here, losses read
every log_every steps) with different seeds, lambdas and learning rates, fuses them, and times the
fused step with each trial's own batch drawn as the loop draws it. It reports the aggregate
images/s of all K trials together: the number to compare with K separate trainers sharing the GPU
(`benchmarks.concurrent`). `compile: auto` judges a pack by its whole work (trainer.fused.pack_mode);
--compile forces a mode. On CPU it runs too (a smoke test of the fused path and its CPU numbers).

It also owns the comparison of K fused trials against K separate runs of the plain step
(`equality_check`), which tests/test_fused.py runs on CPU and `make gpu-check` on CUDA.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from rich.table import Table

from benchmarks.measure import describe_device, fmt_bytes, parse_ints, sync
from benchmarks.step import CHANNELS, LONG_RUN_STEPS, Timing, add_timing_args, console, synthetic_images, timing_from
from trainer.config import TrainConfig
from trainer.data import PairedImages
from trainer.errors import exits_cleanly_on_user_error
from trainer.fused import FusedTrials, pack_mode
from trainer.loop import (
    TrainStep,
    build_discriminator,
    build_generator,
    build_optimizer,
    build_scheduler,
    pick_device,
    training_batch,
)

DEFAULT_TRIALS = "1,2,4,8"
MODES = ("auto", "off", "on", "graphs")


def trial_mix(base: TrainConfig, trials: int) -> list[TrainConfig]:
    """K trials as a search draws them: other seeds, lambdas and learning rates, the rest shared."""
    return [
        base.replace(seed=base.seed + k, lambda_l1=(100.0, 10.0, 50.0, 300.0)[k % 4], lr_G=(2e-4, 1e-4, 1.5e-4)[k % 3])
        for k in range(trials)
    ]


def trial_batches(
    cfg: TrainConfig, data: PairedImages, steps: int, dtype: torch.dtype = torch.float32
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The batches a run with this seed trains on first, drawn as trainer.loop draws them."""
    rng = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(data), generator=rng)
    batches = []
    for i in range(steps):
        a, b = training_batch(data, order[i * cfg.batch_size : (i + 1) * cfg.batch_size], cfg, rng)
        batches.append((a.to(dtype), b.to(dtype)))
    return batches


# ---------------------------------------------------------------------------------------------
# fused trials against separate runs


def separate_run(cfg: TrainConfig, data: PairedImages, steps: int, device: torch.device) -> dict[str, dict]:
    """A plain run's networks and optimizer state after `steps` steps, built as trainer.loop builds them."""
    dtype = torch.get_default_dtype()
    torch.manual_seed(cfg.seed)
    G = build_generator(cfg.generator_config(CHANNELS, CHANNELS), device)
    D = build_discriminator(cfg, 2 * CHANNELS, device)
    opt_G, opt_D = build_optimizer(G, cfg.lr_G, cfg), build_optimizer(D, cfg.lr_D, cfg)
    build_scheduler(opt_G, cfg)  # as the loop does: it records initial_lr in the optimizer's state
    build_scheduler(opt_D, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    step = TrainStep(cfg, G, D, opt_G, opt_D, scaler, None)
    for a, b in trial_batches(cfg, data, steps, dtype):
        step(a, b)
    return {"G": G.state_dict(), "D": D.state_dict(), "opt_G": opt_G.state_dict()}


def fused_run(cfgs: Sequence[TrainConfig], data: PairedImages, steps: int, device: torch.device) -> FusedTrials:
    """K fused trials after `steps` steps, each on its own batches."""
    fused = FusedTrials.build(cfgs, CHANNELS, CHANNELS, device)
    per_trial = [trial_batches(cfg, data, steps, torch.get_default_dtype()) for cfg in cfgs]
    for i in range(steps):
        losses = fused(fused.pack([t[i][0] for t in per_trial]), fused.pack([t[i][1] for t in per_trial]))
        if not torch.isfinite(losses).all():
            raise RuntimeError("a fused trial's loss became NaN or infinite")
    return fused


def equality_check(device: torch.device, steps: int = 3) -> dict[str, float]:
    """Largest |fused - separate| over 3 trials' G and D weights after `steps` fp32 steps, and the
    fraction of weights off by more than 1e-5 (see tests/test_fused.py for why a few are)."""
    cfg = TrainConfig(
        size=32, ngf=8, ndf=8, batch_size=4, dropout=0.0, device=device.type, precision="fp32",
        channels_last="off", compile="off", log_every=1,
    )  # fmt: skip
    cfgs = trial_mix(cfg, 3)
    data = synthetic_images(12, cfg.size, device, seed=7)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32 here
    try:
        fused = fused_run(cfgs, data, steps, device)
        largest, off, total = 0.0, 0, 0
        for k, trial in enumerate(cfgs):
            separate = separate_run(trial, data, steps, device)
            state = fused.trial_state(k)
            for net in ("G", "D"):
                for name, value in separate[net].items():
                    if value.is_floating_point():
                        diff = (getattr(state, net)[name] - value).abs()
                        largest = max(largest, diff.max().item())
                        off += int((diff > 1e-5).sum())
                        total += value.numel()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return {"max_abs_difference": largest, "fraction_over_1e-5": off / total, "weights": total}


# ---------------------------------------------------------------------------------------------
# throughput


@dataclass
class FusedResult:
    trials: int
    mode: str
    images_per_s: float  # all trials together
    step_s: float  # median seconds of one fused step
    peak_memory: float  # bytes, CUDA: the peak allocated; CPU: nan
    first_step_s: float  # the first step, compile included


def measure_fused(
    trials: int, size: int, batch: int, device: torch.device, timing: Timing, mode: str = "auto"
) -> FusedResult:
    """Aggregate images/s of `trials` fused trials, the default fast path, `mode` as --compile."""
    base = TrainConfig(size=size, batch_size=batch, ngf=timing.ngf, ndf=timing.ngf, device=device.type)
    cfgs = trial_mix(base, trials)
    resolved = pack_mode(cfgs, device, LONG_RUN_STEPS) if mode == "auto" else mode
    fused = FusedTrials.build(cfgs, CHANNELS, CHANNELS, device, resolved)
    data = synthetic_images(max(2 * batch, 8), size, device, seed=0)
    rngs = [torch.Generator().manual_seed(c.seed) for c in cfgs]
    sums: list[torch.Tensor] = []
    steps_run = 0

    def run(steps: int) -> None:
        nonlocal steps_run
        for _ in range(steps):
            batches = []
            for cfg, rng in zip(cfgs, rngs):
                index = torch.randperm(len(data), generator=rng)[:batch]
                batches.append(training_batch(data, index, cfg, rng))
            losses = fused(fused.pack([a for a, _ in batches]), fused.pack([b for _, b in batches]))
            sums.append(losses)
            steps_run += 1
            if steps_run % base.log_every == 0 and not torch.isfinite(torch.stack(sums)).all():
                raise RuntimeError(f"{trials} fused trials: a loss became NaN or infinite")
        sync(device)

    started = time.perf_counter()
    run(1)
    first = time.perf_counter() - started
    run(max(0, timing.warmup - 1))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    chunk = 1 if device.type == "cpu" else timing.chunk
    times = []
    for _ in range(timing.steps):
        started = time.perf_counter()
        run(chunk)
        times.append((time.perf_counter() - started) / chunk)
    peak = float(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else float("nan")
    step_s = statistics.median(times)
    return FusedResult(trials, resolved, trials * batch / step_s, step_s, peak, first)


def fused_table(results: list[FusedResult], size: int, batch: int, device: torch.device) -> Table:
    table = Table(title=f"Fused trials in one process ({size} px, batch {batch} each, {device.type})")
    for column in ("trials", "mode", "s/step", "aggregate images/s", "per trial", "x 1 trial", "peak memory", "1st s"):
        table.add_column(column, justify="right")
    single = results[0].images_per_s / results[0].trials
    for r in results:
        table.add_row(
            str(r.trials),
            r.mode,
            f"{r.step_s:.3f}",
            f"{r.images_per_s:.1f}",
            f"{r.images_per_s / r.trials:.1f}",
            f"{r.images_per_s / single:.2f}",
            fmt_bytes(r.peak_memory),
            f"{r.first_step_s:.1f}",
        )
    return table


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.fused", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--trials", default=DEFAULT_TRIALS, help="trial counts, comma-separated (default: %(default)s)")
    p.add_argument("--compile", choices=MODES, default="auto", help="step mode; auto: as trainer.fused.pack_mode picks")
    p.add_argument("--check", action="store_true", help="first compare 3 fused trials with 3 separate runs (fp32)")
    add_timing_args(p, sizes="256", batches="16")
    return p.parse_args(argv)


@exits_cleanly_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    timing = timing_from(args)
    counts = parse_ints(args.trials, "trials")
    sizes = parse_ints(args.sizes, "sizes") if args.sizes else [256]
    batches = parse_ints(args.batch, "batch") if args.batch else [16]
    for size in sizes:
        TrainConfig(size=size)  # the same validation as training
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as trainer.loop.train does on CUDA
    console.print(f"[bold]benchmarks.fused[/] on {describe_device(device)}; torch {torch.__version__}")
    if args.check:
        console.print(f"fused against separate runs (fp32, 3 trials, 3 steps): {equality_check(device)}")
    for size in sizes:
        for batch in batches:
            results = [measure_fused(n, size, batch, device, timing, args.compile) for n in counts]
            console.print(fused_table(results, size, batch, device))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
