"""`python -m trainer.bench`: time the trainer's own step, reference style against the fast path.

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

Rows are timed round-robin (one step of each row per round, in a rotating order) so that a
change in machine load hits every row alike; the table shows medians and the spread.
FLOPs are counted with torch.utils.flop_counter.FlopCounterMode on one reference step
(convolutions and matmuls, forward and backward). The peak is a large matmul in the row's
compute dtype, measured here on the same device. Memory: on CUDA the peak allocated by torch
during the row's steps; on CPU the persistent state (weights, grads, Adam moments) plus the
step's transient peak resident memory (Linux VmHWM, reset before each step through
/proc/self/clear_refs, minus VmRSS before the step).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from trainer.config import TrainConfig
from trainer.data import PairedImages
from trainer.errors import UserError, exits_cleanly_on_user_error
from trainer.loop import (
    TrainStep,
    autocast_dtype,
    build_discriminator,
    build_generator,
    build_optimizer,
    pick_device,
    training_batch,
    use_channels_last,
    use_compile,
)

console = Console(width=150)
CHANNELS = 3  # the reference pix2pix: RGB -> RGB
LONG_RUN_STEPS = 10_000  # what "a search-length run" means when the bench resolves compile: auto
EVAL_IMAGES = 32

# (row name, changes to the previous row); each row adds one switch to the one above it.
SWITCHES: list[tuple[str, dict]] = [
    ("reference", dict(precision="fp32", channels_last="off", fused_adam=False, compile="off", log_every=1)),
    ("+channels_last", dict(channels_last="on")),
    ("+autocast", dict(precision="auto")),
    ("+fused Adam", dict(fused_adam=True)),
    ("+no per-step sync", dict(log_every=25)),
    ("+compile", dict(compile="on")),
]
ROW_KEYS = {
    "reference": "ref",
    "+channels_last": "cl",
    "+autocast": "amp",
    "+fused Adam": "fused",
    "+no per-step sync": "nosync",
    "+compile": "compile",
}


# ---------------------------------------------------------------------------------------------
# memory and timing helpers


def _proc_status_kib(key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(match.group(1)) if match else 0


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5 = reset VmHWM to the current VmRSS
        return True
    except OSError:
        return False


class PeakMemory:
    """The peak memory one call needs above what was resident (CPU) / allocated (CUDA) before it."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu_ok = device.type == "cpu" and Path("/proc/self/status").exists() and _reset_peak_rss()

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
        elif self.cpu_ok:
            _reset_peak_rss()
            self.before = _proc_status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.extra = torch.cuda.max_memory_allocated(self.device) - self.before
        elif self.cpu_ok:
            self.extra = max(0, _proc_status_kib("VmHWM") * 1024 - self.before)
        else:
            self.extra = math.nan


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def matmul_peak(dtype: torch.dtype, device: torch.device, repeats: int = 5) -> float:
    """FLOP/s of a large square matmul in `dtype`: the practical peak of this device."""
    best = 0.0
    for n in (2048, 4096) if device.type == "cpu" else (8192,):
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        seconds = median_time(lambda a=a, b=b: a @ b, device, repeats)
        best = max(best, 2 * n**3 / seconds)
    return best


def state_bytes(*objects: object) -> int:
    """Bytes of the persistent training state: parameters, buffers, gradients, optimizer moments."""
    total = 0
    for obj in objects:
        if isinstance(obj, torch.nn.Module):
            total += sum(t.numel() * t.element_size() for t in [*obj.parameters(), *obj.buffers()])
            total += sum(p.numel() * p.element_size() for p in obj.parameters())  # grads: same size
        elif isinstance(obj, torch.optim.Optimizer):
            for per_param in obj.state.values():
                total += sum(t.numel() * t.element_size() for t in per_param.values() if torch.is_tensor(t))
    return total


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


