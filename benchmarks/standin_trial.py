"""The stand-in trial of `benchmarks.driver`: what a trial looks like to the driver, without training.

Each epoch sleeps for an epoch's time, then reports the metric names the real trainable reports,
with a checkpoint of a chosen size and the sample panel PNG in it. It imports neither torch nor
anything of the trainer, so 64 Ray workers cost what Ray itself costs (about 100 MB each) instead of
what torch costs (about 400 MB each); the driver hands it every name and byte it needs.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune

from orchestrator.trials.plateau import PlateauRule


@dataclass(frozen=True)
class StandInSettings:
    epochs: int
    epoch_seconds: float
    metric_keys: tuple[str, ...]  # the real trainable's metric names; each gets a number
    checkpoint_files: tuple[str, ...]  # the real checkpoint's file names, sharing checkpoint_bytes
    checkpoint_bytes: int
    panel_file: str
    panel_png: bytes
    image_every: int  # epochs between panels, as the search spec's image_every


def run_standin_trial(params: dict[str, Any], settings: StandInSettings) -> None:
    rng = random.Random(repr(sorted(params.items())))  # a trial's numbers follow from its params
    quality = rng.uniform(0.3, 0.9)
    node_id = ray.get_runtime_context().get_node_id()
    file_bytes = b"\0" * (settings.checkpoint_bytes // max(1, len(settings.checkpoint_files)))
    best = 0.0
    for epoch in range(1, settings.epochs + 1):
        time.sleep(settings.epoch_seconds)  # the epoch's training and validation
        val_ssim = quality * (0.5 + 0.5 * epoch / settings.epochs)
        best = max(best, val_ssim)
        metrics: dict[str, Any] = {key: rng.random() for key in settings.metric_keys}
        metrics.update(
            epoch=epoch,
            val_ssim=val_ssim,
            best_val_ssim=best,
            best_epoch=epoch,
            epoch_seconds=settings.epoch_seconds,
            plateau_stop=0,
            node_id=node_id,
            gpu_ids="",
        )
        with tempfile.TemporaryDirectory(prefix="standin-ckpt-") as folder:
            for name in settings.checkpoint_files:
                (Path(folder) / name).write_bytes(file_bytes)
            if epoch % settings.image_every == 0 or epoch == settings.epochs:
                (Path(folder) / settings.panel_file).write_bytes(settings.panel_png)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


# The replay stand-in (benchmarks.replay): a trial that reports a recorded learning curve.


@dataclass(frozen=True)
class CurveRow:
    """One recorded configuration (benchmarks.record_curves): per-epoch val and test SSIM."""

    params: dict[str, Any]
    val_ssim: tuple[float, ...]
    test_ssim: tuple[float, ...]


@dataclass(frozen=True)
class ReplaySettings:
    rows: tuple[CurveRow, ...]
    scales: dict[str, tuple[float, float, bool]]  # searched float/int parameter -> (low, high, log)
    plateau: PlateauRule  # the search's own rule
    epoch_seconds: float = 0.0  # a pause per epoch, so that concurrent trials interleave as in a search


def gan_weight(params: dict[str, Any]) -> float:
    return float(params.get("gan_weight", 1.0))  # absent: the trainer's default, a discriminator


def distance(a: dict[str, Any], b: dict[str, Any], scales: dict[str, tuple[float, float, bool]]) -> float:
    """Between two configurations, each searched range scaled to [0, 1] (log ranges in log), a
    categorical choice 1 apart when it differs; with and without a discriminator never neighbours."""
    if (gan_weight(a) == 0) != (gan_weight(b) == 0):
        return math.inf
    total = 0.0
    for name in sorted(set(a) | set(b)):
        x, y = a.get(name), b.get(name)
        if name in scales and x is not None and y is not None:
            low, high, log = scales[name]
            scale = (math.log, math.log) if log else (float, float)
            total += ((scale[0](x) - scale[1](y)) / (scale[0](high) - scale[1](low))) ** 2
        elif x != y:
            total += 1.0
    return math.sqrt(total)


def nearest_row(params: dict[str, Any], settings: ReplaySettings) -> CurveRow:
    return min(settings.rows, key=lambda row: distance(params, row.params, settings.scales))


def run_replay_trial(params: dict[str, Any], settings: ReplaySettings) -> None:
    """The recorded curve nearest to `params`, reported epoch by epoch with the plateau rule applied."""
    row = nearest_row(params, settings)
    best, best_epoch = -math.inf, 0
    for epoch, (val, test) in enumerate(zip(row.val_ssim, row.test_ssim, strict=True), start=1):
        time.sleep(settings.epoch_seconds)
        if val > best:
            best, best_epoch = val, epoch
        plateaued = settings.plateau.stops(list(row.val_ssim[:epoch]))
        tune.report(
            {
                "epoch": epoch,
                "val_ssim": val,
                "test_ssim": test,
                "best_val_ssim": best,
                "best_epoch": best_epoch,
                "plateau_stop": int(plateaued),
            }
        )
        if plateaued:
            return
