"""Ray's and Tune's own output goes to the experiment folder; the terminal holds the search's lines.

- Ray's loggers (the `ray` tree: the token-auth notice, "Started a local Ray instance", Tune's
  "callbacks.on_trial_result took 2.1 s" warnings, its experiment-state messages) write to
  `<experiment>/ray.log` instead of stderr, and so do the error messages raylets push to the driver
  (a killed worker's), which Ray would print on stdout behind an ANSI-coloured "(raylet)".
- Tune's own console reporter (a configuration box and a TensorBoard command pointing into Ray's
  session folder) is off: with RAY_AIR_NEW_OUTPUT=0 and verbose=0 Tune prints nothing itself.
- Tune writes no TensorBoard event files: TensorBoard is not a dependency, and W&B and
  optuna-dashboard show the same curves. Its automatic loggers are off; the two whose files we read
  (progress.csv and result.json, behind Tune's results and the resume tests) are given explicitly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from orchestrator.compat import send_raylet_messages_to

RAY_LOG = "ray.log"
ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
}


def result_loggers() -> list[tune.Callback]:
    return [CSVLoggerCallback(), JsonLoggerCallback()]


class QuietFileHandler(logging.FileHandler):
    """A FileHandler whose failed writes say nothing: logging's default prints a traceback per record
    to stderr, 1,500 lines for one full disk. ray.log is a record; the search reports a full disk itself."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass

    def close(self) -> None:
        try:
            super().close()  # flushes first, which a full disk refuses
        except OSError:
            pass


def route_ray_logs(folder: Path) -> Callable[[], None]:
    """Send the `ray` logger tree to `folder/ray.log`; returns the function that restores its handlers
    (tests run several searches in one process). Sets ENV, and WANDB_SILENT unless the user set it
    (wandb's "Adding directory to artifact..." lines)."""
    os.environ.update(ENV)
    os.environ.setdefault("WANDB_SILENT", "true")
    folder.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("ray")
    saved = list(logger.handlers)
    handler = QuietFileHandler(folder / RAY_LOG, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for old in saved:
        logger.removeHandler(old)
    logger.addHandler(handler)
    restore_raylet_messages = send_raylet_messages_to(logging.getLogger("ray.raylet").warning)

    def restore() -> None:
        restore_raylet_messages()
        logger.removeHandler(handler)
        handler.close()
        for old in saved:
            logger.addHandler(old)

    return restore
