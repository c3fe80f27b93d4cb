"""How each trial ended, as the driver saw it, and the search's time budget.

Tune ends a trial in one of two ways. The normal way (the trial returned, ASHA stopped it, or it
failed) calls the callbacks' `on_trial_complete` / `on_trial_error`. When the whole experiment
stops, because Tune's time budget (`TuneConfig.time_budget_s`, its TimeoutStopper) ran out or
because the user pressed Ctrl-C, Tune marks the trials still running as TERMINATED without either
call. This callback records the first kind as it happens and names the second at the end of the
experiment: `budget` when the budget is spent, `interrupted` otherwise. Its record is kept in Tune's
experiment checkpoint (get_state/set_state), so a resumed search keeps the earlier endings, and the
time spent, which counts across resumes as Tune's TimeoutStopper counts it. At the end it writes the
record to `trial_endings.json` in the experiment folder, where the driver reads it (a restored Tuner
runs the callback objects it unpickled, not ones the driver holds).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune

from orchestrator.outcomes import Ending, error_line
from trainer.files import write_json

# Set by the first Ctrl-C of this driver process. Module state, not an attribute: a resumed search runs
# the TrialEndings that Tune unpickled, which must see the Ctrl-C of this process.
CTRL_C = threading.Event()
# Set, with the failure's line, when a trial fails for a full disk: the search stops as on Ctrl-C
# instead of burning every trial's retries on the same error (TrialEndings.stop_if_disk_full).
DISK_FULL: dict[str, str] = {}
DISK_FULL_TEXT = "No space left on device"


def stop_tune() -> bool:
    """Ask Tune to stop as a time budget would (its SIGUSR1 handler, installed while its loop runs);
    False when Tune is not listening."""
    if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, signal.SIG_IGN, None):
        return False
    signal.raise_signal(signal.SIGUSR1)
    return True


@contextlib.contextmanager
def ctrl_c_stops_the_search() -> Iterator[None]:
    """While Tune runs: the first Ctrl-C asks Tune to stop as a time budget would, saving the
    experiment's state one last time so that --resume continues it; a second Ctrl-C quits at once
    (KeyboardInterrupt; --resume still works from Tune's last periodic save).

    Tune's own SIGINT handler cannot tell us it fired, so we take SIGINT and hand Tune its other stop
    signal, SIGUSR1, which it handles the same way while its loop runs.
    """
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    CTRL_C.clear()
    DISK_FULL.clear()

    def on_sigint(signum: int, frame: Any) -> None:
        if CTRL_C.is_set() or not stop_tune():
            raise KeyboardInterrupt
        CTRL_C.set()
        print("\nCtrl-C: stopping the search and saving its state (Ctrl-C again to quit at once)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, on_sigint), signal.getsignal(signal.SIGUSR1)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGUSR1, previous[1])


class TrialEndings(tune.Callback):
    """Records why each trial stopped running; `budget_seconds` 0 means the search has no budget."""

    FILE = "trial_endings.json"

    def __init__(self, budget_seconds: float, out_dir: Path) -> None:
        self.budget_seconds = budget_seconds
        self.record = str(Path(out_dir) / self.FILE)
        self.ended: dict[str, str] = {}
        self.retries: dict[str, list[str]] = {}  # trial id -> why each failed attempt failed (Tune retried it)
        self.used_before = 0.0  # seconds spent by earlier runs of this search (before a resume)
        self._started: float | None = None

    def seconds_used(self) -> float:
        return self.used_before + (time.time() - self._started if self._started is not None else 0.0)

    def budget_spent(self) -> bool:
        return self.budget_seconds > 0 and self.seconds_used() >= self.budget_seconds

    def setup(self, **info: Any) -> None:
        self._started = time.time()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended.pop(trial.trial_id, None)  # an errored or interrupted trial started again

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended[trial.trial_id] = Ending.COMPLETE

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.stop_if_disk_full(trial, latest_failure(trial)):
            return  # interrupted, not failed: --resume runs it again once there is space
        self.ended[trial.trial_id] = Ending.ERROR

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A failed attempt that Tune retries from the trial's last checkpoint (FailureConfig)."""
        failure = latest_failure(trial)
        if not self.stop_if_disk_full(trial, failure):
            self.retries.setdefault(trial.trial_id, []).append(failure)

    @staticmethod
    def stop_if_disk_full(trial: Any, failure: str) -> bool:
        """A full disk fails every trial alike: stop the search at the first one (as on Ctrl-C, so that
        --resume continues it) and let the driver say so in one line."""
        if DISK_FULL_TEXT not in failure:
            return False
        if not DISK_FULL:
            DISK_FULL["where"] = f"trial {trial.trial_id}: {failure}"
            stop_tune()
        return True

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        stopped = CTRL_C.is_set() or bool(DISK_FULL)
        cut_short = Ending.BUDGET if self.budget_spent() and not stopped else Ending.INTERRUPTED
        # A full disk also cuts the trial that met it (ERROR, or PENDING while waiting for its retry).
        cut = ("TERMINATED", "RUNNING", "PAUSED") + (("PENDING", "ERROR") if DISK_FULL else ())
        for trial in trials:
            if trial.trial_id not in self.ended and trial.status in cut:
                self.ended[trial.trial_id] = cut_short
        write_json(Path(self.record), self.get_state())

    @classmethod
    def read(cls, out_dir: Path) -> EndingsRecord:
        """The record as the last run of the search left it (empty when no run got that far)."""
        path = Path(out_dir) / cls.FILE
        state = json.loads(path.read_text()) if path.is_file() else {}
        return EndingsRecord(state.get("ended", {}), state.get("retries", {}))

    def get_state(self) -> dict[str, Any]:
        return {"ended": dict(self.ended), "retries": dict(self.retries), "used": self.seconds_used()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.ended = dict(state["ended"])
        self.retries = dict(state.get("retries", {}))
        self.used_before = state["used"]


def latest_failure(trial: Any) -> str:
    """The last failure of a trial in one line, from the error file Tune has just appended it to
    (Trial.get_error reads storage, where that file arrives later)."""
    path = trial.error_file
    if path is None or not Path(path).is_file():
        return "unknown error"
    latest = Path(path).read_text().rsplit("Failure # ", 1)[-1].split("\n", 1)[-1]
    return error_line(RuntimeError(latest)) or "unknown error"


@dataclass(frozen=True)
class EndingsRecord:
    """What TrialEndings wrote: trial id -> complete / error / budget / interrupted, and trial id ->
    the reasons of its failed attempts that Tune retried."""

    ended: dict[str, str] = field(default_factory=dict)
    retries: dict[str, list[str]] = field(default_factory=dict)
