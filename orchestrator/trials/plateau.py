"""The plateau stop's rule, apart from the trainable so that stand-in trials (benchmarks.replay)
apply the same rule without importing torch."""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class PlateauRule:
    """The plateau stop: a trial ends once `patience` epochs have passed since the best point of its
    val SSIM curve, the curve smoothed by the median of the last `window` epochs (1: the raw curve, the
    trainer's own best epoch). A GAN's val SSIM jumps from epoch to epoch; the median keeps one lucky
    epoch from starting the count while the trend still climbs."""

    patience: int  # 0: never
    window: int = 1

    def smoothed(self, curve: list[float]) -> list[float]:
        return [statistics.median(curve[max(0, i + 1 - self.window) : i + 1]) for i in range(len(curve))]

    def stops(self, curve: list[float]) -> bool:
        """`curve`: val SSIM of every epoch so far, from the first."""
        if self.patience == 0 or not curve:
            return False
        smooth = self.smoothed(curve)
        best = smooth.index(max(smooth))  # the first best, as the trainer's best_epoch
        return len(curve) - 1 - best >= self.patience
