"""How a trial ended, and the metric names the search reports: defined once, shown everywhere.

The live table, W&B, the Optuna study, summary.json and the report all import these. The module is
light on purpose (no torch, no Ray), so importing a name never imports the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from trainer.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_USAGE
from trainer.names import LOSS_NAMES, METRIC_BY_NAME, METRIC_NAMES

METRIC = "val_ssim"  # ASHA compares trials on each epoch's val SSIM
MODE = METRIC_BY_NAME["ssim"].direction  # the better way of METRIC and SEARCH_METRIC
SEARCH_METRIC = "best_val_ssim"  # Optuna learns from a trial's best epoch, the one that would be exported
# Each epoch's numbers that summary.json keeps and W&B charts (trainer.loop.EpochResult.metrics names them).
EPOCH_KEYS = ("epoch", *LOSS_NAMES, *(f"val_{m}" for m in METRIC_NAMES), "lr_G", "lr_D")
PROGRESS_KEYS = ("best_val_ssim", "best_epoch", "epoch_seconds", "images_per_s")  # W&B charts these too


class Text(str, Enum):
    """A string enum that prints as its value (Python 3.12 would print `Class.MEMBER` otherwise)."""

    def __str__(self) -> str:
        return str(self.value)


class Ending(Text):
    """How the driver saw a trial stop running (orchestrator.trials.endings.TrialEndings records it)."""

    COMPLETE = "complete"  # it returned, or ASHA or the plateau rule stopped it
    ERROR = "error"
    BUDGET = "budget"  # the search's time budget ran out while it ran
    INTERRUPTED = "interrupted"  # Ctrl-C while it ran; --resume continues it


class EndReason(Text):
    """Why a trial ended, as summary.json, the study, W&B and the report name it."""

    FINISHED = "finished"
    STOPPED_ASHA = "stopped_asha"
    STOPPED_PLATEAU = "stopped_plateau"
    STOPPED_BUDGET = "stopped_budget"
    INTERRUPTED = "interrupted"
    FAILED = "failed"


class SearchState(Text):
    """summary.json's `state`: whether the search ran to its end (budget included) or was stopped."""

    FINISHED = "finished"
    INTERRUPTED = "interrupted"  # Ctrl-C, SIGTERM or a full disk; --resume continues it


class StopCause(Text):
    """Why the driver stopped a search before its end (orchestrator.trials.endings.SearchStop)."""

    CTRL_C = "ctrl_c"
    SIGTERM = "sigterm"
    STORAGE = "storage"  # a full disk, quota or file-size limit, in a trial or in the driver's own writes


# The driver's exit code for each way a search stops early: the shell's for signals, and the
# project's bad-input code for storage the user must mend.
STOP_EXIT_CODES = {
    StopCause.CTRL_C: EXIT_INTERRUPTED,
    StopCause.SIGTERM: EXIT_TERMINATED,
    StopCause.STORAGE: EXIT_USAGE,
}


@dataclass(frozen=True)
class SearchOutcome:
    """How one run of the driver ended: what `run_search` returns and the CLI turns into its last
    lines and exit code."""

    state: SearchState
    resume_command: str
    stop: StopCause | None = None  # None: it ran to its end (its time budget included)
    detail: str = ""  # the stop's one line: which trial met a full disk, or which file the driver wrote
    advice: str = ""  # what to do before --resume, for a storage stop
    summary: dict[str, Any] | None = None  # summary.json as written; None when stopped before it was
    exported: Path | None = None  # the export folder of the best trial, when there was one

    @property
    def exit_code(self) -> int:
        if self.state == SearchState.INTERRUPTED:
            return STOP_EXIT_CODES[self.stop or StopCause.CTRL_C]
        return 0 if self.exported else 1


def end_reason(epochs_run: int, epochs: int, plateaued: bool, ending: str | None) -> EndReason:
    """Why a trial ended, from its last result and how the driver saw it end."""
    if ending == Ending.ERROR:
        return EndReason.FAILED
    if epochs_run >= epochs:
        return EndReason.FINISHED
    if plateaued:
        return EndReason.STOPPED_PLATEAU
    if ending == Ending.BUDGET:
        return EndReason.STOPPED_BUDGET
    if ending == Ending.INTERRUPTED:
        return EndReason.INTERRUPTED
    return EndReason.STOPPED_ASHA


def describe_end(reason: EndReason, epochs_run: int, epochs: int, best_epoch: int, budget: str, error: str) -> str:
    """The one-line reason a reader sees beside the status."""
    return {
        EndReason.FINISHED: f"ran all {epochs} epochs",
        EndReason.STOPPED_ASHA: f"stopped by ASHA after epoch {epochs_run}",
        EndReason.STOPPED_PLATEAU: f"no val SSIM gain for the last {epochs_run - best_epoch} epochs",
        EndReason.STOPPED_BUDGET: f"the time budget ({budget}) ended it in epoch {epochs_run + 1}",
        EndReason.INTERRUPTED: f"the search was interrupted during epoch {epochs_run + 1}; --resume continues it",
        EndReason.FAILED: error,
    }[reason]


def error_line(error: BaseException | None) -> str:
    """The root cause in one line (Ray wraps trial errors in its own exception types)."""
    if error is None:
        return ""
    cause = error
    while getattr(cause, "cause", None) is not None:
        cause = cause.cause
    lines = [line for line in str(cause).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(cause).__name__
