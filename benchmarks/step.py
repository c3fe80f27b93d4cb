"""`python -m benchmarks.step`: time the trainer's own step, reference style against the fast path.

One process, the current device. For each setting (size x batch) it builds the reference pix2pix
(3 -> 3 channels, ngf = ndf = 64) once per row, where each row turns on one more speed switch of
TrainConfig, and times `trainer.loop.TrainStep` -- the exact step the training loop runs --
together with `training_batch` (integer images on the device -> augmented float batch).

    reference          fp32, eager, NCHW, per-parameter Adam (foreach=False), losses read every step
    +channels_last     channels-last memory layout
    +bf16 autocast     mixed precision (bf16 on CPUs with bf16 units and bf16 GPUs, else fp16 + scaler)
    +fused Adam        one fused optimizer kernel
    +no per-step sync  losses stay on the device, read every `log_every` steps
    +compile           torch.compile of G and D
    +CUDA graphs       torch.compile with mode="reduce-overhead": the step replayed as CUDA graphs (GPU only)

The row marked [default] is the one TrainConfig's defaults give on this device for a long run:
`compile: auto` takes the mode trainer.compile_choice.MEASURED recorded as fastest for this GPU model
and setting (`make gpu-check` prints new records).

Rows are timed round-robin (one step of each row per round, in a rotating order) so that a
change in machine load hits every row alike; the table shows medians and the spread.
FLOPs are counted with torch.utils.flop_counter.FlopCounterMode on one reference step
(convolutions and matmuls, forward and backward). The peak is a large matmul in the row's
compute dtype, measured here on the same device. Memory: on CUDA the peak allocated by torch
during the row's steps; on CPU the persistent state (weights, grads, Adam moments) plus the
step's transient peak resident memory (benchmarks.measure.PeakMemory).

The other benchmarks: `benchmarks.evaluation` (metrics and JPEG decoding), `benchmarks.concurrent`
(several trainers sharing one GPU), `benchmarks.quality` (fp32 against the fast path's quality).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from benchmarks.measure import PeakMemory, describe_device, fmt_bytes, median_time, parse_ints, state_bytes, sync
from trainer.config import TrainConfig
from trainer.data import PairedImages
from trainer.errors import UserError, exits_cleanly_on_user_error
from trainer.loop import (
    TrainStep,
    autocast_dtype,
    build_discriminator,
    build_generator,
    build_optimizer,
    compile_mode,
    pick_device,
    training_batch,
    use_channels_last,
)

console = Console(width=150)
CHANNELS = 3  # the reference pix2pix: RGB -> RGB
LONG_RUN_STEPS = 10_000  # what "a search-length run" means when the bench resolves compile: auto


@dataclass(frozen=True)
class Switch:
    key: str  # its name for --rows
    label: str  # its row in the table
    changes: dict[str, Any]  # TrainConfig fields it changes from the row above


# Each row adds one switch to the one above it.
SWITCHES = (
    Switch(
        "ref", "reference", dict(precision="fp32", channels_last="off", fused_adam=False, compile="off", log_every=1)
    ),
    Switch("cl", "+channels_last", dict(channels_last="on")),
    Switch("amp", "+autocast", dict(precision="auto")),
    Switch("fused", "+fused Adam", dict(fused_adam=True)),
    Switch("nosync", "+no per-step sync", dict(log_every=25)),
    Switch("compile", "+compile", dict(compile="on")),
    Switch("graphs", "+CUDA graphs", dict(compile="graphs")),
)
GPU_ONLY = ("graphs",)  # reduce-overhead replays CUDA graphs; on CPU it would be the +compile row again
ALL_ROWS = tuple(s.key for s in SWITCHES)


@dataclass(frozen=True)
class Timing:
    """How long each row is timed."""

    steps: int = 5  # timed rounds per row; the table shows medians
    warmup: int = 2  # untimed steps per row first; compiles there
    chunk: int = 10  # GPU: steps per timed round (CPU: 1)
    ngf: int = 64  # generator and discriminator width (64: the reference)


@dataclass(frozen=True)
class RowPlan:
    key: str  # the switch that makes this row
    name: str  # as the table shows it
    cfg: TrainConfig


# ---------------------------------------------------------------------------------------------
# the rows


@dataclass
class Row:
    name: str
    cfg: TrainConfig
    step: TrainStep
    images: PairedImages
    rng: torch.Generator
    amp_dtype: torch.dtype | None
    times: list[float] = field(default_factory=list)
    extra_memory: float = 0.0
    first_step_s: float = 0.0
    steps_run: int = 0
    sums: torch.Tensor | None = None

    def run(self, steps: int) -> None:
        """`steps` training steps as the loop runs them: batch, step, losses read every log_every."""
        cfg, device = self.cfg, self.step.device
        for _ in range(steps):
            index = torch.randperm(len(self.images), generator=self.rng)[: cfg.batch_size]
            a, b = training_batch(self.images, index, cfg, self.rng)
            self.sums = self.step(a, b) if self.sums is None else self.sums + self.step(a, b)
            self.steps_run += 1
            if self.steps_run % cfg.log_every == 0:
                if not torch.isfinite(self.sums).all():
                    raise RuntimeError(f"{self.name}: a loss became NaN or infinite")
        sync(device)


def row_configs(base: TrainConfig, device: torch.device) -> list[RowPlan]:
    """Each row adds one switch to the row above; a switch the default leaves off on this device
    (channels_last on AVX2-only CPUs) is timed as a side row, and the rows below go on without it."""
    rows, cfg = [], base
    for switch in SWITCHES:
        if switch.key in GPU_ONLY and device.type != "cuda":
            continue
        candidate = cfg.replace(**switch.changes)
        name = amp_label(device) if switch.key == "amp" else switch.label
        if switch.key == "cl" and not use_channels_last(TrainConfig(), device):
            rows.append(RowPlan(switch.key, f"{name} (off by default here)", candidate))
            continue
        cfg = candidate
        rows.append(RowPlan(switch.key, name, cfg))
    return rows


def amp_label(device: torch.device) -> str:
    dtype = autocast_dtype("auto", device)
    if dtype is None:
        return "+autocast (auto = fp32 here: no bf16 units)"
    if dtype == torch.float16:
        return "+fp16 autocast + scaler"
    return "+bf16 autocast"


def synthetic_images(n: int, size: int, device: torch.device, seed: int) -> PairedImages:
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 256, (n, CHANNELS, size, size), generator=g, dtype=torch.uint8)
    b = torch.randint(0, 256, (n, CHANNELS, size, size), generator=g, dtype=torch.uint8)
    return PairedImages(a, b, [str(i) for i in range(n)], 255).to(device)


def build_row(name: str, cfg: TrainConfig, device: torch.device) -> Row:
    """The trainer's own builders, as `trainer.loop.train` calls them."""
    torch.manual_seed(cfg.seed)
    amp_dtype = autocast_dtype(cfg.precision, device)
    G = build_generator(cfg.generator_config(CHANNELS, CHANNELS), device, use_channels_last(cfg, device))
    D = build_discriminator(cfg, 2 * CHANNELS, device)
    opt_G = build_optimizer(G, cfg.lr_G, cfg)
    opt_D = build_optimizer(D, cfg.lr_D, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    step = TrainStep(cfg, G, D, opt_G, opt_D, scaler, amp_dtype, mode=cfg.compile)
    images = synthetic_images(max(2 * cfg.batch_size, 8), cfg.size, device, cfg.seed)
    return Row(name, cfg, step, images, torch.Generator().manual_seed(cfg.seed), amp_dtype)


def default_row_name(rows: Sequence[RowPlan], device: torch.device) -> str | None:
    """The row whose switches are TrainConfig's defaults at the rows' setting, `compile: auto`
    resolved for a long run on this device (trainer.compile_choice)."""
    if not rows:
        return None
    setting = rows[0].cfg
    default = TrainConfig(size=setting.size, batch_size=setting.batch_size, ngf=setting.ngf, ndf=setting.ndf)
    mode = compile_mode(default, device, LONG_RUN_STEPS)
    for row in rows:
        cfg = row.cfg
        if (
            autocast_dtype(cfg.precision, device) == autocast_dtype(default.precision, device)
            and use_channels_last(cfg, device) == use_channels_last(default, device)
            and cfg.fused_adam == default.fused_adam
            and (cfg.log_every > 1) == (default.log_every > 1)
            and cfg.compile == mode
        ):
            return row.name
    return None


@dataclass
class SettingResult:
    size: int
    batch: int
    rows: list[Row]
    flops: float
    default: str | None


def bench_setting(
    size: int, batch: int, device: torch.device, timing: Timing, keep: Collection[str] = ALL_ROWS
) -> SettingResult:
    base = TrainConfig(size=size, batch_size=batch, ngf=timing.ngf, ndf=timing.ngf, device=device.type, seed=0)
    plans = [plan for plan in row_configs(base, device) if plan.key in keep]
    rows = [build_row(plan.name, plan.cfg, device) for plan in plans]
    console.print(f"[bold]{size} px, batch {batch}[/]: warming up {len(rows)} rows ({timing.warmup} steps each)")

    flops = math.nan
    for row in rows:
        started = time.perf_counter()
        if row is rows[0] and row.cfg.compile == "off":
            from torch.utils.flop_counter import FlopCounterMode

            counter = FlopCounterMode(display=False)
            with counter:
                row.run(1)
            flops = float(counter.get_total_flops())
        else:
            row.run(1)
        row.first_step_s = time.perf_counter() - started
        if timing.warmup > 1:
            row.run(timing.warmup - 1)

    chunk = 1 if device.type == "cpu" else timing.chunk
    for round_ in range(timing.steps):
        shift = round_ % len(rows)
        for row in rows[shift:] + rows[:shift]:  # rotate the order: no row always runs first
            with PeakMemory(device) as memory:
                started = time.perf_counter()
                row.run(chunk)
                row.times.append((time.perf_counter() - started) / chunk)
            row.extra_memory = max(row.extra_memory, memory.extra)
        console.print(
            f"  round {round_ + 1}/{timing.steps}: "
            + ", ".join(f"{r.name.split(' (')[0]} {r.times[-1]:.3f}s" for r in rows)
        )
    return SettingResult(size, batch, rows, flops, default_row_name(plans, device))


def matmul_peak(dtype: torch.dtype, device: torch.device, repeats: int = 5) -> float:
    """FLOP/s of a large square matmul in `dtype`: the practical peak of this device."""
    best = 0.0
    for n in (2048, 4096) if device.type == "cpu" else (8192,):
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        seconds = median_time(lambda a=a, b=b: a @ b, device, repeats)
        best = max(best, 2 * n**3 / seconds)
    return best


# ---------------------------------------------------------------------------------------------
# the table and the command line


def setting_table(result: SettingResult, peaks: dict[torch.dtype, float], device: torch.device, ngf: int) -> Table:
    table = Table(title=f"Training step, {result.size} px, batch {result.batch}, ngf=ndf={ngf}, {device.type}")
    for column, justify in (
        ("setting", "left"),
        ("s/step", "right"),
        ("spread", "right"),
        ("images/s", "right"),
        ("x ref", "right"),
        ("GFLOP/step", "right"),
        ("GFLOP/s", "right"),
        ("% peak", "right"),
        ("memory", "right"),
        ("1st step s", "right"),
    ):
        table.add_column(column, justify=justify)
    reference = statistics.median(result.rows[0].times)
    for row in result.rows:
        seconds = statistics.median(row.times)
        q = statistics.quantiles(row.times, n=4) if len(row.times) >= 2 else [seconds, seconds, seconds]
        dtype = row.amp_dtype or torch.float32
        achieved = result.flops / seconds
        memory = state_bytes(row.step.G, row.step.D, row.step.opt_G, row.step.opt_D) + row.extra_memory
        name = row.name + (" [default]" if row.name == result.default else "")
        table.add_row(
            name,
            f"{seconds:.3f}",
            f"±{(q[2] - q[0]) / 2 / seconds * 100:.0f}%",
            f"{result.batch / seconds:.1f}",
            f"{reference / seconds:.2f}",
            f"{result.flops / 1e9:.0f}",
            f"{achieved / 1e9:.0f}",
            f"{achieved / peaks[dtype] * 100:.0f}% {str(dtype).removeprefix('torch.')}",
            fmt_bytes(memory),
            f"{row.first_step_s:.1f}",
        )
    return table


def add_timing_args(p: argparse.ArgumentParser, sizes: str, batches: str) -> None:
    """The flags every step benchmark takes (this one and benchmarks.concurrent)."""
    default = Timing()
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="device to time (default: auto)")
    p.add_argument("--sizes", help=f"image sizes, comma-separated (default: {sizes})")
    p.add_argument("--batch", help=f"batch sizes, comma-separated (default: {batches})")
    p.add_argument(
        "--steps",
        type=int,
        default=default.steps,
        help="timed rounds per row; the table shows medians (default: %(default)s)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=default.warmup,
        help="untimed steps per row first; compiles there (default: %(default)s)",
    )
    p.add_argument(
        "--chunk", type=int, default=default.chunk, help="GPU: steps per timed round (CPU: 1) (default: %(default)s)"
    )
    p.add_argument(
        "--ngf",
        type=int,
        default=default.ngf,
        help="generator and discriminator width (64: the reference) (default: %(default)s)",
    )
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")


