"""What the benchmarks (`benchmarks.step`, `benchmarks.concurrent`, `benchmarks.evaluation`) measure with:
median timings that wait for the device, the peak memory one call needs, the bytes of a training
state, the device's one-line description and the comma-separated integer flags they take.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from trainer.errors import UserError
from trainer.loop import autocast_dtype

PROC_STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def _proc_status_kib(key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+) kB", PROC_STATUS.read_text(), re.MULTILINE)
    return int(match.group(1)) if match else 0


def _reset_peak_rss() -> bool:
    try:
        CLEAR_REFS.write_text("5")  # 5 = reset VmHWM to the current VmRSS
        return True
    except OSError:
        return False


class PeakMemory:
    """The peak memory one call needs above what was resident (CPU) / allocated (CUDA) before it.
    On CPU: Linux VmHWM, reset before the call through /proc/self/clear_refs, minus VmRSS before it;
    NaN where /proc offers neither."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu_ok = device.type == "cpu" and PROC_STATUS.exists() and _reset_peak_rss()

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


def fmt_bytes(n: float) -> str:
    return "n/a" if math.isnan(n) else f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} threads, bf16 units: {autocast_dtype('auto', device) is not None}"


def parse_ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--{what} takes comma-separated integers such as 256,64 (got {text!r})") from None
    if not values or min(values) < 1:
        raise UserError(f"--{what} needs positive integers (got {text!r})")
    return values
