"""Intensity mappings: the data's own units (pixel values, HU, MR units) <-> the network's [-1, 1].

Each side (A and B) has its own linear mapping low -> -1, high -> +1 (values outside are clipped):
  dtype       0 .. the type's maximum (255 or 65535): the behaviour for 8/16-bit image files;
  percentile  the 0.5 and 99.5 percentiles of that side over the training split only;
  window      explicit numbers (e.g. CT -1000 .. 2000 HU), from TrainConfig's window_low_a/high_a/...;
  minmax      the minimum and maximum of that side over the training split only.
The mapping and its numbers go into checkpoints and the model card, and `trainer.predict` inverts
the output side, so translations come back in the data's own units.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from trainer.errors import UserError

PERCENTILES = (0.5, 99.5)
# percentile/minmax of a huge training split: a fixed-seed sample of this many values estimates them
# to well within a quantization step, in a fraction of the time of the full sort.
FIT_SAMPLE = 4_000_000


@dataclass(frozen=True)
class IntensityMap:
    mode: str  # dtype | percentile | window | minmax
    low: float  # the value mapped to -1
    high: float  # the value mapped to +1

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):  # would map every value to 0 or NaN
            raise UserError(f"intensity {self.mode}: low {self.low} and high {self.high} must be finite numbers")
        if not self.high > self.low:
            raise UserError(
                f"intensity {self.mode}: high {self.high} must be above low {self.low}; "
                "the data is constant on this side, or the window is empty: choose --intensity window with a range"
            )

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Values in the data's units -> float32 in [-1, 1] (clipped outside [low, high])."""
        return ((x.float() - self.low) * (2.0 / (self.high - self.low)) - 1.0).clamp(-1.0, 1.0)

    def from_unit(self, y: torch.Tensor) -> torch.Tensor:
        """The inverse: [-1, 1] -> the data's units."""
        return (y.float() + 1.0) * ((self.high - self.low) / 2.0) + self.low

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> IntensityMap:
        return cls(str(values["mode"]), float(values["low"]), float(values["high"]))


@dataclass(frozen=True)
class SideStats:
    """What the mappings fitted on a training split need of one side (A or B), in the data's units:
    computed once when the split is decoded and kept in the decoded cache's manifest, so a trial
    fits its mapping without reading the whole split again."""

    percentile: tuple[float, float]  # PERCENTILES of the values
    minmax: tuple[float, float]
    maximum: float  # of every value, not only the sample (the 12-bit check of trainer.data)

    @classmethod
    def of(cls, values: np.ndarray, scale: int = 1) -> SideStats:
        """Stats of `values` (any shape, stored units) times `scale` (stored -> the data's units)."""
        flat = values.reshape(-1)
        if flat.size > FIT_SAMPLE:
            generator = torch.Generator().manual_seed(0)
            flat = flat[torch.randint(0, flat.size, (FIT_SAMPLE,), generator=generator).numpy()]
        sample = flat.astype(np.float64) * scale if scale != 1 else flat.astype(np.float64)
        low, high = (float(v) for v in np.percentile(sample, PERCENTILES))
        return cls((low, high), (float(sample.min()), float(sample.max())), float(values.max()) * scale)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SideStats:
        return cls(tuple(values["percentile"]), tuple(values["minmax"]), float(values["maximum"]))


def fit_map(mode: str, stats: SideStats, side: str) -> IntensityMap:
    """percentile or minmax over one side of the training split."""
    low, high = stats.minmax if mode == "minmax" else stats.percentile
    try:
        return IntensityMap(mode, low, high)
    except UserError as err:
        raise UserError(f"side {side}: {err}") from None