def row_configs(base: TrainConfig, device: torch.device) -> list[tuple[str, TrainConfig]]:
    """Each row adds one switch to the row above; a switch the default leaves off on this device
    (channels_last on AVX2-only CPUs) is timed as a side row, and the rows below go on without it."""
    rows, cfg = [], base
    for name, changes in SWITCHES:
        candidate = cfg.replace(**changes)
        if name == "+channels_last" and not use_channels_last(TrainConfig(), device):
            rows.append((f"{name} (off by default here)", candidate))
            continue
        cfg = candidate
        rows.append((name, cfg))
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
    step = TrainStep(cfg, G, D, opt_G, opt_D, scaler, amp_dtype, compiled=cfg.compile == "on")
    images = synthetic_images(max(2 * cfg.batch_size, 8), cfg.size, device, cfg.seed)
    return Row(name, cfg, step, images, torch.Generator().manual_seed(cfg.seed), amp_dtype)


def default_row_name(rows: list[tuple[str, TrainConfig]], device: torch.device) -> str | None:
    """The row whose switches are TrainConfig's defaults (compile: auto resolved for a long run)."""
    default = TrainConfig()
    compiled = use_compile(default, device, LONG_RUN_STEPS)
    for name, cfg in rows:
        if (
            autocast_dtype(cfg.precision, device) == autocast_dtype(default.precision, device)
            and use_channels_last(cfg, device) == use_channels_last(default, device)
            and cfg.fused_adam == default.fused_adam
            and (cfg.log_every > 1) == (default.log_every > 1)
            and (cfg.compile == "on") == compiled
        ):
            return name
    return None


@dataclass
class SettingResult:
    size: int
    batch: int
    rows: list[Row]
    flops: float
    default: str | None


def bench_setting(
    size: int, batch: int, device: torch.device, args: argparse.Namespace, keep: Sequence[str]
) -> SettingResult:
    base = TrainConfig(size=size, batch_size=batch, ngf=args.ngf, ndf=args.ngf, device=device.type, seed=0)
    rows = []
    for name, cfg in row_configs(base, device):
        if ROW_KEYS[name.split(" (")[0]] not in keep:
            continue
        if name == "+autocast":
            name = amp_label(device)
        rows.append(build_row(name, cfg, device))
    console.print(f"[bold]{size} px, batch {batch}[/]: warming up {len(rows)} rows ({args.warmup} steps each)")

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
        if args.warmup > 1:
            row.run(args.warmup - 1)

    chunk = 1 if device.type == "cpu" else args.chunk
    for round_ in range(args.steps):
        shift = round_ % len(rows)
        for row in rows[shift:] + rows[:shift]:  # rotate the order: no row always runs first
            with PeakMemory(device) as memory:
                started = time.perf_counter()
                row.run(chunk)
                row.times.append((time.perf_counter() - started) / chunk)
            row.extra_memory = max(row.extra_memory, memory.extra)
        console.print(
            f"  round {round_ + 1}/{args.steps}: "
            + ", ".join(f"{r.name.split(' (')[0]} {r.times[-1]:.3f}s" for r in rows)
        )
    return SettingResult(size, batch, rows, flops, default_row_name([(r.name, r.cfg) for r in rows], device))


# ---------------------------------------------------------------------------------------------
# evaluation metrics and decoding


