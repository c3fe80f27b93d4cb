"""Population-based training (`search.pbt`, issue 22): Ray Tune's PBT over the searched trials, the
references outside the population, retuned trials that record their schedule, and a PBT search that
resumes after its driver was killed."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from ray.tune import Checkpoint
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler
from search_cli import ROOT, TINY, result_lines, search_command, search_env

from orchestrator.spec import load_spec
from orchestrator.tracking.offline import OfflineRun, WandbLogError, find_runs, read_run
from orchestrator.trials.population import PopulationApart, own_copy
from orchestrator.trials.references import kind_of
from trainer.checkpoint import BEST_GENERATOR, RunState
from trainer.errors import UserError
from trainer.export.card import hyperparameters_section

# Every trial keeps its best generator: the test reads a copied trial's schedule from it.
# 5 epochs, so 4 looks: a look can find the best trial without a checkpoint Tune knows, and PBT then
# skips the copy (with 4 epochs, once, a whole fresh-clone run made no copy at all).
PBT_EPOCHS = 5
PBT_FLAGS = ("--pbt", "--pbt-interval", "1", "--epochs", str(PBT_EPOCHS), "--num-samples", "5")
PBT_FLAGS += ("--keep-generators", "5")


def pbt_spec(tmp_path: Path, extra: str = "") -> Path:
    spec = tmp_path / "pbt.yaml"
    spec.write_text(TINY.read_text().replace("  seed: 0\n", f"  seed: 0\n  pbt: true\n  pbt_interval: 1\n{extra}"))
    return spec


@pytest.mark.parametrize(
    ("search_lines", "space_line", "expected"),
    [
        ("", "  ngf: {type: categorical, choices: [8, 16]}\n", "search.pbt changes the searched values .* ngf"),
        ("  warm_start: true\n", "", "search.pbt and search.warm_start cannot be combined"),
    ],
)
def test_pbt_over_what_cannot_change_mid_run_is_one_line(
    tmp_path: Path, search_lines: str, space_line: str, expected: str
) -> None:
    spec = pbt_spec(tmp_path, search_lines)
    spec.write_text(spec.read_text().replace("  ngf: 8\n", "") + space_line)
    with pytest.raises(UserError, match=expected):
        load_spec(spec)


class Controller:
    """What PBT asks of Tune's controller: its trials (and, in on_trial_add, its search algorithm)."""

    def __init__(self, trials: list[Any]) -> None:
        self.trials = trials
        self.search_alg = object()  # a searcher: PBT alone would refuse it

    def get_trials(self) -> list[Any]:
        return self.trials


class FakeTrial:
    """What PBT reads of a trial; hashable by identity, as Tune's trials are."""

    def __init__(self, trial_id: str, config: dict[str, Any]) -> None:
        self.trial_id, self.config, self.experiment_tag = trial_id, config, trial_id
        self.evaluated_params: dict[str, Any] = {}
        self.status = Trial.PENDING
        manager = SimpleNamespace(checkpoint_config=SimpleNamespace(num_to_keep=3))
        self.run_metadata = SimpleNamespace(checkpoint_manager=manager)

    def is_finished(self) -> bool:
        return self.status in (Trial.TERMINATED, Trial.ERROR)


def test_the_references_run_first_and_outside_the_population(tmp_path: Path) -> None:
    spec = load_spec(pbt_spec(tmp_path))
    paper = spec.paper_point()
    trials = [
        FakeTrial("searched1", {**paper, "lambda_l1": 20.0}),
        FakeTrial("paper", dict(paper)),
        FakeTrial("l1", {**paper, "gan_weight": 0.0}),
        FakeTrial("searched2", {**paper, "lambda_l1": 300.0}),
    ]
    controller = Controller(trials)
    scheduler = PopulationApart(spec, epochs=3)
    for trial in trials:
        scheduler.on_trial_add(controller, trial)
    assert [kind_of(t.config, spec) for t in trials] == ["searched", "paper", "l1_only", "searched"]
    assert scheduler.choose_trial_to_run(controller).trial_id == "paper"
    trials[1].status = Trial.RUNNING
    assert scheduler.choose_trial_to_run(controller).trial_id == "l1"
    trials[2].status = Trial.RUNNING
    assert scheduler.choose_trial_to_run(controller).trial_id in ("searched1", "searched2")
    # At a look at the population (every epoch here), a trial of the population makes way for the waiting
    # ones; a reference goes on.
    result = {"epoch": 1, "val_ssim": 0.9}
    assert scheduler.on_trial_result(controller, trials[2], result) == TrialScheduler.CONTINUE
    trials[0].status = Trial.RUNNING
    assert scheduler.on_trial_result(controller, trials[0], result) == TrialScheduler.PAUSE
    # and a trial's last epoch is no look: it just ends
    assert scheduler.on_trial_result(controller, trials[0], {"epoch": 3, "val_ssim": 0.9}) == TrialScheduler.CONTINUE
    # A perturbed value past the space's edge moves to the edge.
    moved = scheduler.within_space({**paper, "lambda_l1": 600.0, "dropout": -0.1})
    assert (moved["lambda_l1"], moved["dropout"]) == (500.0, 0.0)


