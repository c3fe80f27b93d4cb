"""One W&B run per trial, written by the driver from what the trials report to Tune.

Logging from the driver rather than inside the trials is deliberate: Ray ends a trial that the
scheduler stops at once, and a W&B run living in that worker would lose what it had not flushed
(seen here: ASHA-stopped trials left empty offline runs). The driver sees every result, every
checkpoint (with its sample panel) and every ending, whatever the node the trial ran on.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image
from ray import tune

from orchestrator.endings import ERROR, TrialEndings
from orchestrator.results import error_line
from orchestrator.trainable import PANEL_FILE, end_reason
from orchestrator.wandb_logging import RunLogger, open_trial_logger

LOGGED_KEYS = (
    "epoch", "G_GAN", "G_L1", "D_real", "D_fake", "val_ssim", "val_psnr", "val_mae",
    "lr_G", "lr_D", "best_val_ssim", "best_epoch", "epoch_seconds", "images_per_s",
)  # fmt: skip


class WandbTrialLogger(tune.Callback):
    """Pickled with Tune's experiment state, so open runs are dropped on pickling and reopened
    (same run id, resumed) when a restored search reports again."""

    def __init__(
        self,
        mode: str,
        project: str,
        group: str,
        wandb_dir: str,
        fixed: dict[str, Any],
        epochs: int,
        endings: TrialEndings,
    ):
        self.mode, self.project, self.group, self.wandb_dir = mode, project, group, wandb_dir
        self.fixed, self.epochs, self.endings = fixed, epochs, endings
        self._runs: dict[str, RunLogger] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_runs": {}}

    def run_for(self, trial: Any) -> RunLogger:
        if trial.trial_id not in self._runs:
            config = {**self.fixed, **trial.config, "trial_id": trial.trial_id}
            self._runs[trial.trial_id] = open_trial_logger(
                self.mode, self.project, self.group, trial.trial_id, config, self.wandb_dir
            )
        return self._runs[trial.trial_id]

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        metrics = {k: result[k] for k in LOGGED_KEYS if k in result}
        self.run_for(trial).log_metrics(metrics, step=int(result["epoch"]))

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        panel = read_panel(checkpoint)
        if panel is not None:
            step = int(trial.last_result.get("epoch", 0))
            self.run_for(trial).log_image("val_samples", panel, step=step, caption="input | output | target")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.finish(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.finish(trial)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for trial in trials:  # the time budget or Ctrl-C ended these: no on_trial_complete came
            if trial.trial_id in self._runs:
                self.finish(trial)

    def finish(self, trial: Any) -> None:
        result = trial.last_result or {}
        ending = self.endings.ended.get(trial.trial_id)
        summary = {
            "best_val_ssim": result.get("best_val_ssim"),
            "best_epoch": result.get("best_epoch"),
            "epochs": result.get("epoch", 0),
            "end_reason": end_reason(result.get("epoch", 0), self.epochs, bool(result.get("plateau_stop")), ending),
        }
        if ending == ERROR:
            summary["error"] = error_line(trial.get_error())
        self.run_for(trial).finish({k: v for k, v in summary.items() if v is not None})
        del self._runs[trial.trial_id]


def read_panel(checkpoint: Any) -> np.ndarray | None:
    """The sample panel saved in a reported checkpoint (local or remote storage), if this epoch has one."""
    path = f"{checkpoint.path}/{PANEL_FILE}"
    if checkpoint.filesystem.get_file_info(path).type.name != "File":
        return None
    with checkpoint.filesystem.open_input_stream(path) as stream:
        return np.asarray(Image.open(io.BytesIO(stream.read())).convert("RGB"))