def bench_eval(size: int, device: torch.device, repeats: int = 3) -> tuple[float, float]:
    """Seconds for SSIM/PSNR/MAE of a 32-image batch: batched torch on the device vs skimage per image."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from trainer.metrics import per_image_metrics

    g = torch.Generator().manual_seed(0)
    x = torch.rand(EVAL_IMAGES, CHANNELS, size, size, generator=g) * 2 - 1
    y = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    xd, yd = x.to(device), y.to(device)
    torch_s = median_time(lambda: per_image_metrics(xd, yd), device, repeats)
    xn, yn = x.numpy(), y.numpy()

    def skimage_metrics() -> None:
        for i in range(EVAL_IMAGES):
            structural_similarity(xn[i], yn[i], data_range=2.0, channel_axis=0)
            peak_signal_noise_ratio(yn[i], xn[i], data_range=2.0)
            np.abs(xn[i] - yn[i]).mean()

    skimage_s = median_time(skimage_metrics, torch.device("cpu"), repeats, warmup=0)
    return torch_s, skimage_s


def bench_decode(size: int, repeats: int = 20) -> float:
    """Seconds to decode one 512 px JPEG A|B pair file and resize both halves to `size`,
    the per-image cost a loader that decodes every step pays (this trainer decodes once)."""
    from PIL import Image

    g = np.random.default_rng(0)
    smooth = np.cumsum(np.cumsum(g.normal(size=(512, 1024, 3)), 0), 1)
    smooth = ((smooth - smooth.min()) / np.ptp(smooth) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(smooth).save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()

    def decode() -> None:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        w, h = image.size
        image.crop((0, 0, w // 2, h)).resize((size, size), Image.BICUBIC)
        image.crop((w // 2, 0, w, h)).resize((size, size), Image.BICUBIC)

    return median_time(decode, torch.device("cpu"), repeats)


# ---------------------------------------------------------------------------------------------
# several trainers on one GPU


def _concurrent_worker(
    rank: int, size: int, batch: int, ngf: int, steps: int, warmup: int, barrier: object, queue: object
) -> None:
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    defaults = TrainConfig()
    cfg = TrainConfig(
        size=size,
        batch_size=batch,
        ngf=ngf,
        ndf=ngf,
        device="cuda",
        compile="on" if use_compile(defaults, device, LONG_RUN_STEPS) else "off",
    )
    row = build_row("fast path", cfg, device)
    row.run(warmup)
    torch.cuda.reset_peak_memory_stats(device)
    barrier.wait()  # type: ignore[attr-defined]
    started = time.perf_counter()
    row.run(steps)
    seconds = time.perf_counter() - started
    queue.put((rank, steps * batch / seconds, torch.cuda.max_memory_allocated(device)))  # type: ignore[attr-defined]


@dataclass
class ConcurrentResult:
    trainers: int
    images_per_s: float  # all trainers together
    peak_memory: int  # bytes, the largest of the trainers'


def measure_concurrent(counts: list[int], size: int, batch: int, args: argparse.Namespace) -> list[ConcurrentResult]:
    """Aggregate images/s of `n` trainers (one process each, the default fast path) sharing one GPU."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # CUDA cannot be forked
    measured = []
    for n in counts:
        barrier, queue = ctx.Barrier(n), ctx.Queue()
        workers = [
            ctx.Process(
                target=_concurrent_worker,
                args=(r, size, batch, args.ngf, args.steps * args.chunk, args.warmup, barrier, queue),
            )
            for r in range(n)
        ]
        for w in workers:
            w.start()
        results = [queue.get() for _ in workers]
        for w in workers:
            w.join()
        if any(w.exitcode for w in workers):
            raise RuntimeError(f"a concurrent trainer failed (exit codes {[w.exitcode for w in workers]})")
        measured.append(ConcurrentResult(n, sum(r[1] for r in results), max(r[2] for r in results)))
    return measured


def concurrent_table(results: list[ConcurrentResult], size: int, batch: int) -> Table:
    table = Table(title=f"Concurrent trainers on one GPU ({size} px, batch {batch}, default fast path)")
    for column in ("trainers", "aggregate images/s", "per trainer images/s", "x one trainer", "peak memory each"):
        table.add_column(column, justify="right")
    single = results[0].images_per_s
    for r in results:
        table.add_row(
            str(r.trainers),
            f"{r.images_per_s:.1f}",
            f"{r.images_per_s / r.trainers:.1f}",
            f"{r.images_per_s / single:.2f}",
            f"{r.peak_memory / 2**30:.2f} GiB",
        )
    return table


# ---------------------------------------------------------------------------------------------
# report


def fmt_bytes(n: float) -> str:
    return "n/a" if math.isnan(n) else f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


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


