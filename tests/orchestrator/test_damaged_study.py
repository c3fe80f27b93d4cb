"""optuna.db is derived from the search's trials: a damaged one neither stops the report (nor the
summary written before it) nor stays damaged once the study is written again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_report import make_experiment, study_trial, trial

from orchestrator import report
from orchestrator.trials.study import STUDY_FILE, load_study, write_study

GARBAGE = b"this is no SQLite database, just bytes someone wrote over it\n" * 64


@pytest.fixture
def damaged(tmp_path: Path) -> tuple[Path, list[dict]]:
    rng = np.random.default_rng(4)
    trials = [trial(i, "finished", rng) for i in range(5)]
    folder = make_experiment(tmp_path / "exp", trials)
    (folder / STUDY_FILE).write_bytes(GARBAGE)
    return folder, trials


@pytest.mark.slow  # seconds: a subprocess, a training or a W&B run (tests/conftest.py: tiers)
def test_the_report_of_a_search_with_a_damaged_study_is_written_and_says_why(damaged: tuple[Path, list]) -> None:
    folder, trials = damaged
    page = report.write_report(folder).read_text()
    assert f"{STUDY_FILE} cannot be read (file is not a database), so there is nothing to rank." in page
    assert all(t["trial_id"] in page for t in trials)


@pytest.mark.slow  # seconds: a subprocess, a training or a W&B run (tests/conftest.py: tiers)
def test_writing_the_study_again_replaces_a_damaged_file(
    damaged: tuple[Path, list], capsys: pytest.CaptureFixture[str]
) -> None:
    folder, trials = damaged
    summary_name = "glyphs <demo> & co"  # make_experiment's study name
    write_study(str(folder), summary_name, [study_trial(t) for t in trials])
    assert f"warning: {folder / STUDY_FILE} was damaged" in capsys.readouterr().out
    assert len(load_study(folder, summary_name).trials) == len(trials)
    assert "cannot be read" not in report.write_report(folder).read_text()
