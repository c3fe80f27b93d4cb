"""The driver's Tune callbacks on small fake trials, without Ray: how trials end (TrialEndings) and
what of their checkpoints stays (CheckpointRetention). The whole searches in test_search.py run them
for real; these check their rules one event at a time."""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow.fs
import pytest
from ray import tune
from search_cli import TINY

from orchestrator.outcomes import Ending, StopCause
from orchestrator.spec import load_spec
from orchestrator.trials.endings import SearchStop, TrialEndings
from orchestrator.trials.retention import CheckpointRetention
from trainer.checkpoint import BEST_GENERATOR, LAST


@dataclass
class FakeTrial:
    """The attributes of ray.tune.experiment.Trial that the callbacks read."""

    trial_id: str
    folder: Path
    status: str = "RUNNING"
    config: dict[str, Any] = field(default_factory=dict)
    last_result: dict[str, Any] = field(default_factory=dict)
    error_file: str | None = None
    checkpoint: tune.Checkpoint | None = None

    @property
    def storage(self) -> SimpleNamespace:
        return SimpleNamespace(storage_filesystem=pyarrow.fs.LocalFileSystem(), trial_fs_path=str(self.folder))

    def fail(self, *failures: str) -> None:
        """Tune's error file, as Trial.handle_error appends each failure to it."""
        path = self.folder / "error.txt"
        path.write_text("".join(f"Failure # {i + 1} (occurred at now)\n{text}\n" for i, text in enumerate(failures)))
        self.error_file = str(path)

    def save(self, epoch: int, best_val_ssim: float) -> None:
        """A checkpoint folder as the trainable reports it (orchestrator.trials.trainable.CHECKPOINT_FILES)."""
        folder = self.folder / f"checkpoint_{epoch:06d}"
        folder.mkdir(parents=True)
        for name in (LAST, BEST_GENERATOR):
            (folder / name).write_bytes(b"weights")
        self.checkpoint = tune.Checkpoint.from_directory(str(folder))
        self.last_result = {"epoch": epoch, "best_val_ssim": best_val_ssim}


@pytest.fixture
def make_trial(tmp_path: Path):
    def make(trial_id: str, **values: Any) -> FakeTrial:
        folder = tmp_path / trial_id
        folder.mkdir()
        return FakeTrial(trial_id, folder, **values)

    return make


def test_endings_record_completions_errors_and_retries_and_survive_a_resume(tmp_path: Path, make_trial) -> None:
    endings = TrialEndings(0.0, tmp_path, SearchStop())
    done, failed, retried = make_trial("done"), make_trial("failed"), make_trial("retried")
    endings.setup()
    endings.on_trial_complete(1, [], done)
    failed.fail("RuntimeError: loss became NaN")
    endings.on_trial_error(1, [], failed)
    retried.fail("RuntimeError: worker died", "ValueError: bad batch")
    endings.on_trial_recover(1, [], retried)
    assert endings.ended == {"done": Ending.COMPLETE, "failed": Ending.ERROR}
    assert endings.retries == {"retried": ["ValueError: bad batch"]}  # the latest failure only

    saved = endings.get_state()
    resumed = TrialEndings(0.0, tmp_path, SearchStop())
    resumed.set_state(saved)
    assert resumed.ended == endings.ended and resumed.retries == endings.retries
    assert resumed.seconds_used() == saved["used"] > 0  # time counts across resumes
    endings.on_trial_start(2, [], failed)  # an errored trial started again is no longer ended
    assert "failed" not in endings.ended


@pytest.mark.parametrize(
    ("failure", "advice"),
    [
        ("OSError: [Errno 28] No space left on device: '/x/last.pt'", "free space"),
        ("OSError: [Errno 27] File too large", "raise the file-size limit (ulimit -f)"),
    ],
)
def test_a_storage_failure_stops_the_search_once_and_cuts_the_trial_that_met_it(
    tmp_path: Path, make_trial, failure: str, advice: str
) -> None:
    stop = SearchStop()
    endings = TrialEndings(0.0, tmp_path, stop)
    first, second, running = make_trial("first"), make_trial("second"), make_trial("running")
    first.fail(failure)
    second.fail(failure)
    endings.on_trial_error(1, [], first)
    endings.on_trial_recover(1, [], second)
    assert stop.cause == StopCause.STORAGE and stop.advice == advice
    assert stop.detail.startswith("trial first: ") and failure in stop.detail  # the first one stays the news
    assert endings.ended == {} and endings.retries == {}  # not failures: --resume runs them again

    first.status, second.status = "ERROR", "PENDING"
    endings.on_experiment_end([first, second, running])
    assert endings.ended == dict.fromkeys(("first", "second", "running"), Ending.INTERRUPTED)
    assert TrialEndings.read(tmp_path).ended == endings.ended  # trial_endings.json, as the driver reads it


def test_the_budget_names_the_trials_it_cut_and_a_signal_names_them_interrupted(tmp_path: Path, make_trial) -> None:
    budget = TrialEndings(1.0, tmp_path, SearchStop())
    budget.setup()
    budget.used_before = 2.0  # an earlier run of the search spent the budget
    running, pending = make_trial("running"), make_trial("pending", status="PENDING")
    budget.on_experiment_end([running, pending])
    assert budget.ended == {"running": Ending.BUDGET}  # a trial that never started was not cut

    stop = SearchStop()
    signalled = TrialEndings(1.0, tmp_path, stop)
    signalled.setup()
    signalled.used_before = 2.0
    not_listening = signal.signal(signal.SIGUSR1, signal.SIG_DFL)  # as if no Tune had run in this process
    try:
        assert stop.request(StopCause.SIGTERM) is False  # Tune is not listening: the caller quits at once
    finally:
        signal.signal(signal.SIGUSR1, not_listening)
    signalled.on_experiment_end([running])
    assert signalled.ended == {"running": Ending.INTERRUPTED}  # the signal, not the budget, ended it


def test_retention_keeps_the_best_generators_the_references_and_nothing_to_continue_from(make_trial) -> None:
    spec = load_spec(TINY)  # keep_generators: 1
    retention = CheckpointRetention(TrialEndings(0.0, Path("."), SearchStop()), spec)
    searched = {"lambda_l1": 50.0, "dropout": 0.1, "lr_G": 1e-4, "lr_D": 1e-4}
    paper = make_trial("paper", config=spec.paper_point(), status="TERMINATED")
    worse, better = make_trial("worse", config=searched), make_trial("better", config=searched)
    for trial, score in ((paper, 0.1), (worse, 0.5), (better, 0.7)):
        trial.save(1, score)
        trial.save(2, score)
    for trial in (paper, worse, better):
        retention.on_trial_complete(1, [], trial)
        time.sleep(0.01)

    for trial in (paper, worse, better):
        assert [p.name for p in trial.folder.iterdir()] == ["checkpoint_000002"]  # the older one is gone
        assert not (trial.folder / "checkpoint_000002" / LAST).exists()  # nothing will continue it
    kept = {t.trial_id for t in (paper, worse, better) if (t.folder / "checkpoint_000002" / BEST_GENERATOR).exists()}
    assert kept == {"paper", "better"}  # the reference, and the 1 best searched trial

    restored = CheckpointRetention(retention.endings, spec)
    restored.set_state(retention.get_state())
    assert restored.kept == retention.kept
