"""Memory a training run or a generator needs, known before anything is allocated: the networks are
built on PyTorch's meta device (shapes, no storage), and one meta forward pass measures what the
backward pass keeps. An estimate, good to a factor of about two: enough to warn before a trial is
killed by the kernel, or to refuse a crafted config before it allocates gigabytes."""

from __future__ import annotations

import contextlib
import re
import resource
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from trainer.config import GeneratorConfig, TrainConfig
from trainer.errors import cut
from trainer.models import PatchDiscriminator, UNetGenerator

CPU_ALLOCATION_FAILED = "can't allocate memory"  # how torch's CPU allocator says it (DefaultCPUAllocator)
CPU_REQUEST = re.compile(r"you tried to allocate (\d+) bytes")  # the same message's size
FLOAT_BYTES = 4
ADAM_COPIES = 4  # weights, gradients and Adam's two moments, each the size of the weights


def _forward_elements(module: nn.Module, *inputs: torch.Tensor) -> int:
    """Elements of every leaf module's output in one forward pass: what autograd keeps for backward."""
    total = 0

    def count(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel()

    hooks = [m.register_forward_hook(count) for m in module.modules() if not list(m.children())]
    try:
        module(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return total


def _parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def generator_bytes(gcfg: GeneratorConfig, batch: int = 1) -> int:
    """Weights plus one forward pass at `batch` images: what translating with this generator needs."""
    with torch.device("meta"):
        G = UNetGenerator(gcfg)
        x = torch.empty(batch, gcfg.in_channels, gcfg.size, gcfg.size)
        with torch.no_grad():
            acts = _forward_elements(G.eval(), x)
    return (_parameters(G) + acts) * FLOAT_BYTES


def training_bytes(cfg: TrainConfig, in_channels: int = 3, out_channels: int = 3) -> int:
    """One training step of G and D at cfg.batch_size: weights, gradients, Adam state and the
    activations kept for backward. The data is not in it: see decoded_bytes."""
    gcfg = cfg.generator_config(in_channels, out_channels)
    with torch.device("meta"):
        G = UNetGenerator(gcfg)
        D = PatchDiscriminator(in_channels + out_channels, cfg.ndf)
        a = torch.empty(cfg.batch_size, in_channels, cfg.size, cfg.size)
        b = torch.empty(cfg.batch_size, out_channels, cfg.size, cfg.size)
        acts = _forward_elements(G, a) + 2 * _forward_elements(D, a, b)  # D on real and on fake pairs
    weights = ADAM_COPIES * (_parameters(G) + _parameters(D))
    return (weights + acts) * FLOAT_BYTES


def decoded_bytes(cfg: TrainConfig, images: int, value_bytes: int, in_channels: int = 3, out_channels: int = 3) -> int:
    """`images` decoded pairs at cfg.size, `value_bytes` per value (1 for 8-bit files): the one copy
    a node's trials share (trainer.data.cache), mapped from the page cache, not one per trial."""
    return images * (in_channels + out_channels) * cfg.size * cfg.size * value_bytes


# A container's memory limit and use, cgroup v2 then v1, at the cgroup root the container sees (its own,
# under Docker, Kubernetes and Slurm's cgroup plugin); v1 writes "no limit" as a number near 2**63.
CGROUP_FILES = (
    (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")),
    (Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"), Path("/sys/fs/cgroup/memory/memory.usage_in_bytes")),
)
NO_LIMIT = 2**60


@dataclass(frozen=True)
class MemoryRoom:
    """What may still be allocated here; None where nothing says."""

    shared: int | None  # by all processes together: MemAvailable, within the container's cgroup limit
    per_process: int | None  # by one process: its address-space limit (ulimit -v), less what it maps already


def memory_room() -> MemoryRoom:
    shared = [v for v in (_meminfo_available(), _cgroup_headroom()) if v is not None]
    limit, _ = resource.getrlimit(resource.RLIMIT_AS)
    per_process = None
    if limit != resource.RLIM_INFINITY:
        per_process = max(0, limit - _mapped_bytes())
    return MemoryRoom(min(shared) if shared else None, per_process)


def available_bytes() -> int | None:
    """What this process may still allocate (Linux), None where nothing says."""
    room = memory_room()
    known = [v for v in (room.shared, room.per_process) if v is not None]
    return min(known) if known else None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _cgroup_headroom() -> int | None:
    for limit_file, usage_file in CGROUP_FILES:
        try:
            limit, usage = limit_file.read_text().strip(), usage_file.read_text().strip()
        except OSError:
            continue
        if limit == "max" or int(limit) >= NO_LIMIT:
            return None
        return max(0, int(limit) - int(usage))
    return None


def _mapped_bytes() -> int:
    """This process's address space now (VmSize), what ulimit -v counts against its limit."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class OutOfMemory(RuntimeError):
    """An allocation failed; the message, one line, says what to lower."""


@contextlib.contextmanager
def allocation_failures_named(cfg: TrainConfig) -> Iterator[None]:
    """Turn an allocation failure in the block (torch on the CPU or GPU, numpy decoding) into
    OutOfMemory, whose one line names the settings that memory grows with instead of a traceback."""
    try:
        yield
    except (MemoryError, RuntimeError) as err:
        if not isinstance(err, (MemoryError, torch.OutOfMemoryError)) and CPU_ALLOCATION_FAILED not in str(err):
            raise
        asked = CPU_REQUEST.search(str(err))
        detail = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        if asked is not None:
            detail = f"{int(asked[1]) / 2**30:.2f} GiB more could not be allocated"
        raise OutOfMemory(
            f"out of memory at {cfg.size} px, batch {cfg.batch_size}, ngf {cfg.ngf}, ndf {cfg.ndf} ({cut(detail)}); "
            "lower batch_size, size, ngf/ndf or max_train_images, or run fewer at once"
        ) from None
