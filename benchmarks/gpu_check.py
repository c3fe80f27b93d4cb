"""`python -m benchmarks.gpu_check` (`make gpu-check`): what one GPU gives this project, as markdown.

Three parts, about 5-8 minutes on one H100/H200:
1. the trainer's step at 256 px, batch 16 (`benchmarks.step`): the reference style against each speed
   switch up to the default fast path, with the first step's time (the compile cost) and peak memory;
2. 1, 2 and 4 trainers sharing the GPU (`benchmarks.concurrent`): aggregate images/s and peak
   memory each, which is what `gpus_per_trial` in search_spaces/gpu-256.yaml is chosen from;
3. a tiny search with `--gpus-per-trial 0.5` (two trials on the GPU at once) that must end with an
   export, run through the search CLI as a user runs it.

It fails (exit 2) where no CUDA GPU is visible, and exits 1 when any part fails after printing the
parts that worked.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from benchmarks import step as bench
from benchmarks.concurrent import measure_concurrent
from benchmarks.measure import fmt_bytes, state_bytes
from trainer.errors import UserError, exits_cleanly_on_user_error

SIZE, BATCH = 256, 16
CONCURRENT = [1, 2, 4]
PARTS = ("step", "concurrent", "search")
SEARCH_ARGS = [  # the laptop spec on the GPU: glyphs at 64 px, 4 trials of 3 epochs, two per GPU
    "--num-samples", "4", "--epochs", "3", "--gpus-per-trial", "0.5", "--cpus-per-trial", "2",
    "--max-concurrent", "4", "--wandb", "offline",
]  # fmt: skip


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def step_table(device: torch.device) -> str:
    timing = bench.Timing(steps=5, warmup=2, chunk=10)
    with contextlib.redirect_stdout(sys.stderr):  # the bench's progress lines stay out of the markdown
        result = bench.bench_setting(SIZE, BATCH, device, timing)
    reference = statistics.median(result.rows[0].times)
    rows = []
    for row in result.rows:
        seconds = statistics.median(row.times)
        name = row.name + (" **[default]**" if row.name == result.default else "")
        memory = state_bytes(row.step.G, row.step.D, row.step.opt_G, row.step.opt_D) + row.extra_memory
        rows.append(
            [
                name,
                f"{seconds * 1e3:.1f}",
                f"{BATCH / seconds:.0f}",
                f"{reference / seconds:.2f}",
                f"{result.flops / seconds / 1e12:.1f}",
                fmt_bytes(memory),
                f"{row.first_step_s:.1f}",
            ]
        )
    header = ["setting", "ms/step", "images/s", "x ref", "TFLOP/s", "memory", "1st step s (compile)"]
    return f"Training step, {SIZE} px, batch {BATCH}, ngf = ndf = 64:\n\n" + markdown(header, rows)


def concurrent_table() -> str:
    results = measure_concurrent(CONCURRENT, SIZE, BATCH, bench.Timing(steps=3, warmup=3, chunk=10))
    single = results[0].images_per_s
    rows = [
        [
            str(r.trainers),
            f"{r.images_per_s:.0f}",
            f"{r.images_per_s / r.trainers:.0f}",
            f"{r.images_per_s / single:.2f}",
            f"{r.peak_memory / 2**30:.2f} GiB",
        ]
        for r in results
    ]
    header = ["trainers on the GPU", "aggregate images/s", "per trainer", "x one trainer", "peak memory each"]
    title = f"Trainers sharing the GPU ({SIZE} px, batch {BATCH}, default fast path, 30 timed steps each):"
    return title + "\n\n" + markdown(header, rows)


def tiny_search(storage: Path) -> str:
    command = [sys.executable, "-m", "orchestrator.search", *SEARCH_ARGS, "--storage-path", str(storage)]
    command += ["--name", "gpu-check"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    out = storage / "gpu-check"
    if done.returncode != 0 or not (out / "best" / "model_card.json").exists():
        raise RuntimeError(f"the search failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    card = json.loads((out / "best" / "model_card.json").read_text())
    statuses = [t["status"] for t in summary["trials"]]
    gpus = sorted({t.get("gpu_ids") or "none" for t in summary["trials"]})
    files = sorted(p.name for p in (out / "best").iterdir())
    rows = [
        ["command", "`python -m orchestrator.search " + " ".join(SEARCH_ARGS) + "`"],
        ["wall time (whole process)", f"{wall:.0f} s"],
        ["trials", ", ".join(f"{statuses.count(s)} {s}" for s in sorted(set(statuses)))],
        ["GPU ids the trials got", ", ".join(gpus)],
        ["best val SSIM", f"{card['val']['val_ssim']:.4f}"],
        ["test SSIM (identity)", f"{card['test']['test_ssim']:.4f} ({card['identity_test']['test_ssim']:.4f})"],
        ["export", ", ".join(files)],
    ]
    return "Tiny search, two trials per GPU:\n\n" + markdown(["", ""], rows)


@exits_cleanly_on_user_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    args = parser.parse_args(argv)
    chosen = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not chosen or set(chosen) - set(PARTS):
        raise UserError(f"--parts takes a comma-separated subset of {', '.join(PARTS)} (got {args.parts!r})")
    if not torch.cuda.is_available():
        raise UserError("gpu-check: no CUDA GPU is visible (torch.cuda.is_available() is False); run it on a GPU node")
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True  # as trainer.loop.train does on CUDA
    print(f"## GPU check: {torch.cuda.get_device_name(device)}, torch {torch.__version__}\n", flush=True)
    failed = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as storage:
        parts = {
            "step": lambda: step_table(device),
            "concurrent": concurrent_table,
            "search": lambda: tiny_search(Path(storage)),
        }
        for name in chosen:
            part = parts[name]
            started = time.perf_counter()
            try:
                print(part(), flush=True)
            except Exception:  # noqa: BLE001 -- one broken part must not hide the others' numbers
                failed.append(name)
                print(f"**{name} FAILED**\n```\n{traceback.format_exc()}```", flush=True)
            print(f"\n({name}: {time.perf_counter() - started:.0f} s)\n", flush=True)
    if failed:
        print(f"gpu-check: FAILED parts: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
