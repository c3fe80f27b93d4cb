"""The report labels the L1-only reference's fixed gan_weight as a setting, not a searched parameter, and
its importance section counts the trials Optuna ranks (the study's, which leave that reference out)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest
from test_report import STATUSES, make_experiment, study_trial, trial

from orchestrator import report
from orchestrator.report import load
from orchestrator.report.load import MIN_TRIALS_FOR_IMPORTANCE, param_names
from orchestrator.trials.references import L1_ONLY_SETTING
from orchestrator.trials.study import load_study, write_study


def search_with_l1_reference(folder: Path, scored: int) -> Path:
    """`scored` trials with a val SSIM, the second of them the L1-only reference (its params hold
    gan_weight 0, as Tune's config does), and the study as StudyWriter writes it: without the reference."""
    rng = np.random.default_rng(1)
    trials = [trial(i, "finished", rng) for i in range(scored)]
    trials[1]["params"] = {**trials[1]["params"], **L1_ONLY_SETTING}
    make_experiment(folder, trials, with_study=False)
    summary_name = load.load_summary(folder)["name"]
    write_study(str(folder), summary_name, [study_trial(t) for i, t in enumerate(trials) if i != 1])
    return folder


@pytest.mark.slow  # seconds: a subprocess, a training or a W&B run (tests/conftest.py: tiers)
def test_gan_weight_is_no_searched_parameter(tmp_path: Path) -> None:
    folder = search_with_l1_reference(tmp_path / "exp", scored=len(STATUSES))
    summary = load.load_summary(folder)
    assert "gan_weight" not in param_names(summary)
    page = report.write_report(folder).read_text()
    trials_table = page[page.index("All trials") :]
    assert "gan_weight" not in trials_table[: trials_table.index("</tr>")]  # no column for it


def test_importance_counts_the_trials_optuna_ranks(tmp_path: Path) -> None:
    folder = search_with_l1_reference(tmp_path / "exp", scored=MIN_TRIALS_FOR_IMPORTANCE)
    name = load.load_summary(folder)["name"]
    ranked = load_study(folder, name).get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(ranked) == MIN_TRIALS_FOR_IMPORTANCE - 1
    message = load.param_importances(folder, name)
    assert isinstance(message, str)
    assert f"has {len(ranked)}" in message and "L1-only reference" in message, message