def timing_from(args: argparse.Namespace) -> Timing:
    if args.steps < 1 or args.warmup < 1 or args.chunk < 1:
        raise UserError("--steps, --warmup and --chunk must be >= 1")
    return Timing(steps=args.steps, warmup=args.warmup, chunk=args.chunk, ngf=args.ngf)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.step",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_timing_args(p, sizes="256,64 on CPU; 256 on GPU", batches="16 on CPU; 1,16 on GPU")
    p.add_argument(
        "--rows",
        default=",".join(ALL_ROWS),
        help=f"rows to run, from {','.join(ALL_ROWS)} (default: all; ref is always run)",
    )
    return p.parse_args(argv)


@exits_cleanly_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    timing = timing_from(args)
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    on_gpu = device.type == "cuda"
    sizes = parse_ints(args.sizes, "sizes") if args.sizes else ([256] if on_gpu else [256, 64])
    batches = parse_ints(args.batch, "batch") if args.batch else ([1, 16] if on_gpu else [16])
    keep = {"ref", *(k.strip() for k in args.rows.split(","))}
    unknown = keep - set(ALL_ROWS)
    if unknown:
        raise UserError(f"--rows: unknown row(s) {', '.join(sorted(unknown))}; choose from {', '.join(ALL_ROWS)}")
    for size in sizes:
        TrainConfig(size=size)  # the same validation as training
    if on_gpu:
        torch.backends.cudnn.benchmark = True  # as trainer.loop.train does on CUDA
    console.print(f"[bold]benchmarks.step[/] on {describe_device(device)}; torch {torch.__version__}")

    dtypes = {torch.float32} | {d for d in (autocast_dtype("auto", device),) if d is not None}
    peaks = {d: matmul_peak(d, device) for d in sorted(dtypes, key=str)}
    console.print(
        "matmul peak: " + ", ".join(f"{str(d).removeprefix('torch.')} {p / 1e9:.0f} GFLOP/s" for d, p in peaks.items())
    )
    results = []
    for size in sizes:
        for batch in batches:
            result = bench_setting(size, batch, device, timing, keep)
            results.append(result)
            console.print(setting_table(result, peaks, device, timing.ngf))
    memory_note = (
        "memory: peak allocated by torch during a step"
        if on_gpu
        else "memory: weights + grads + Adam state, plus the step's transient peak RSS (VmHWM)"
    )
    console.print(
        f"{memory_note}; spread: half the interquartile range of the per-step times; "
        "1st step: the first call, compile included"
    )

    headline = [r for r in results if r.size == 256] or results
    parts = []
    for r in headline:
        by_name = {row.name: statistics.median(row.times) for row in r.rows}
        best = r.default or r.rows[-1].name
        parts.append(f"{by_name['reference'] / by_name[best]:.2f}x at {r.size} px batch {r.batch} ({best})")
    print("headline: default fast path vs reference style: " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
