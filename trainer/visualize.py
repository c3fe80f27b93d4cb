"""Image grids of input | output | target, for people to look at (PNG files, W&B panels, reports)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from trainer.data import png_bytes
from trainer.files import write_atomic_bytes


def to_uint8_rgb(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [-1, 1] -> (H, W, 3) uint8; one channel is shown as gray."""
    x = x.detach().float().cpu().clamp(-1, 1)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return ((x[:3] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def sample_grid(inputs: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor, gap: int = 2) -> np.ndarray:
    """One row per sample: input | output | target, with white gaps."""
    rows = []
    for a, fake, b in zip(inputs, outputs, targets):
        cells = [to_uint8_rgb(t) for t in (a, fake, b)]
        spacer = np.full((cells[0].shape[0], gap, 3), 255, np.uint8)
        rows.append(np.concatenate([cells[0], spacer, cells[1], spacer, cells[2]], axis=1))
        rows.append(np.full((gap, rows[-1].shape[1], 3), 255, np.uint8))
    return np.concatenate(rows[:-1], axis=0)


def save_grid(path: Path, inputs: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> None:
    write_atomic_bytes(path, png_bytes(sample_grid(inputs, outputs, targets)))
