"""Every sample panel a trial saved reaches its W&B run, however far the W&B thread lags behind Tune.

The driver's W&B thread works through Tune's events in order, and opening a run takes it about a
second; meanwhile Tune (two checkpoints kept) and the retention (at the trial's end) delete older
checkpoints, panel included. Here the checkpoint folder is deleted right after Tune would have
reported it, while the thread is still opening the run: the panel must be logged all the same.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image
from ray import tune

from orchestrator.tracking.callback import WandbTrialLogger
from orchestrator.tracking.offline import find_runs, read_run
from orchestrator.trials.endings import SearchStop, TrialEndings
from orchestrator.trials.trainable import PANEL_FILE


def test_a_panel_is_logged_even_when_its_checkpoint_is_deleted_at_once(tmp_path: Path) -> None:
    logger = WandbTrialLogger(
        "offline",
        "panels",
        "g",
        str(tmp_path / "exp"),
        fixed={},
        epochs=2,
        endings=TrialEndings(0, tmp_path, SearchStop()),
    )
    # a stand-in for Tune's Trial record: the attributes the callback reads
    trial = SimpleNamespace(trial_id="t1", config={"lambda_l1": 100.0}, last_result={}, latest_checkpoint_result=None)
    panels = []
    for epoch in (1, 2):
        folder = tmp_path / f"checkpoint_{epoch}"
        folder.mkdir()
        panel = np.full((8, 24, 3), 40 * epoch, dtype=np.uint8)
        Image.fromarray(panel).save(folder / PANEL_FILE)
        panels.append(panel)
        trial.last_result = {"epoch": epoch, "val_ssim": 0.1 * epoch}
        logger.on_trial_result(epoch, [], trial, trial.last_result)
        logger.on_checkpoint(epoch, [], trial, tune.Checkpoint.from_directory(str(folder)))
        shutil.rmtree(folder)  # Tune or the retention deleted it before the W&B thread got to it
    logger.on_trial_complete(2, [], trial)
    logger.on_experiment_end([trial])

    (run_dir,) = find_runs(tmp_path / "exp")
    run = read_run(run_dir)
    assert [row["epoch"] for row in run.history if "val_samples" in row] == [1, 2]
    logged = [np.asarray(Image.open(run_dir / "files" / row["val_samples"]["path"])) for row in run.history]
    for got, want in zip(logged, panels, strict=True):
        np.testing.assert_array_equal(got[:, :, :3], want)
