"""The search as an Optuna study on disk (`optuna.db`), for optuna-dashboard and later analysis.

This module owns the study's format. `StudyWriter` is a Tune callback that rewrites the whole study
from Tune's trial records as trials end (each ending asks for a rewrite; LatestOnlyWriter paces
them), so optuna-dashboard can follow a running search:

- one Optuna trial per Tune trial that ended, numbered in launch order, with its real start and end
  times; trials still running are left out, so a killed driver leaves no orphaned RUNNING trial;
- finished and early-stopped trials are COMPLETE with their best val SSIM as the value (what Tune's
  searcher learns from and what the export ranks by), so `study.best_trial` is the exported trial;
  failed trials are FAIL; every epoch's val SSIM is an intermediate value, and how the trial ended
  is the user attribute `end_reason`;
- each trial's latest sample panel is an Optuna artifact in `optuna_artifacts/`.

Why a rewrite and not live writes: Tune saves this callback's state together with its trial list
and searcher, so after a resumed driver the study holds exactly the trials Tune knows, never one
twice. A background thread builds the new study in memory (so Tune's event loop never waits for
SQLite) and copies it into the file with SQLite's backup API, in one write transaction: a reader
(the dashboard) sees the old study or the new one, never half of one, and the study keeps its id
because the file is never replaced.
"""

from __future__ import annotations

import contextlib
import datetime
import shlex
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from ray import tune

from orchestrator.outcomes import METRIC, Ending, EndReason, end_reason, error_line
from orchestrator.results import saved_best
from orchestrator.trials.endings import TrialEndings
from orchestrator.trials.references import INIT_GENERATOR, in_study
from orchestrator.trials.trainable import read_panel

STUDY_FILE = "optuna.db"
ARTIFACT_DIR = "optuna_artifacts"
PANEL_ARTIFACT = "val_samples.png"  # the name the dashboard shows for a trial's panel


