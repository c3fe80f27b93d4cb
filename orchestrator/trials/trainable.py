"""The Ray Tune trainable: the only code that speaks both Tune and the trainer.

It turns Tune's config into a TrainConfig, drives `trainer.loop.train`, reports every epoch's
metrics with a checkpoint, restarts from Tune's checkpoint when a trial is retried or resumed, and
ends a trial itself when its val SSIM has stopped improving (the plateau stop).
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from orchestrator.trials.plateau import PlateauRule
from orchestrator.trials.references import INIT_GENERATOR
from trainer.checkpoint import BEST_GENERATOR, LAST, RunState
from trainer.config import TrainConfig
from trainer.data import SPLIT_FILE, load_run_data, png_bytes
from trainer.errors import TrainingDiverged
from trainer.files import write_atomic_text
from trainer.loop import train, translate
from trainer.memory import allocation_failures_named
from trainer.visualize import sample_grid

# A Tune checkpoint: the full state to continue from, the best epoch's generator to export, the split.
CHECKPOINT_FILES = (LAST, BEST_GENERATOR, SPLIT_FILE)
DIVERGED_MARKER = "DIVERGED"  # a diverged run diverges again: retries fail at once instead of retraining
PANEL_SAMPLES = 4  # fixed val pairs shown in W&B panels, the same ones every epoch
PANEL_FILE = "val_samples.png"  # input | output | target rows, saved with the checkpoint
SCRATCH_PREFIX = "pix2pix-trial-"
WARM_START_FILE = "warm_start.pt"  # a warm-started trial's starting generator, in its run folder


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of one search shares besides its hyperparameters."""

    fixed: dict[str, Any]
    plateau: PlateauRule
    image_every: int
    experiment: str = ""  # the experiment folder or URI: warm-started trials fetch their start from it
    retune: bool = False  # search.pbt: a trial may continue another trial's checkpoint with its own values


def run_trial(params: dict[str, Any], settings: TrialSettings) -> None:
    """Tune calls this once per trial (and again for each retry or resume of that trial).

    Logging happens in the driver (orchestrator.tracking.callback) from what is reported here: a trial
    stopped by the scheduler is ended by Ray at once, with no time to flush a logger of its own.
    """
    torch.set_num_threads(max(1, int(tune.get_context().get_trial_resources().required_resources.get("CPU", 1))))
    cfg = TrainConfig.from_dict({**settings.fixed, **params}, source="trial config")
    diverged = Path(tune.get_context().get_trial_dir()) / DIVERGED_MARKER
    if diverged.exists():
        raise TrainingDiverged(diverged.read_text())
    # The trainer's run folder is scratch space outside the trial folder: Tune's checkpoints are what
    # persists, and Tune would otherwise copy the folder's checkpoints to storage a second time. Its
    # name is the trial's, so an attempt killed before its `finally` (a lost worker, SIGKILL) leaves
    # a folder that the retry on this node removes, and the driver removes the rest at the end.
    run_dir = scratch_dir(tune.get_context().get_trial_id())
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    try:
        if params.get(INIT_GENERATOR):  # "": the reference failed and this fine-tune starts from scratch
            start = fetch_start(settings.experiment, params[INIT_GENERATOR], run_dir)
            cfg = dataclasses.replace(cfg, init_generator=str(start))
        with allocation_failures_named(cfg):  # the trial's error: one line saying what to lower
            train_and_report(cfg, run_dir, settings)
    except TrainingDiverged as err:
        write_atomic_text(diverged, str(err))
        raise
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def fetch_start(experiment: str, source: str, run_dir: Path) -> Path:
    """The generator a warm-started trial starts from: the best generator in the checkpoint `source`
    (a folder within the experiment, orchestrator.trials.references), copied from the experiment's
    storage, local or remote, into the run folder."""
    start = run_dir / WARM_START_FILE
    with tune.Checkpoint(f"{experiment}/{source}").as_directory() as folder:
        shutil.copyfile(Path(folder) / BEST_GENERATOR, start)
    return start


def scratch_dir(trial_id: str) -> Path:
    return Path(tempfile.gettempdir()) / f"{SCRATCH_PREFIX}{trial_id}"


def train_and_report(cfg: TrainConfig, run_dir: Path, settings: TrialSettings) -> None:
    """Train from Tune's checkpoint (if any), reporting each epoch; returns early on a plateau, or at once
    when the checkpoint is an ended trial's."""
    resume = restore_from_tune_checkpoint(run_dir)
    if resume and not (run_dir / LAST).exists():
        # The checkpoint was trimmed (orchestrator.trials.retention): the trial had ended, and the driver
        # was killed before Tune recorded that. Nothing is left to train; Tune ends it with its results.
        return
    # The val curve so far: the plateau rule reads all of it, and a retried or resumed trial's epochs
    # before this attempt are in its checkpoint's history.
    curve = [row["val_ssim"] for row in RunState.load(run_dir / LAST).history] if resume else []
    node_id = ray.get_runtime_context().get_node_id()
    gpu_ids = ",".join(str(i) for i in ray.get_gpu_ids())  # the GPUs Ray gave this trial on its node; "" on CPU
    trial_dir_name = Path(tune.get_context().get_trial_dir()).name
    data = load_run_data(cfg, run_dir)
    val = data.splits["val"]
    panel_inputs, panel_targets = val.batch(torch.arange(min(PANEL_SAMPLES, len(val))))
    # best.pt (a full state) would only be thrown away: a trial ships its best generator alone
    for result in train(cfg, run_dir, resume=resume, data=data, best_full_state=False, retune=settings.retune):
        metrics = result.metrics()
        curve.append(result.val["val_ssim"])
        plateaued = settings.plateau.stops(curve)
        metrics["plateau_stop"] = int(plateaued)
        metrics["node_id"] = node_id
        metrics["gpu_ids"] = gpu_ids
        metrics["trial_dir_name"] = trial_dir_name  # with Tune's checkpoint_dir_name: where a warm start reads
        panel = None
        if result.epoch % settings.image_every == 0 or result.epoch == cfg.epochs:
            outputs = translate(result.generator, panel_inputs)
            panel = png_bytes(sample_grid(panel_inputs, outputs, panel_targets))
        report_with_checkpoint(metrics, run_dir, panel)  # Tune stops a trial by raising SystemExit here
        if plateaued:
            return


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


def report_with_checkpoint(metrics: dict[str, Any], run_dir: Path, panel: bytes | None) -> None:
    """Report the epoch with its checkpoint (and the sample panel, which the driver logs to W&B)."""
    with tempfile.TemporaryDirectory(prefix="ckpt-") as folder:
        for name in CHECKPOINT_FILES:
            # Hard links where possible: Tune copies the folder to storage, we need not copy twice.
            link_or_copy(run_dir / name, Path(folder) / name)
        if panel is not None:
            (Path(folder) / PANEL_FILE).write_bytes(panel)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def link_or_copy(src: Path, dst: Path) -> None:
    try:
        dst.hardlink_to(src)
    except OSError:
        shutil.copyfile(src, dst)


def read_panel(checkpoint: tune.Checkpoint) -> bytes | None:
    """The PNG sample panel saved in a reported checkpoint (local or remote storage), None when this
    epoch saved none (image_every). Read when Tune reports the checkpoint: later, Tune (it keeps two)
    or the retention may have deleted it."""
    path = f"{checkpoint.path}/{PANEL_FILE}"
    if checkpoint.filesystem.get_file_info(path).type.name != "File":
        return None
    with checkpoint.filesystem.open_input_stream(path) as stream:
        return stream.read()