def parse_ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--{what} takes comma-separated integers such as 256,64 (got {text!r})") from None
    if not values or min(values) < 1:
        raise UserError(f"--{what} needs positive integers (got {text!r})")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m trainer.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="device to time (default: auto)")
    p.add_argument("--sizes", help="image sizes, comma-separated (default: 256,64 on CPU; 256 on GPU)")
    p.add_argument("--batch", help="batch sizes, comma-separated (default: 16 on CPU; 1,16 on GPU)")
    p.add_argument("--steps", type=int, default=5, help="timed rounds per row; the table shows medians (default: 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per row first; compiles there (default: 2)")
    p.add_argument("--chunk", type=int, default=10, help="GPU: steps per timed round (default: 10; CPU: 1)")
    p.add_argument(
        "--rows",
        default="ref,cl,amp,fused,nosync,compile",
        help="rows to run, from ref,cl,amp,fused,nosync,compile (default: all; ref is always run)",
    )
    p.add_argument("--ngf", type=int, default=64, help="generator and discriminator width (default: 64, the reference)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--no-eval", dest="eval", action="store_false", help="skip the SSIM/PSNR/MAE and decode timings")
    p.add_argument(
        "--concurrent",
        help="GPU only: trainer counts such as 1,2,4; reports the aggregate "
        "images/s of that many trainers sharing one GPU (instead of the step table)",
    )
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 1 or args.chunk < 1:
        raise UserError("--steps, --warmup and --chunk must be >= 1")
    return args


@exits_cleanly_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    on_gpu = device.type == "cuda"
    sizes = parse_ints(args.sizes, "sizes") if args.sizes else ([256] if on_gpu else [256, 64])
    batches = parse_ints(args.batch, "batch") if args.batch else ([1, 16] if on_gpu else [16])
    for size in sizes:
        TrainConfig(size=size)  # the same validation as training
    if on_gpu:
        torch.backends.cudnn.benchmark = True  # as trainer.loop.train does on CUDA
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU, {torch.get_num_threads()} threads, bf16 units: {autocast_dtype('auto', device) is not None}"
    console.print(f"[bold]trainer.bench[/] on {name}; torch {torch.__version__}")

    if args.concurrent:
        if not on_gpu:
            raise UserError(
                "--concurrent measures several trainers sharing one GPU, and no CUDA GPU is visible "
                "here; run it on a GPU machine (on CPU, trials split the cores: see cpus_per_trial)"
            )
        for size in sizes:
            for batch in batches:
                results = measure_concurrent(parse_ints(args.concurrent, "concurrent"), size, batch, args)
                console.print(concurrent_table(results, size, batch))
        return 0

    keep = {"ref", *(k.strip() for k in args.rows.split(","))}
    unknown = keep - set(ROW_KEYS.values())
    if unknown:
        choices = ", ".join(ROW_KEYS.values())
        raise UserError(f"--rows: unknown row(s) {', '.join(sorted(unknown))}; choose from {choices}")

    dtypes = {torch.float32} | {d for d in (autocast_dtype("auto", device),) if d is not None}
    peaks = {d: matmul_peak(d, device) for d in sorted(dtypes, key=str)}
    console.print(
        "matmul peak: " + ", ".join(f"{str(d).removeprefix('torch.')} {p / 1e9:.0f} GFLOP/s" for d, p in peaks.items())
    )
    results = []
    for size in sizes:
        for batch in batches:
            result = bench_setting(size, batch, device, args, keep)
            results.append(result)
            console.print(setting_table(result, peaks, device, args.ngf))
    memory_note = (
        "memory: peak allocated by torch during a step"
        if on_gpu
        else "memory: weights + grads + Adam state, plus the step's transient peak RSS (VmHWM)"
    )
    console.print(
        f"{memory_note}; spread: half the interquartile range of the per-step times; "
        "1st step: the first call, compile included"
    )

    if args.eval:
        for size in sorted(set(sizes)):
            torch_s, skimage_s = bench_eval(size, device)
            console.print(
                f"eval metrics, {EVAL_IMAGES} images of {size} px: batched torch on {device.type} "
                f"{torch_s * 1e3:.0f} ms, per-image skimage {skimage_s * 1e3:.0f} ms "
                f"({skimage_s / torch_s:.2f}x)"
            )
        decode = bench_decode(256)
        console.print(
            f"decode: a 512x1024 JPEG A|B pair -> two 256 px images: {decode * 1e3:.1f} ms per pair, "
            f"{decode * 16 * 1e3:.0f} ms per batch of 16 for a loader that decodes every step "
            "(this trainer decodes once and augments on the device)"
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
