"""`python -m benchmarks.concurrent`: several trainers sharing one GPU.

For each count in --counts it starts that many processes, each training the reference pix2pix with
the default fast path (the step `benchmarks.step` times), and reports the aggregate images/s of all of
them together and the peak memory of each: what `gpus_per_trial` in a search spec is chosen from.
CUDA only: on a CPU, trials split the cores instead (see cpus_per_trial).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from rich.table import Table

from benchmarks.measure import describe_device, parse_ints
from benchmarks.step import LONG_RUN_STEPS, Timing, add_timing_args, build_row, console, timing_from
from trainer.config import TrainConfig
from trainer.errors import UserError, exits_cleanly_on_user_error
from trainer.loop import compile_mode, pick_device

DEFAULT_COUNTS = "1,2,4"


@dataclass
class ConcurrentResult:
    trainers: int
    images_per_s: float  # all trainers together
    peak_memory: int  # bytes, the largest of the trainers'


def _concurrent_worker(
    rank: int, size: int, batch: int, ngf: int, steps: int, warmup: int, barrier: object, queue: object
) -> None:
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    cfg = TrainConfig(size=size, batch_size=batch, ngf=ngf, ndf=ngf, device="cuda")
    cfg = cfg.replace(compile=compile_mode(cfg, device, LONG_RUN_STEPS))
    row = build_row("fast path", cfg, device)
    row.run(warmup)
    torch.cuda.reset_peak_memory_stats(device)
    barrier.wait()  # type: ignore[attr-defined]
    started = time.perf_counter()
    row.run(steps)
    seconds = time.perf_counter() - started
    queue.put((rank, steps * batch / seconds, torch.cuda.max_memory_allocated(device)))  # type: ignore[attr-defined]


def measure_concurrent(counts: list[int], size: int, batch: int, timing: Timing) -> list[ConcurrentResult]:
    """Aggregate images/s of `n` trainers (one process each, the default fast path) sharing one GPU."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # CUDA cannot be forked
    measured = []
    for n in counts:
        barrier, queue = ctx.Barrier(n), ctx.Queue()
        workers = [
            ctx.Process(
                target=_concurrent_worker,
                args=(r, size, batch, timing.ngf, timing.steps * timing.chunk, timing.warmup, barrier, queue),
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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.concurrent",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--counts", default=DEFAULT_COUNTS, help="trainer counts, comma-separated (default: %(default)s)")
    add_timing_args(p, sizes="256", batches="1,16")
    return p.parse_args(argv)


@exits_cleanly_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    timing = timing_from(args)
    counts = parse_ints(args.counts, "counts")
    sizes = parse_ints(args.sizes, "sizes") if args.sizes else [256]
    batches = parse_ints(args.batch, "batch") if args.batch else [1, 16]
    for size in sizes:
        TrainConfig(size=size)  # the same validation as training
    device = pick_device(args.device)
    if device.type != "cuda":
        raise UserError(
            "benchmarks.concurrent measures several trainers sharing one GPU, and no CUDA GPU is visible "
            "here; run it on a GPU machine (on CPU, trials split the cores: see cpus_per_trial)"
        )
    console.print(f"[bold]benchmarks.concurrent[/] on {describe_device(device)}; torch {torch.__version__}")
    for size in sizes:
        for batch in batches:
            console.print(concurrent_table(measure_concurrent(counts, size, batch, timing), size, batch))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
