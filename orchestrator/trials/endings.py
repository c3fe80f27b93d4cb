"""How each trial ended, as the driver saw it, and why the driver stopped the search early.

Tune ends a trial in one of two ways. The normal way (the trial returned, ASHA stopped it, or it
failed) calls the callbacks' `on_trial_complete` / `on_trial_error`. When the whole experiment
stops, because Tune's time budget (`TuneConfig.time_budget_s`, its TimeoutStopper) ran out or
because the driver asked it to (SearchStop: Ctrl-C, SIGTERM, a full disk), Tune marks the trials
still running as TERMINATED without either call. This callback records the first kind as it happens
and names the second at the end of the experiment: `budget` when the budget is spent, `interrupted`
otherwise. Its record is kept in Tune's experiment checkpoint (get_state/set_state), so a resumed
search keeps the earlier endings, and the time spent, which counts across resumes as Tune's
TimeoutStopper counts it. At the end it writes the record to `trial_endings.json` in the experiment
folder, where the driver reads it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune

from orchestrator.compat import latest_failure_text
from orchestrator.outcomes import Ending, StopCause, error_line
from trainer.errors import storage_advice
from trainer.files import write_json


def stop_tune() -> bool:
    """Ask Tune to stop as a time budget would (its SIGUSR1 handler, installed while its loop runs);
    False when Tune is not listening."""
    if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, signal.SIG_IGN, None):
        return False
    signal.raise_signal(signal.SIGUSR1)
    return True


@dataclass
class SearchStop:
    """The driver's one request that the search stop before its end, and why: a signal, or a storage
    failure in a trial (`detail` then names the trial and the failure, `advice` what to do)."""

    cause: StopCause | None = None
    detail: str = ""
    advice: str = ""

    def request(self, cause: StopCause, detail: str = "", advice: str = "") -> bool:
        """Record the first request and ask Tune to stop; False when Tune was not listening."""
        if self.cause is None:
            self.cause, self.detail, self.advice = cause, detail, advice
        return stop_tune()


SIGNAL_CAUSES = {signal.SIGINT: StopCause.CTRL_C, signal.SIGTERM: StopCause.SIGTERM}


@contextlib.contextmanager
def signals_stop_the_search(stop: SearchStop) -> Iterator[None]:
    """While the driver runs Ray: the first Ctrl-C or SIGTERM (what `ray job stop`, Kubernetes and
    Slurm send) asks Tune to stop as a time budget would, saving the experiment's state one last time
    so that --resume continues it; a second signal, or one outside Tune's loop, quits at once
    (KeyboardInterrupt; --resume still works from Tune's last periodic save).

    Tune's own SIGINT handler cannot tell us it fired, and Ray's core prints a stack dump and aborts on
    SIGTERM, so we take both signals and hand Tune its other stop signal, SIGUSR1, which it handles the
    same way while its loop runs. Installed after Ray started: its handlers are replaced, not ours.
    """
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"

    def on_signal(signum: int, frame: Any) -> None:
        cause = SIGNAL_CAUSES[signal.Signals(signum)]
        if stop.cause is not None or not stop.request(cause):
            stop.cause = stop.cause or cause
            raise KeyboardInterrupt
        name = "Ctrl-C" if cause == StopCause.CTRL_C else "SIGTERM"
        print(f"\n{name}: stopping the search and saving its state (Ctrl-C again to quit at once)", file=sys.stderr)

    previous = {signum: signal.signal(signum, on_signal) for signum in SIGNAL_CAUSES}
    previous[signal.SIGUSR1] = signal.getsignal(signal.SIGUSR1)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class TrialEndings(tune.Callback):
    """Records why each trial stopped running; `budget_seconds` 0 means the search has no budget."""

    FILE = "trial_endings.json"

    def __init__(self, budget_seconds: float, out_dir: Path, stop: SearchStop) -> None:
        self.budget_seconds = budget_seconds
        self.stop = stop
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
        if self.stop_if_storage_failed(trial, latest_failure(trial)):
            return  # interrupted, not failed: --resume runs it again once the storage is mended
        self.ended[trial.trial_id] = Ending.ERROR

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A failed attempt that Tune retries from the trial's last checkpoint (FailureConfig)."""
        failure = latest_failure(trial)
        if not self.stop_if_storage_failed(trial, failure):
            self.retries.setdefault(trial.trial_id, []).append(failure)

    def stop_if_storage_failed(self, trial: Any, failure: str) -> bool:
        """A full disk (or quota, or file-size limit) fails every trial alike: stop the search at the
        first one (as on Ctrl-C, so that --resume continues it) and let the driver say so in one line."""
        advice = storage_advice(failure)
        if advice is None:
            return False
        self.stop.request(StopCause.STORAGE, f"trial {trial.trial_id}: {failure}", advice)
        return True

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        stopped = self.stop.cause is not None
        cut_short = Ending.BUDGET if self.budget_spent() and not stopped else Ending.INTERRUPTED
        # A storage failure also cuts the trial that met it (ERROR, or PENDING while waiting for its retry).
        storage = self.stop.cause == StopCause.STORAGE
        cut = ("TERMINATED", "RUNNING", "PAUSED") + (("PENDING", "ERROR") if storage else ())
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
    latest = latest_failure_text(Path(path).read_text())
    return error_line(RuntimeError(latest)) or "unknown error"


@dataclass(frozen=True)
class EndingsRecord:
    """What TrialEndings wrote: trial id -> complete / error / budget / interrupted, and trial id ->
    the reasons of its failed attempts that Tune retried."""

    ended: dict[str, str] = field(default_factory=dict)
    retries: dict[str, list[str]] = field(default_factory=dict)
