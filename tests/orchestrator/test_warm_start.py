"""Warm start (issue 22): searched trials fine-tune the L1-only reference's best generator with a
fresh discriminator. The references start from scratch and stay out of the study; Optuna, the
summary, the card and a resumed search say what each trial started from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from ray.tune.search import Searcher
from search_cli import TINY

from orchestrator import search
from orchestrator.spec import load_spec
from orchestrator.trials.references import INIT_GENERATOR, L1_ONLY, PAPER, ReferenceSearcher, kind_of
from orchestrator.trials.rungs import ReferencesApart
from orchestrator.tuner import make_scheduler
from trainer.errors import UserError

PAPER_POINT = {"lambda_l1": 100.0, "lr_G": 2e-4}


class Numbered(Searcher):
    """Suggests {"lambda_l1": n} for n = 1, 2, ... and records what it was told."""

    def __init__(self) -> None:
        super().__init__(metric="val_ssim", mode="max")
        self.suggested: list[str] = []
        self.told: list[str] = []

    def suggest(self, trial_id: str) -> dict[str, Any]:
        self.suggested.append(trial_id)
        return {"lambda_l1": float(len(self.suggested))}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.told.append(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.told.append(trial_id)


def test_fine_tunes_wait_for_the_l1_reference_and_start_from_its_latest_checkpoint() -> None:
    optuna_like = Numbered()
    searcher = ReferenceSearcher(optuna_like, l1_reference=True, warm_paper=PAPER_POINT)
    assert searcher.suggest("l1") == {**PAPER_POINT, "gan_weight": 0.0}
    assert searcher.suggest("paper") == PAPER_POINT
    assert searcher.suggest("t3") is None, "no fine-tune before the reference it starts from has ended"
    assert optuna_like.suggested == [], "the references are not Optuna's"
    searcher.on_trial_result("l1", {"trial_dir_name": "run_trial_l1", "checkpoint_dir_name": "checkpoint_000001"})
    searcher.on_trial_result("paper", {"trial_dir_name": "run_trial_paper", "checkpoint_dir_name": "checkpoint_1"})
    assert searcher.suggest("t3") is None, "running is not ended"
    # The last result comes with the completion alone (Tune calls no on_trial_result for it).
    searcher.on_trial_complete("l1", {"trial_dir_name": "run_trial_l1", "checkpoint_dir_name": "checkpoint_000002"})
    assert searcher.suggest("t3") == {"lambda_l1": 1.0, INIT_GENERATOR: "run_trial_l1/checkpoint_000002"}
    searcher.on_trial_complete("paper", {})
    searcher.on_trial_complete("t3", {})
    assert optuna_like.told == ["t3"], "Optuna hears of its own trials only"

    restored = ReferenceSearcher(Numbered(), l1_reference=True, warm_paper=PAPER_POINT)
    restored.set_state(searcher.get_state())  # what a resumed search does
    assert restored.suggest("t4")[INIT_GENERATOR] == "run_trial_l1/checkpoint_000002"


def test_a_failed_l1_reference_lets_the_search_go_on_from_random_weights() -> None:
    searcher = ReferenceSearcher(Numbered(), l1_reference=True, warm_paper=PAPER_POINT)
    searcher.suggest("l1"), searcher.suggest("paper")
    searcher.on_trial_complete("l1", error=True)
    assert searcher.suggest("t3") == {"lambda_l1": 1.0, INIT_GENERATOR: ""}


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ("  warm_start: true\n  l1_reference: false\n", "search.warm_start fine-tunes the L1-only reference"),
        ("  warm_start: true\ntrain2:\n", "unknown section"),
    ],
)
def test_warm_start_without_an_l1_reference_is_one_line(tmp_path: Path, lines: str, expected: str) -> None:
    spec = tmp_path / "warm.yaml"
    spec.write_text(TINY.read_text().replace("  seed: 0\n", f"  seed: 0\n{lines}"))
    with pytest.raises(UserError, match=expected):
        load_spec(spec)


def test_warm_start_keeps_the_references_out_of_ashas_rungs(tmp_path: Path) -> None:
    spec = tmp_path / "warm.yaml"
    spec.write_text(TINY.read_text().replace("  seed: 0\n", "  seed: 0\n  warm_start: true\n  rank_references: true\n"))
    assert isinstance(make_scheduler(load_spec(spec), epochs=3), ReferencesApart)
    assert not isinstance(make_scheduler(load_spec(TINY), epochs=3), ReferencesApart)


def test_warm_start_needs_a_generator_to_start_from(tmp_path: Path) -> None:
    spec = tmp_path / "warm.yaml"
    spec.write_text(
        TINY.read_text().replace("  seed: 0\n", "  seed: 0\n  warm_start: true\n")
        + "  init_generator: {type: categorical, choices: [a]}\n"
    )
    with pytest.raises(UserError, match="init_generator cannot be searched"):
        load_spec(spec)


def test_a_warm_started_search_and_its_resume(ray_session, tmp_path: Path) -> None:
    """3 trials (both references and one fine-tune), then --resume with a 4th: every fine-tune starts
    from the L1-only reference's best generator and runs after it ended."""
    common = ["--config", str(TINY), "--storage-path", str(tmp_path), "--name", "warm", "--wandb", "off"]
    assert search.main([*common, "--warm-start", "--num-samples", "3"]) == 0
    assert search.main(["--resume", "--storage-path", str(tmp_path), "--name", "warm", "--num-samples", "4"]) == 0
    experiment = tmp_path / "warm"
    summary = json.loads((experiment / "summary.json").read_text())
    spec = load_spec(experiment / "spec.yaml")
    trials = summary["trials"]
    assert len(trials) == 4
    kinds = {t["trial_id"]: kind_of(t["params"], spec) for t in trials}
    assert sorted(kinds.values()) == sorted([L1_ONLY, PAPER, "searched", "searched"])
    l1 = next(t for t in trials if kinds[t["trial_id"]] == L1_ONLY)
    assert len(l1["history"]) == 3, "ASHA leaves alone the reference that every fine-tune starts from"
    tunes = [t for t in trials if kinds[t["trial_id"]] == "searched"]
    assert all(INIT_GENERATOR not in t["params"] for t in trials if kinds[t["trial_id"]] != "searched")
    sources = {t["params"][INIT_GENERATOR] for t in tunes}
    assert len(sources) == 1, "the resumed search's fine-tune starts where the first one did"
    (source,) = sources
    checkpoint = experiment / source
    assert checkpoint.parent.name.split("_")[2] == l1["trial_id"] and (checkpoint / "best_generator.pt").is_file()
    # Each fine-tune's first epoch continues from the reference's best weights (its third epoch here):
    # its val SSIM is well above the first epoch of either reference, both from random weights.
    paper = next(t for t in trials if kinds[t["trial_id"]] == PAPER)
    from_scratch = max(paper["history"][0]["val_ssim"], l1["history"][0]["val_ssim"])
    for tune in tunes:
        assert tune["history"][0]["val_ssim"] > from_scratch + 0.01, (tune["history"], from_scratch)
    study = optuna.load_study(study_name="warm", storage=f"sqlite:///{experiment / 'optuna.db'}")
    assert {t.user_attrs["trial_id"] for t in study.trials} == {t["trial_id"] for t in tunes}
    assert {t.user_attrs[INIT_GENERATOR] for t in study.trials} == {source}
    card = json.loads((experiment / "best" / "model_card.json").read_text())
    if card["kind"] == "searched":
        assert card["kind_label"].endswith("fine-tuned from the L1-only reference's best generator")
    assert card["kind_label"] == summary["best"]["kind_label"]
    assert torch.load(checkpoint / "best_generator.pt", weights_only=True)["best_epoch"] == l1["best_epoch"]
