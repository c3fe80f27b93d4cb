"""Memory a training run or a generator needs, known before anything is allocated: the networks are
built on PyTorch's meta device (shapes, no storage), and one meta forward pass measures what the
backward pass keeps. An estimate, good to a factor of about two: enough to warn before a trial is
killed by the kernel, or to refuse a crafted config before it allocates gigabytes."""

from __future__ import annotations

import torch
from torch import nn

from trainer.config import GeneratorConfig, TrainConfig
from trainer.models import PatchDiscriminator, UNetGenerator

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


def available_bytes() -> int | None:
    """The memory the kernel says is available now (Linux), None where it does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