def test_a_pbt_search_copies_trials_keeps_the_references_apart_and_resumes_after_a_kill(tmp_path: Path) -> None:
    """Killed with SIGKILL once the population has started, then resumed: the search ends with its
    5 trials, all finished. PBT's own log (pbt_global.txt, Ray's format) shows trials
    that continued another's checkpoint, never a reference; such a trial's checkpoint records its
    schedule, W&B charts its values, and the export's card shows the values of its last stretch."""
    command = search_command(tmp_path, "pbt", *PBT_FLAGS, "--wandb", "offline")
    env = search_env()
    experiment = tmp_path / "pbt"
    driver = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 240
    while len(result_lines(experiment)) < 4 and time.time() < deadline:  # the references and 2 of the population
        assert driver.poll() is None, "the search ended before it could be killed"
        time.sleep(0.3)
    driver.kill()
    driver.wait()
    resumed = subprocess.run([*command, "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    printed = " ".join(resumed.stdout.split())  # the console wraps long lines
    assert " continues: " in printed  # trials that had reported go on; the live table says so
    assert "population-based training: a look at the population every 1 epochs" in printed

    summary = json.loads((experiment / "summary.json").read_text())
    spec = load_spec(experiment / "spec.yaml")
    assert len(summary["trials"]) == 5 and {t["status"] for t in summary["trials"]} == {"finished"}
    references = {t["trial_id"] for t in summary["trials"] if kind_of(t["params"], spec) != "searched"}
    assert len(references) == 2
    # PBT's log names a trial by its experiment tag, "<launch number>_<values>", as its folder does
    folders = {f.name.split("_")[3]: f for f in experiment.glob("run_trial_*")}  # run_trial_<id>_<number>_...
    copies = [json.loads(line) for line in (experiment / "pbt_global.txt").read_text().splitlines()]
    assert copies, "no trial continued another's checkpoint"
    copied = {folders[tag.split("_")[0]].name.split("_")[2] for copy in copies for tag in copy[:2]}
    assert len(copied) >= 2 and not copied & references, (copied, references)
    for reference in references:
        assert len(summary_trial(summary, reference)["history"]) == PBT_EPOCHS, "a reference runs its course"
    folder = folders[copies[-1][0].split("_")[0]]  # the last trial that continued another's checkpoint
    assert not list(experiment.glob("run_trial_*/checkpoint_copy_*")), "retention removes the copies at the end"
    state = RunState.load(max(folder.glob("checkpoint_0*"), key=lambda p: p.name) / BEST_GENERATOR)
    own = state.schedule[-1]  # its own values, from the epoch after the copy; its best epoch is one of those
    assert len(state.schedule) >= 2 and 1 < own["epoch"] <= state.best_epoch
    trial_id = folder.name.split("_")[2]
    assert {k: own[k] for k in spec.space} == summary_trial(summary, trial_id)["params"]
    # W&B charts the values each epoch trained with: the copied trial's last epoch, its own
    history = [row for run in readable_runs(experiment) if run.name == trial_id for row in run.history]
    last_row = max(history, key=lambda row: row["epoch"])
    assert {k: last_row[f"values/{k}"] for k in spec.space} == summary_trial(summary, trial_id)["params"]
    card = json.loads((experiment / "best" / "model_card.json").read_text())
    if card.get("schedule"):  # the export continued another trial's checkpoint too
        assert {k: card["schedule"][-1][k] for k in card["hyperparameters"]} == card["hyperparameters"]


def test_a_copied_checkpoint_is_the_copying_trials_own(tmp_path: Path) -> None:
    """The copying trial may wait epochs for its turn, while the other trial's checkpoint is deleted
    (its checkpoint limit, or retention once it ends): it continues from a copy in its own folder,
    and only from its latest copy."""
    import pyarrow.fs

    donor = tmp_path / "run_trial_donor" / "checkpoint_000003"
    donor.mkdir(parents=True)
    (donor / "last.pt").write_bytes(b"state")
    folder = tmp_path / "run_trial_copier"
    fs = pyarrow.fs.LocalFileSystem()
    trial = SimpleNamespace(storage=SimpleNamespace(storage_filesystem=fs, trial_fs_path=str(folder)))
    first = own_copy(Checkpoint(str(donor), filesystem=fs), trial, "donor")
    (donor / "last.pt").write_bytes(b"later state")
    second = own_copy(Checkpoint(str(donor), filesystem=fs), trial, "other")
    shutil.rmtree(donor.parent)
    assert not Path(first.path).exists(), "an earlier copy goes with the next"
    assert Path(second.path).parent == folder and Path(second.path).name.startswith("checkpoint_copy_other_")
    assert (Path(second.path) / "last.pt").read_bytes() == b"later state"


def readable_runs(experiment: Path) -> list[OfflineRun]:
    """The W&B runs on disk, less one the killed driver had just begun (a folder with no log yet:
    the report lists such a run as unreadable)."""
    runs = []
    for run_dir in find_runs(experiment):
        try:
            runs.append(read_run(run_dir))
        except WandbLogError:
            pass
    return runs


def summary_trial(summary: dict[str, Any], trial_id: str) -> dict[str, Any]:
    return next(t for t in summary["trials"] if t["trial_id"] == trial_id)


def test_the_card_shows_the_values_each_stretch_of_epochs_trained_with() -> None:
    schedule = [{"epoch": 1, "lambda_l1": 100.0, "dropout": 0.5}, {"epoch": 4, "lambda_l1": 40.0, "dropout": 0.2}]
    card = {"epoch": 6, "hyperparameters": {"lambda_l1": 40.0, "dropout": 0.2}, "schedule": schedule}
    lines = hyperparameters_section(card)
    assert "| epochs | lambda_l1 | dropout |" in lines
    assert "| 1-3 | 100.0000 | 0.5000 |" in lines and "| 4-6 | 40.0000 | 0.2000 |" in lines
    assert not any("schedule" in line for line in hyperparameters_section({**card, "schedule": None}))
