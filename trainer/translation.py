"""Translating with a trained generator, as trainer.predict delivers it: an image or a volume brought
to the model's channels, size and intensity mapping, translated, and brought back to its own size,
bit depth and units. The library behind `python -m trainer.predict` and the scoring of a model at the
images' own size and on whole volumes (trainer.evaluation)."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from trainer.data import LUMA
from trainer.data.intensity import IntensityMap
from trainer.data.volumes import PLANE_AXES, NiftiVolume, from_square, planes, slice_stack, to_square
from trainer.models import UNetGenerator

Translator = Callable[[torch.Tensor], torch.Tensor]  # (n, C, size, size) in [-1, 1] -> the same


@dataclass(frozen=True)
class Preprocessing:
    """How an export's inputs become [-1, 1] and its outputs come back, from its model card.

    Exports made before the card held these fields mean what they did then: AtoB, the dtype mapping."""

    direction: str
    input_map: IntensityMap | None  # None: the dtype mapping of each image file
    output_map: IntensityMap | None
    slice_axis: str

    @classmethod
    def from_card(cls, card: dict[str, Any]) -> Preprocessing:
        train = card.get("train_config") or {}
        direction = card.get("direction") or train.get("direction", "AtoB")
        intensity = card.get("intensity")
        maps = (None, None)
        if intensity:
            maps = (IntensityMap.from_dict(intensity[direction[0]]), IntensityMap.from_dict(intensity[direction[-1]]))
        return cls(direction, *maps, train.get("slice_axis", "axial"))


def resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The resize the training data went through (bilinear with antialiasing), for (N, C, H, W)."""
    if x.shape[2:] == (height, width):
        return x
    return F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)


def match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(1, C, H, W) in [0, 1] -> the model's channel count: gray is repeated, colour becomes luma."""
    if x.shape[1] == channels:
        return x
    if channels == 3:
        return x.expand(-1, 3, -1, -1)
    return (x * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)


def to_unit(
    image: np.ndarray, max_value: int, channels: int, mapping: IntensityMap | None, height: int, width: int
) -> torch.Tensor:
    """(H, W, C) integers -> (1, channels, height, width) in [-1, 1], resized before the mapping as
    training resized its images. Also how trainer.evaluate reads targets and outputs at their own size."""
    if mapping is not None and mapping.mode != "dtype":  # the mapping training fitted, on the file's own values
        x = match_channels(torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None], channels)
        return mapping.to_unit(resize(x, height, width))
    x = torch.from_numpy(image.astype(np.float32) / max_value).permute(2, 0, 1)[None]
    x = match_channels(x, channels)
    return resize(x, height, width).clamp(0, 1) * 2 - 1


def to_model_input(
    image: np.ndarray, max_value: int, G: UNetGenerator, in_map: IntensityMap | None = None
) -> torch.Tensor:
    """(H, W, C) integers -> (1, in_channels, size, size) in [-1, 1]."""
    return to_unit(image, max_value, G.cfg.in_channels, in_map, G.cfg.size, G.cfg.size)


def to_image(
    y: torch.Tensor, height: int, width: int, max_value: int, out_map: IntensityMap | None = None
) -> np.ndarray:
    """(C, size, size) in [-1, 1] -> (H, W, C) uint8 or uint16 at the original size."""
    y = resize(y[None].float().cpu(), height, width)[0]
    if out_map is not None and out_map.mode != "dtype":
        values = out_map.from_unit(y.clamp(-1, 1)).round().clamp(0, max_value)
    else:
        values = ((y.clamp(-1, 1) + 1) / 2 * max_value).round()
    return values.permute(1, 2, 0).numpy().astype(np.uint8 if max_value == 255 else np.uint16)


@torch.no_grad()
def translate_ras(
    volume: np.ndarray,
    translate: Translator,
    size: int,
    in_map: IntensityMap,
    out_map: IntensityMap,
    slice_axis: str,
    batch_size: int = 16,
) -> np.ndarray:
    """A RAS-ordered volume in its units -> the translated volume in the output's units, same grid.

    Sliced, padded and resized as training was; with slice_axis `all`, the mean of the three planes."""
    stacked = []
    for plane in planes(slice_axis):
        stack = slice_stack(volume, plane)
        x = to_square(stack, size, volume.min())
        y = torch.cat([translate(in_map.to_unit(x[i : i + batch_size])).cpu() for i in range(0, len(x), batch_size)])
        slices = from_square(out_map.from_unit(y[:, :1]), *stack.shape[1:])
        stacked.append(np.moveaxis(slices, 0, PLANE_AXES[plane]))
    return np.mean(stacked, axis=0, dtype=np.float32)


def nifti_bytes(data: np.ndarray, like: NiftiVolume, name: str) -> bytes:
    """float32 NIfTI with `like`'s affine and header (scaling reset: the values are stored as they are)."""
    header = like.image.header.copy()
    header.set_data_dtype(np.float32)
    image = nib.Nifti1Image(data.astype(np.float32), like.affine, header)
    image.header.set_slope_inter(1.0, 0.0)
    raw = image.to_bytes()
    return gzip.compress(raw, mtime=0) if name.lower().endswith(".gz") else raw
