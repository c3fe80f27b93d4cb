"""The Ray Tune trainable: the only code that speaks both Tune and the trainer.

It turns Tune's config into a TrainConfig, drives `trainer.loop.train`, reports every epoch's
metrics with a checkpoint, restarts from Tune's checkpoint when a trial is retried or resumed, and
ends a trial itself when its val SSIM has stopped improving (the plateau stop).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from orchestrator.wandb_logging import open_trial_logger
from trainer.checkpoint import LAST, write_atomic_text
from trainer.config import TrainConfig
from trainer.data import SPLIT_FILE
from trainer.errors import TrainingDiverged
from trainer.loop import load_run_data, train, translate
from trainer.visualize import sample_grid

CHECKPOINT_FILES = (LAST, SPLIT_FILE)
DIVERGED_MARKER = "DIVERGED"  # a diverged run diverges again: retries fail at once instead of retraining
PANEL_SAMPLES = 4  # fixed val pairs shown in W&B panels, the same ones every epoch

# end reasons, as they appear in the summary, the report and W&B
FINISHED, STOPPED_ASHA, STOPPED_PLATEAU, FAILED = "finished", "stopped_asha", "stopped_plateau", "failed"


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of one search shares besides its hyperparameters."""

    fixed: dict[str, Any]
    stop_patience: int
    image_every: int
    wandb_mode: str
    wandb_project: str
    wandb_group: str
    wandb_dir: str


def run_trial(params: dict[str, Any], settings: TrialSettings) -> None:
    """Tune calls this once per trial (and again for each retry or resume of that trial)."""
    torch.set_num_threads(max(1, int(tune.get_context().get_trial_resources().required_resources.get("CPU", 1))))
    cfg = TrainConfig.from_dict({**settings.fixed, **params}, source="trial config")
    run_dir = Path(tune.get_context().get_trial_dir()) / "run"
    resume = restore_from_tune_checkpoint(run_dir)
    if (run_dir / DIVERGED_MARKER).exists():
        raise TrainingDiverged((run_dir / DIVERGED_MARKER).read_text())

    trial_id = tune.get_context().get_trial_id()
    node_id = ray.get_runtime_context().get_node_id()
    logger = open_trial_logger(
        settings.wandb_mode,
        project=settings.wandb_project,
        group=settings.wandb_group,
        name=trial_id,
        config={**cfg.to_dict(), "trial_id": trial_id},
        wandb_dir=settings.wandb_dir,
    )
    summary: dict[str, Any] = {"epochs": 0}
    plateaued = False
    try:
        data = load_run_data(cfg, run_dir)
        val = data.splits["val"]
        panel_inputs, panel_targets = val.batch(torch.arange(min(PANEL_SAMPLES, len(val))))
        for result in train(cfg, run_dir, resume=resume, data=data):
            metrics = result.metrics()
            plateaued = settings.stop_patience > 0 and result.epoch - result.best_epoch >= settings.stop_patience
            metrics["plateau_stop"] = int(plateaued)
            metrics["node_id"] = node_id
            logger.log_metrics(metrics, step=result.epoch)
            if result.epoch % settings.image_every == 0 or result.epoch == cfg.epochs:
                outputs = translate(result.generator, panel_inputs)
                grid = sample_grid(panel_inputs, outputs, panel_targets)
                logger.log_image("val_samples", grid, step=result.epoch, caption="input | output | target")
            summary.update(best_val_ssim=result.best_val_ssim, best_epoch=result.best_epoch, epochs=result.epoch)
            report_with_checkpoint(metrics, run_dir)  # Tune stops a trial by raising SystemExit in here
            if plateaued:
                return
    except TrainingDiverged as err:
        write_atomic_text(run_dir / DIVERGED_MARKER, str(err))
        summary["error"] = str(err)
        raise
    except Exception as err:
        summary["error"] = f"{type(err).__name__}: {err}"
        raise
    finally:
        summary["end_reason"] = end_reason(summary["epochs"], cfg.epochs, plateaued, "error" in summary)
        logger.finish(summary)


def end_reason(epochs_run: int, epochs: int, plateaued: bool, failed: bool) -> str:
    """Why a trial ended; the driver derives the same from Tune's results."""
    if failed:
        return FAILED
    if plateaued:
        return STOPPED_PLATEAU
    return FINISHED if epochs_run >= epochs else STOPPED_ASHA


def restore_from_tune_checkpoint(run_dir: Path) -> bool:
    """Copy Tune's latest checkpoint of this trial into the run folder; True when there was one."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return False
    run_dir.mkdir(parents=True, exist_ok=True)
    with checkpoint.as_directory() as folder:
        for name in CHECKPOINT_FILES:
            if (Path(folder) / name).exists():
                shutil.copyfile(Path(folder) / name, run_dir / name)
    return True


def report_with_checkpoint(metrics: dict[str, Any], run_dir: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="ckpt-") as folder:
        for name in CHECKPOINT_FILES:
            # Hard links where possible: Tune copies the folder to storage, we need not copy twice.
            link_or_copy(run_dir / name, Path(folder) / name)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def link_or_copy(src: Path, dst: Path) -> None:
    try:
        dst.hardlink_to(src)
    except OSError:
        shutil.copyfile(src, dst)
