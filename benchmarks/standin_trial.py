"""The stand-in trial of `benchmarks.driver`: what a trial looks like to the driver, without training.

Each epoch sleeps for an epoch's time, then reports the metric names the real trainable reports,
with a checkpoint of a chosen size and the sample panel PNG in it. It imports neither torch nor
anything of the trainer, so 64 Ray workers cost what Ray itself costs (about 100 MB each) instead of
what torch costs (about 400 MB each); the driver hands it every name and byte it needs.
"""

from __future__ import annotations

import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune


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
