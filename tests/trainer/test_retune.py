"""A run that continues from a checkpoint with new values of the RETUNABLE settings (`retune`, what
population-based training does to a trial): it goes on from the checkpoint's state with the new
values, and its checkpoint records from which epoch each set held."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from trainer.checkpoint import LAST, RunState, load_torch, save_torch
from trainer.config import RETUNABLE, TrainConfig
from trainer.errors import UserError
from trainer.loop import train

MakeConfig = Callable[..., TrainConfig]
NEW_VALUES = {"lambda_l1": 40.0, "dropout": 0.2, "lr_G": 1e-3, "lr_D": 5e-5, "beta1": 0.8}


def two_epochs_then(cfg: TrainConfig, run_dir: Path, **changes: float) -> list:
    """Train epochs 1-2 of `cfg`, then continue to its end with `changes`, retuned."""
    first = train(cfg, run_dir)
    next(first), next(first)  # epochs 1 and 2 are on disk
    first.close()
    return list(train(dataclasses.replace(cfg, **changes), run_dir, resume=True, retune=True))


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_torch(run_dir / LAST)["G"]


@pytest.mark.slow  # trains for seconds (tests/conftest.py: tiers)
@pytest.mark.parametrize("lr_policy", ["linear", "cosine"])
def test_new_values_hold_from_the_next_epoch_and_the_schedule_records_them(
    tiny_config: MakeConfig, tmp_path: Path, lr_policy: str
) -> None:
    cfg = tiny_config(epochs=4, lr_policy=lr_policy, lr_decay_start=0.5)
    retuned = two_epochs_then(cfg, tmp_path / "retuned", **NEW_VALUES)
    assert [r.epoch for r in retuned] == [3, 4]
    # The lr schedule goes on where it stood, from the new base lrs: what a run that had them from the
    # start uses in epochs 3 and 4.
    fresh = list(train(dataclasses.replace(cfg, **NEW_VALUES), tmp_path / "fresh"))
    assert [r.lr_G for r in retuned] == pytest.approx([r.lr_G for r in fresh[2:]])
    assert [r.lr_D for r in retuned] == pytest.approx([r.lr_D for r in fresh[2:]])
    state = RunState.load(tmp_path / "retuned" / LAST)
    assert state.schedule == [
        {"epoch": 1, **{name: getattr(cfg, name) for name in RETUNABLE}},
        {"epoch": 3, **NEW_VALUES},
    ]
    assert {group["betas"][0] for group in state.opt_G["param_groups"] + state.opt_D["param_groups"]} == {0.8}
    assert state.generator_config["dropout"] == 0.2 and state.config["lambda_l1"] == 40.0
    # Its best epoch is one trained with the new values: the earlier best was another schedule's.
    assert state.best_epoch >= 3 and retuned[0].is_best


@pytest.mark.slow  # trains for seconds (tests/conftest.py: tiers)
def test_the_same_values_continue_exactly_and_each_new_one_changes_the_training(
    tiny_config: MakeConfig, tmp_path: Path
) -> None:
    cfg = tiny_config(epochs=3, dropout=0.5)
    plain = train(cfg, tmp_path / "plain")
    next(plain), next(plain)
    plain.close()
    list(train(cfg, tmp_path / "plain", resume=True))
    two_epochs_then(cfg, tmp_path / "same")  # retune with nothing changed: the plain resume, bit for bit
    for name, tensor in weights(tmp_path / "plain").items():
        assert torch.equal(tensor, weights(tmp_path / "same")[name]), name
    assert len(RunState.load(tmp_path / "same" / LAST).schedule) == 1
    for name in ("lambda_l1", "dropout", "lr_G", "beta1"):  # lr_D reaches G only through D
        two_epochs_then(cfg, tmp_path / name, **{name: NEW_VALUES[name]})
        changed = weights(tmp_path / name)
        assert any(not torch.equal(t, changed[k]) for k, t in weights(tmp_path / "plain").items()), name


def test_settings_outside_retunable_are_still_refused(tiny_config: MakeConfig, tmp_path: Path) -> None:
    cfg = tiny_config(epochs=2)
    list(train(dataclasses.replace(cfg, epochs=1), tmp_path))
    with pytest.raises(UserError, match="ndf 8 -> 16"):
        list(train(dataclasses.replace(cfg, ndf=16, lr_G=1e-3), tmp_path, resume=True, retune=True))
    with pytest.raises(UserError, match="lr_G"):  # without retune, as before
        list(train(dataclasses.replace(cfg, lr_G=1e-3), tmp_path, resume=True))


def test_a_checkpoint_from_before_the_schedule_existed_loads_with_none(tiny_config: MakeConfig, tmp_path: Path) -> None:
    list(train(tiny_config(), tmp_path))
    old = {k: v for k, v in load_torch(tmp_path / LAST).items() if k != "schedule"}
    save_torch(tmp_path / "old.pt", old)
    assert RunState.load(tmp_path / "old.pt").schedule == []