def storage_url(path: Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def dashboard_command(experiment_dir: Path) -> str:
    """The optuna-dashboard command for this experiment (`pip install -e ".[dashboard]"` installs it)."""
    experiment_dir = Path(experiment_dir).resolve()
    return (
        f"optuna-dashboard {shlex.quote(storage_url(experiment_dir / STUDY_FILE))} "
        f"--artifact-dir {shlex.quote(str(experiment_dir / ARTIFACT_DIR))}"
    )


def load_study(experiment_dir: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage_url(Path(experiment_dir) / STUDY_FILE))


class StudyWriter(tune.Callback):
    """Keeps `<experiment_dir>/optuna.db` equal to Tune's ended trials (see the module docstring).

    Its state (each trial's epochs, start and end times, artifact records) is saved by Tune with
    the experiment, so a resumed search rewrites the same study and carries on.
    """

    def __init__(
        self,
        experiment_dir: str,
        study_name: str,
        distributions: dict[str, optuna.distributions.BaseDistribution],
        epochs: int,
        endings: TrialEndings,
        warm_start: bool = False,
    ) -> None:
        self.experiment_dir, self.study_name = experiment_dir, study_name
        self.distributions, self.epochs, self.endings = distributions, epochs, endings
        self.warm_start = warm_start  # the paper reference is kept from TPE too (orchestrator.trials.references)
        self._epochs: dict[str, dict[int, float]] = {}  # trial id -> epoch -> val SSIM
        self._started: dict[str, float] = {}
        self._ended: dict[str, float] = {}
        self._artifacts: dict[str, dict[str, Any]] = {}  # trial id -> Optuna system attrs naming its artifacts
        self._panels: dict[str, bytes] = {}  # latest panel of trials whose artifact is not written yet
        self._writer: LatestOnlyWriter | None = None  # started on the first write, in the driver

    def get_state(self) -> dict[str, Any]:
        # Panels are left out: they can be megabytes, and a resumed trial reports a new one.
        return {"epochs": self._epochs, "started": self._started, "ended": self._ended, "artifacts": self._artifacts}

    def set_state(self, state: dict[str, Any]) -> None:
        self._epochs, self._started = state["epochs"], state["started"]
        self._ended, self._artifacts = state["ended"], state["artifacts"]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_panels": {}, "_writer": None}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._started.setdefault(trial.trial_id, time.time())
        self._ended.pop(trial.trial_id, None)  # a resumed search restarts a trial that ended unfinished

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if "epoch" in result and METRIC in result:
            self._epochs.setdefault(trial.trial_id, {})[int(result["epoch"])] = float(result[METRIC])

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        panel = read_panel(checkpoint)
        if panel is not None:
            self._panels[trial.trial_id] = panel

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended[trial.trial_id] = time.time()
        self.write(trials)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended[trial.trial_id] = time.time()
        self.write(trials)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for trial in trials:  # the time budget or Ctrl-C ended these without on_trial_complete
            if self.endings.ended.get(trial.trial_id) in (Ending.BUDGET, Ending.INTERRUPTED):
                self._ended.setdefault(trial.trial_id, time.time())
        self.write(trials).flush()  # the study is complete when the search returns

    def write(self, trials: list) -> LatestOnlyWriter:
        """Snapshot the ended trials (here, on Tune's event loop: cheap) and hand the snapshot to a
        background thread that writes the study (about 9 ms per trial: 0.9 s for 100 trials), so
        Tune's decisions never wait for SQLite."""
        artifact_dir = Path(self.experiment_dir) / ARTIFACT_DIR
        artifact_dir.mkdir(parents=True, exist_ok=True)
        store = optuna.artifacts.FileSystemArtifactStore(str(artifact_dir))
        # Tune calls on_trial_complete before it marks the trial TERMINATED: its status cannot tell.
        # The L1-only reference (with warm_start, both references) is no point of the space: TPE never saw it.
        ended = [
            t for t in trials if t.trial_id in self._ended and in_study(t.config, self.distributions, self.warm_start)
        ]
        snapshot = []
        for trial in sorted(ended, key=lambda t: self._started.get(t.trial_id, self._ended[t.trial_id])):
            if trial.trial_id not in self._artifacts and trial.trial_id in self._panels:
                self._artifacts[trial.trial_id] = upload_panel(store, self._panels.pop(trial.trial_id))
            snapshot.append(self.frozen_trial(trial))
        if self._writer is None:
            self._writer = LatestOnlyWriter(lambda frozen: write_study(self.experiment_dir, self.study_name, frozen))
        self._writer.submit(snapshot)
        return self._writer

    def frozen_trial(self, trial: Any) -> optuna.trial.FrozenTrial:
        result = trial.last_result or {}
        ending = self.endings.ended.get(trial.trial_id)
        failed = ending == Ending.ERROR
        reason = end_reason(int(result.get("epoch", 0)), self.epochs, bool(result.get("plateau_stop")), ending)
        saved = trial.latest_checkpoint_result
        best, best_epoch = saved_best(saved.metrics if saved else None)
        user_attrs = {"trial_id": trial.trial_id, "end_reason": reason}
        if best is not None:
            user_attrs.update(best_val_ssim=best, best_epoch=best_epoch)
        if failed:
            user_attrs["error"] = error_line(trial.get_error())
        if INIT_GENERATOR in trial.config:  # a fine-tune: what it started from ("" : random weights)
            user_attrs[INIT_GENERATOR] = trial.config[INIT_GENERATOR]
        if trial.trial_id in self.endings.retries:  # attempts that failed and Tune ran again
            user_attrs["retries"] = self.endings.retries[trial.trial_id]
        params = {k: v for k, v in trial.config.items() if k in self.distributions}
        # An interrupted trial is PRUNED (stopped before its end, not failed) until --resume finishes it.
        if reason == EndReason.INTERRUPTED:
            state = optuna.trial.TrialState.PRUNED
        elif failed or best is None:
            state = optuna.trial.TrialState.FAIL
        else:
            state = optuna.trial.TrialState.COMPLETE
        started = self._started.get(trial.trial_id, self._ended[trial.trial_id])
        return optuna.trial.FrozenTrial(
            number=0,  # add_trial numbers trials in the order they are added
            trial_id=0,
            state=state,
            value=best if state == optuna.trial.TrialState.COMPLETE else None,
            values=None,
            datetime_start=datetime.datetime.fromtimestamp(started),
            datetime_complete=datetime.datetime.fromtimestamp(self._ended[trial.trial_id]),
            params=params,
            distributions={k: self.distributions[k] for k in params},
            user_attrs=user_attrs,
            system_attrs=self._artifacts.get(trial.trial_id, {}),
            intermediate_values=dict(sorted(self._epochs.get(trial.trial_id, {}).items())),
        )


def write_study(experiment_dir: str, name: str, trials: list[optuna.trial.FrozenTrial]) -> None:
    """Build the study in memory, then copy it over the study file."""
    storage = optuna.storages.RDBStorage("sqlite://")  # in memory: no file I/O per trial
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
        study.add_trials(trials)  # numbered in list order: launch order
        copy_database(storage, Path(experiment_dir) / STUDY_FILE)
    finally:
        storage.remove_session()
        storage.engine.dispose()


class LatestOnlyWriter:
    """Runs `write(snapshot)` in a daemon thread. Each snapshot is a whole study, so a newer one
    replaces one not yet written; `flush` waits until the latest is on disk. A failed write is one
    warning line: the study is a view of the search, never a reason to stop it.

    A rewrite costs about 9 ms per trial, so with hundreds of trials ending back to back the thread
    would rewrite without pause and hold the driver's GIL much of the time (39% of the driver's
    samples at 200 trials, 64 at once: benchmarks.driver under py-spy). After each write it
    rests `REST` times as long as the write took, unless a flush is waiting: the study then lags the
    search by a few rewrites' time at most, and the thread takes at most 1 / (1 + REST) of a core."""

    REST = 4.0

    def __init__(self, write: Callable[[Any], None]) -> None:
        self._write = write
        self._changed = threading.Condition()
        self._pending: Any = None
        self._busy = False
        self._flushing = False
        self._rest_until = 0.0  # time.monotonic() before which no write starts, unless flushing
        threading.Thread(target=self._run, daemon=True, name="optuna-study-writer").start()

    def submit(self, snapshot: Any) -> None:
        with self._changed:
            self._pending = snapshot
            self._changed.notify_all()

    def flush(self) -> None:
        with self._changed:
            self._flushing = True
            self._changed.notify_all()
            self._changed.wait_for(lambda: self._pending is None and not self._busy)
            self._flushing = False

    def _ready(self) -> bool:
        return self._pending is not None and (self._flushing or time.monotonic() >= self._rest_until)

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._ready():
                    resting = self._rest_until - time.monotonic()
                    self._changed.wait(timeout=resting if self._pending is not None and resting > 0 else None)
                snapshot, self._pending, self._busy = self._pending, None, True
            started = time.monotonic()
            try:
                self._write(snapshot)
            except Exception as err:  # disk full, permissions, a locked file: keep the search going
                print(f"warning: the Optuna study was not updated ({type(err).__name__}: {err})", flush=True)
            finally:
                with self._changed:
                    took = time.monotonic() - started
                    self._rest_until = time.monotonic() + self.REST * took
                    self._busy = False
                    self._changed.notify_all()


def upload_panel(store: optuna.artifacts.FileSystemArtifactStore, panel: bytes) -> dict[str, Any]:
    """Store the panel in the artifact store; returns the system attrs that name it, which every
    rewrite gives the trial so that the file is stored once. Optuna attaches artifacts only to
    running trials, so it is uploaded to a running trial of a scratch study and its attrs copied."""
    scratch = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    trial = scratch.ask()
    with tempfile.TemporaryDirectory(prefix="panel-") as folder:
        path = Path(folder) / PANEL_ARTIFACT
        path.write_bytes(panel)
        optuna.artifacts.upload_artifact(
            artifact_store=store, file_path=str(path), study_or_trial=trial, mimetype="image/png"
        )
    return dict(scratch.trials[0].system_attrs)


def copy_database(storage: optuna.storages.RDBStorage, path: Path) -> None:
    """Copy the in-memory database into `path` with SQLite's backup API: one write transaction, and
    the file (and so a reader's open connection) stays the same. A file that is no database (damaged,
    overwritten) is replaced, with a warning: the study is derived, every write rebuilds it whole
    from Tune's trials, so nothing of the search is lost with it."""
    source = storage.engine.raw_connection()
    try:
        try:
            backup(source.driver_connection, path)
        except sqlite3.DatabaseError as err:
            if err.sqlite_errorcode not in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
                raise  # e.g. locked: the file is fine, the next write tries again
            print(f"warning: {path} was damaged ({err}); rebuilt from the search's trials", flush=True)
            path.unlink()
            backup(source.driver_connection, path)
    finally:
        source.close()


def backup(source: sqlite3.Connection, path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as target:
        source.backup(target)
