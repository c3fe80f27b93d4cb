"""What `compile: auto` runs on a GPU: the step mode that measured fastest there.

Three modes of the same step (trainer.loop.TrainStep):

    off      eager PyTorch
    on       torch.compile (inductor's fused kernels)
    graphs   torch.compile with mode="reduce-overhead": the compiled kernels replayed as CUDA graphs,
             one launch per graph instead of one per kernel

Which one wins depends on the GPU and on the work per step. On an H200 at 256 px, batch 16, the step
is launch-bound: torch.compile made it slower (19.1 ms against 15.2 eager), while at batch 64 it was
the fastest row (2.29x the reference against 1.90x eager). No single rule is right on every card, so
`auto` follows measurements: MEASURED holds the winner of `make gpu-check` (benchmarks.gpu_check,
which times every mode and prints new lines for this table) per GPU model and setting, and a run
takes the mode of the measured setting nearest to its own work per step, on its own GPU model where
that was measured, else on any. A tie goes to `off`, which costs no compile. On CPU `auto` stays off
(the compiled step was no faster there while the compile took minutes), and a run shorter than
COMPILE_MIN_STEPS never compiles: a cold compile (10-40 s) would not be repaid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

COMPILE_MIN_STEPS = 500  # compile: auto needs a run at least this long to repay a cold compile
STEP_MODES = ("off", "on", "graphs")


@dataclass(frozen=True)
class Measured:
    """The fastest step mode `make gpu-check` measured on one GPU model for one setting (default
    precision, channels-last and fused Adam, losses read every log_every steps)."""

    gpu: str  # torch.cuda.get_device_name()
    size: int
    batch: int
    ngf: int  # = ndf
    mode: str  # one of STEP_MODES
    source: str  # the run it comes from (torch version, where it is written up)

    @property
    def work(self) -> float:
        return step_work(self.size, self.batch, self.ngf)


MEASURED: tuple[Measured, ...] = (
    # README "On a GPU": eager 15.2 ms, compile 19.1 ms; a rerun eager 11.2 ms, compile 13.5 ms.
    Measured("NVIDIA H200", 256, 16, 64, "off", "gpu-check, torch 2.11.0+cu130"),
    # README "On a GPU", the rerun at batch 64: compile 2.29x the reference, eager (bf16) 1.90x.
    Measured("NVIDIA H200", 256, 64, 64, "on", "benchmarks.step --batch 16,64, torch 2.11.0+cu130"),
)


def step_work(size: int, batch: int, ngf: int) -> float:
    """Proportional to a step's FLOPs: every convolution scales with the pixels and width squared."""
    return float(batch) * size**2 * ngf**2


def measured_mode(gpu: str, size: int, batch: int, ngf: int, records: tuple[Measured, ...] = MEASURED) -> str:
    """The mode of the measured setting nearest in work per step (log scale): this GPU model's
    records if it has any, else every GPU's; `off` where nothing is recorded or on a tie."""
    own = [r for r in records if r.gpu == gpu]
    candidates = own or list(records)
    if not candidates:
        return "off"
    work = step_work(size, batch, ngf)
    nearest = min(candidates, key=lambda r: (abs(math.log(r.work / work)), r.mode != "off"))
    return nearest.mode


def resolve_compile(requested: str, device: torch.device, size: int, batch: int, ngf: int, total_steps: int) -> str:
    """`compile` as configured -> the mode the step runs: off, on or graphs."""
    if requested != "auto":
        return requested
    if device.type != "cuda" or total_steps < COMPILE_MIN_STEPS:
        return "off"
    return measured_mode(torch.cuda.get_device_name(device), size, batch, ngf)


def compile_options(mode: str) -> dict[str, Any]:
    """torch.compile's keyword arguments for a mode other than off."""
    return {"mode": "reduce-overhead"} if mode == "graphs" else {}
