"""`python -m benchmarks.gpu_check` (`make gpu-check`): what one GPU gives this project, as markdown.

Four parts, within a total time cap (--budget, default 480 s; a part that would start after it is
skipped, and a count that would start after it is left out):
1. step: the trainer's step at 256 px, batch 16 (`benchmarks.step`): the reference style against each
   speed switch, +compile and +CUDA graphs, with the first step's time (the compile cost) and peak
   memory; the [default] row is what `compile: auto` picks here (trainer.compile_choice), followed by
   the fastest of compile off / on / graphs as a trainer.compile_choice.Measured line to record;
2. fused: 3 fused trials against 3 separate runs on CUDA (fp32, TF32 off), then 1, 2, 4 and 8
   trials fused in one process (`benchmarks.fused`);
3. concurrent: 1, 2, 4 and 8 trainers sharing the GPU as separate processes (`benchmarks.concurrent`),
   and the two packing modes side by side against one reference trainer;
4. search: a tiny search with `--gpus-per-trial 0.5` (two trials on the GPU at once) that must end
   with an export, run through the search CLI as a user runs it.

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
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmarks import step as bench
from benchmarks.concurrent import measure_concurrent
from benchmarks.fused import equality_check, measure_fused
from benchmarks.measure import fmt_bytes, state_bytes
from trainer.compile_choice import Measured, measured_mode
from trainer.errors import UserError, exits_cleanly_on_user_error

SIZE, BATCH = 256, 16
PACKED = [1, 2, 4, 8]  # trials per GPU, in each packing mode
PARTS = ("step", "fused", "concurrent", "search")
BUDGET_S = 480  # the whole check: one short call on a lent GPU
NOISE = 0.03  # timing differences this small between rows are within a rerun's spread
MODE_ROWS = {"+no per-step sync": "off", "+compile": "on", "+CUDA graphs": "graphs"}
SEARCH_ARGS = [  # the laptop spec on the GPU: glyphs at 64 px, 4 trials of 3 epochs, two per GPU
    "--num-samples", "4", "--epochs", "3", "--gpus-per-trial", "0.5", "--cpus-per-trial", "2",
    "--max-concurrent", "4", "--wandb", "offline",
]  # fmt: skip


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class Check:
    """What the parts measured, for the summary, and the time cap."""

    deadline: float  # time.perf_counter() value after which nothing new starts
    reference_images_per_s: float | None = None  # the step table's reference row
    default_images_per_s: float | None = None
    fused: dict[int, float] = field(default_factory=dict)  # trials -> aggregate images/s
    separate: dict[int, float] = field(default_factory=dict)

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def step_table(device: torch.device, check: Check) -> str:
    timing = bench.Timing(steps=5, warmup=3, chunk=10)  # warmup 3: CUDA graphs record on the 2nd call
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
    seconds = {row.name: statistics.median(row.times) for row in result.rows}
    check.reference_images_per_s = BATCH / seconds["reference"]
    lines = [f"Training step, {SIZE} px, batch {BATCH}, ngf = ndf = 64:", "", markdown(header, rows), ""]
    if result.default is not None:
        check.default_images_per_s = BATCH / seconds[result.default]
        fastest = min(seconds, key=seconds.get)
        ratio = seconds[result.default] / seconds[fastest]
        if fastest == result.default:
            verdict = "the fastest row"
        elif ratio <= 1 + NOISE:
            verdict = f"within {NOISE:.0%} of the fastest, {fastest} ({ratio:.2f}x its time)"
        else:
            verdict = f"LOSES to {fastest} ({ratio:.2f}x its time)"
        lines.append(f"Default row: {result.default}, {verdict}.")
    modes = {mode: seconds[name] for name, mode in MODE_ROWS.items() if name in seconds}
    if modes:
        gpu = torch.cuda.get_device_name(device)
        winner = min(modes, key=modes.get)
        record = Measured(gpu, SIZE, BATCH, 64, winner, f"gpu-check, torch {torch.__version__}")
        picked = measured_mode(gpu, SIZE, BATCH, 64)
        lines.append(
            "Step modes: "
            + ", ".join(f"{m} {t * 1e3:.1f} ms" for m, t in modes.items())
            + f"; compile: auto picks {picked}"
            + ("." if picked == winner else f", the winner is {winner}: add to trainer.compile_choice.MEASURED:")
        )
        if picked != winner:
            lines.append(f"\n```python\n    {record!r},\n```")
    return "\n".join(lines)


def fused_table(device: torch.device, check: Check) -> str:
    same = equality_check(device)
    rows = []
    timing = bench.Timing(steps=3, warmup=3, chunk=10)
    for trials in PACKED:
        if check.left() < 30:
            rows.append([str(trials), "skipped: time cap", "", "", "", ""])
            continue
        try:
            r = measure_fused(trials, SIZE, BATCH, device, timing)
        except Exception as err:  # noqa: BLE001 -- e.g. a compile failure at one count: the others still count
            rows.append([str(trials), f"FAILED: {type(err).__name__}: {str(err).splitlines()[0][:200]}", *[""] * 4])
            traceback.print_exc()
            continue
        check.fused[trials] = r.images_per_s
        rows.append(
            [str(trials), r.mode, f"{r.step_s * 1e3:.1f}", f"{r.images_per_s:.0f}", fmt_bytes(r.peak_memory),
             f"{r.first_step_s:.1f}"]
        )  # fmt: skip
    header = ["trials fused", "mode", "ms/step", "aggregate images/s", "peak memory", "1st step s"]
    return (
        f"Fused against separate runs on CUDA (3 trials, 3 fp32 steps, TF32 off): largest weight difference "
        f"{same['max_abs_difference']:.1e}, {same['fraction_over_1e-5'] * 100:.3f}% of "
        f"{same['weights']:,} weights over 1e-5.\n\n"
        f"Trials fused in one process ({SIZE} px, batch {BATCH} each, default fast path, 30 timed steps):\n\n"
        + markdown(header, rows)
    )


def concurrent_table(check: Check) -> str:
    results = []
    for trials in PACKED:
        if check.left() < 40:
            break
        results.extend(measure_concurrent([trials], SIZE, BATCH, bench.Timing(steps=3, warmup=3, chunk=10)))
    for r in results:
        check.separate[r.trainers] = r.images_per_s
    single = results[0].images_per_s if results else float("nan")
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
    title = f"Trainers sharing the GPU as processes ({SIZE} px, batch {BATCH}, default fast path, 30 timed steps):"
    return title + "\n\n" + markdown(header, rows) + "\n\n" + packing_table(check)


def packing_table(check: Check) -> str:
    """Both packing modes side by side, against one reference-style trainer (the step table's first row)."""
    reference = check.reference_images_per_s
    rows = []
    for trials in PACKED:
        cells = [str(trials)]
        for measured in (check.separate, check.fused):
            value = measured.get(trials)
            ratio = f" ({value / reference:.2f}x ref)" if value and reference else ""
            cells.append(f"{value:.0f}{ratio}" if value else "n/a")
        rows.append(cells)
    header = ["trials per GPU", "separate processes, images/s", "fused in one process, images/s"]
    return "Packing modes, aggregate images/s (x one reference trainer):\n\n" + markdown(header, rows)


def tiny_search(storage: Path, check: Check) -> str:
    command = [sys.executable, "-m", "orchestrator.search", *SEARCH_ARGS, "--storage-path", str(storage)]
    command += ["--name", "gpu-check"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=max(1.0, check.left()))
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
    parser.add_argument(
        "--budget", type=float, default=BUDGET_S, help="total seconds; later parts are skipped (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    chosen = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not chosen or set(chosen) - set(PARTS):
        raise UserError(f"--parts takes a comma-separated subset of {', '.join(PARTS)} (got {args.parts!r})")
    if not torch.cuda.is_available():
        raise UserError("gpu-check: no CUDA GPU is visible (torch.cuda.is_available() is False); run it on a GPU node")
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True  # as trainer.loop.train does on CUDA
    print(f"## GPU check: {torch.cuda.get_device_name(device)}, torch {torch.__version__}\n", flush=True)
    check = Check(deadline=time.perf_counter() + args.budget)
    failed = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as storage:
        parts = {
            "step": lambda: step_table(device, check),
            "fused": lambda: fused_table(device, check),
            "concurrent": lambda: concurrent_table(check),
            "search": lambda: tiny_search(Path(storage), check),
        }
        for name in (p for p in PARTS if p in chosen):
            if check.left() <= 0:
                print(f"**{name} skipped: the {args.budget:.0f} s time cap was spent**\n", flush=True)
                failed.append(name)
                continue
            started = time.perf_counter()
            try:
                with contextlib.redirect_stdout(sys.stderr):  # progress lines stay out of the markdown
                    text = parts[name]()
                print(text, flush=True)
            except Exception:  # noqa: BLE001 -- one broken part must not hide the others' numbers
                failed.append(name)
                print(f"**{name} FAILED**\n```\n{traceback.format_exc()}```", flush=True)
            print(f"\n({name}: {time.perf_counter() - started:.0f} s)\n", flush=True)
    print(summary(check), flush=True)
    if failed:
        print(f"gpu-check: FAILED or skipped parts: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def summary(check: Check) -> str:
    """The issue's two targets, as measured: the default step and the best packing against the reference."""
    reference = check.reference_images_per_s
    if reference is None:
        return "Summary: no step table, so no reference to compare with."
    lines = [f"Summary (reference trainer: {reference:.0f} images/s):"]
    if check.default_images_per_s:
        lines.append(f"- default step: {check.default_images_per_s / reference:.2f}x the reference (target >= 2x)")
    packed = [
        (v, f"{n} {mode}") for mode, m in (("separate", check.separate), ("fused", check.fused)) for n, v in m.items()
    ]
    if packed:
        best, name = max(packed)
        lines.append(
            f"- best packing: {name}, {best:.0f} images/s, {best / reference:.2f}x the reference (target >= 4x)"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
