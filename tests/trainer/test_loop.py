"""The training loop on real data: it learns, it resumes exactly, and its checkpoints are complete."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from trainer.checkpoint import BEST, BEST_GENERATOR, LAST, RunState, load_torch, starting_generator
from trainer.config import GeneratorConfig, TrainConfig
from trainer.ema import GeneratorEma
from trainer.errors import TrainingDiverged, UserError
from trainer.loop import (
    LOSS_NAMES,
    build_scheduler,
    evaluate,
    identity_baseline,
    load_run_data,
    step_scheduler,
    train,
)

MakeConfig = Callable[..., TrainConfig]

# 420 real steps at 64 px: 6 epochs x 70 steps of 16 glyphs, small networks. The glyph task's identity
# baseline is strong (mostly white background), so G needs a high lr and D a low one to pass it this soon.
GLYPH_RUN = dict(
    size=64, batch_size=16, max_train_images=1120, epochs=6, ngf=16, ndf=16, lr_G=1e-3, lr_D=1e-4, dropout=0.0
)
# Measured on 2 CPU cores (val, 64 px, about 30 s): identity SSIM 0.891, trained best SSIM 0.908.
GLYPH_MARGIN = 0.01


@pytest.mark.slow  # trains for seconds (tests/conftest.py: tiers)
def test_training_on_glyphs_beats_the_identity_baseline(tiny_config: MakeConfig, tmp_path: Path) -> None:
    cfg = tiny_config(**GLYPH_RUN)
    results = list(train(cfg, tmp_path))
    identity = identity_baseline(load_run_data(cfg, tmp_path).splits["val"], torch.device("cpu"), prefix="val")
    assert results[-1].best_val_ssim > identity["val_ssim"] + GLYPH_MARGIN, (results[-1].best_val_ssim, identity)


@pytest.mark.slow  # trains for seconds (tests/conftest.py: tiers)
@pytest.mark.parametrize("ema_decay", [0.0, 0.999], ids=["plain", "ema"])
def test_resume_equals_uninterrupted(tiny_config: MakeConfig, tmp_path: Path, ema_decay: float) -> None:
    cfg = tiny_config(epochs=2, ema_decay=ema_decay)
    straight = list(train(cfg, tmp_path / "straight"))

    interrupted = train(cfg, tmp_path / "resumed")
    next(interrupted)  # epoch 1 is on disk
    interrupted.close()
    resumed = list(train(cfg, tmp_path / "resumed", resume=True))

    assert [r.epoch for r in resumed] == [2]
    one, two = load_torch(tmp_path / "straight" / LAST), load_torch(tmp_path / "resumed" / LAST)
    nets = ("G", "D", "G_ema") if ema_decay else ("G", "D")
    assert (one["G_ema"] is None) == (ema_decay == 0)
    for net in nets:
        assert one[net].keys() == two[net].keys()
        for name, tensor in one[net].items():
            assert torch.equal(tensor, two[net][name]), f"{net}.{name} differs after resuming"
    assert straight[-1].val == resumed[-1].val and straight[-1].losses == resumed[-1].losses


@pytest.mark.slow  # trains for seconds (tests/conftest.py: tiers)
def test_checkpoints_hold_everything_to_continue(tiny_config: MakeConfig, tmp_path: Path) -> None:
    cfg = tiny_config(epochs=2)
    results = list(train(cfg, tmp_path))
    last, best = load_torch(tmp_path / LAST), load_torch(tmp_path / BEST)  # weights_only=True
    assert last["config"] == cfg.to_dict()
    assert last["generator_config"] == {"in_channels": 1, "out_channels": 1, "size": 32, "ngf": 8, "dropout": 0.5}
    assert last["epoch"] == 2 and best["epoch"] == last["best_epoch"] == results[-1].best_epoch
    for key in ("G", "D", "opt_G", "opt_D", "sched_G", "sched_D"):
        assert isinstance(last[key], dict) and last[key], key
    assert "scaler" in last  # empty in fp32, where the gradient scaler is off
    assert last["opt_G"]["state"], "Adam moments are saved"
    assert set(last["rng"]) >= {"torch", "data"}
    assert [row["epoch"] for row in last["history"]] == [1, 2]
    assert last["history"] == [r.metrics() for r in results]
    assert last["best_val_ssim"] == max(row["val_ssim"] for row in last["history"])
    assert last["split_hash"] == load_run_data(cfg, tmp_path).split_hash


@pytest.mark.slow  # trains for seconds (tests/conftest.py: tiers)
def test_val_metrics_are_fp32_even_when_training_in_bf16(tiny_config: MakeConfig, tmp_path: Path) -> None:
    """The reported val SSIM is what an fp32 evaluation of the saved checkpoint gives, on any hardware."""
    cfg = tiny_config(precision="bf16", epochs=2)
    results = list(train(cfg, tmp_path))
    G = RunState.load(tmp_path / BEST).generator()
    best = next(r for r in results if r.epoch == results[-1].best_epoch)
    rescored = evaluate(G, load_run_data(cfg, tmp_path).splits["val"], cfg.val_batch_size, prefix="val")
    assert rescored == pytest.approx(best.val, abs=1e-6)


@pytest.mark.slow  # trains for seconds (tests/conftest.py: tiers)
def test_with_ema_validation_scores_the_average_and_exports_it(tiny_config: MakeConfig, tmp_path: Path) -> None:
    cfg = tiny_config(epochs=2, ema_decay=0.99)
    results = list(train(cfg, tmp_path))
    last, kept = load_torch(tmp_path / LAST), load_torch(tmp_path / BEST_GENERATOR)
    assert "G" not in kept and set(kept["G_ema"]) == set(last["G"]), "best_generator.pt holds the EMA alone"
    differs = [
        name for name, w in last["G_ema"].items() if w.is_floating_point() and not torch.equal(w, last["G"][name])
    ]
    assert differs, "the average is not the raw generator"
    G = RunState.load(tmp_path / BEST_GENERATOR).generator()
    best = next(r for r in results if r.epoch == results[-1].best_epoch)
    rescored = evaluate(G, load_run_data(cfg, tmp_path).splits["val"], cfg.val_batch_size, prefix="val")
    assert rescored == pytest.approx(best.val, abs=1e-6)


def test_ema_averages_parameters_and_copies_buffers() -> None:
    G = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = GeneratorEma(G, decay=0.5)
    start = [p.detach().clone() for p in G.parameters()]
    expected = [p.clone() for p in start]
    for step in range(3):
        with torch.no_grad():
            for p in G.parameters():
                p.add_(1.0)
        G(torch.randn(4, 2))  # moves BatchNorm's running statistics
        decay = min(0.5, (1 + step) / (10 + step))
        expected = [decay * e + (1 - decay) * (s + step + 1) for e, s in zip(expected, start)]
        ema.update(G)
    for got, want in zip(ema.module.parameters(), expected):
        assert torch.allclose(got, want)
    for got, want in zip(ema.module.buffers(), G.buffers()):
        assert torch.equal(got, want)


@pytest.mark.slow  # trains for seconds (tests/conftest.py: tiers)
def test_l1_only_trains_without_a_discriminator(tiny_config: MakeConfig, tmp_path: Path) -> None:
    results = list(train(tiny_config(epochs=2, gan_weight=0.0), tmp_path))
    assert [set(r.losses) for r in results] == [{"G_L1"}, {"G_L1"}]
    assert results[1].losses["G_L1"] < results[0].losses["G_L1"]
    state = load_torch(tmp_path / LAST)
    assert state["D"] is None and state["opt_D"] is None
    with_gan = next(train(tiny_config(), tmp_path / "gan"))
    assert set(with_gan.losses) == set(LOSS_NAMES)


@pytest.mark.slow  # trains for seconds (tests/conftest.py: tiers)
def test_init_generator_starts_g_from_another_runs_generator(tiny_config: MakeConfig, tmp_path: Path) -> None:
    """What a warm-started search trial does: fine-tune an L1-only run's best generator with a fresh D."""
    l1 = list(train(tiny_config(epochs=2, gan_weight=0.0), tmp_path / "l1"))
    start = tmp_path / "l1" / BEST_GENERATOR
    tuned = next(train(tiny_config(init_generator=str(start)), tmp_path / "tuned"))
    scratch = next(train(tiny_config(), tmp_path / "scratch"))
    assert set(tuned.losses) == set(LOSS_NAMES), "a fresh discriminator trains beside the loaded generator"
    assert tuned.val["val_ssim"] > max(scratch.val["val_ssim"], l1[0].val["val_ssim"])
    with pytest.raises(UserError, match=r"init_generator .*: its generator has ngf 8, this run's ngf 16"):
        next(train(tiny_config(init_generator=str(start), ngf=16), tmp_path / "wider"))
    gcfg = RunState.load(start).generator_config
    with pytest.raises(UserError, match="trained on another train/val/test split"):
        starting_generator(str(start), GeneratorConfig(**gcfg), "another split")


@pytest.mark.slow  # trains for seconds (tests/conftest.py: tiers)
def test_a_diverging_run_stops_with_training_diverged(tiny_config: MakeConfig, tmp_path: Path) -> None:
    # lambda_l1 = 1e300 is infinite in float32: the first backward pass poisons the weights.
    with pytest.raises(TrainingDiverged, match="NaN or infinite"):
        list(train(tiny_config(lambda_l1=1e300), tmp_path))


# ---------------------------------------------------------------------------------------------
# learning-rate schedules


def lrs(cfg: TrainConfig, val_ssims: list[float] | None = None) -> list[float]:
    """The lr in effect during each epoch, stepping the scheduler as the loop does."""
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=cfg.lr_G)
    scheduler = build_scheduler(optimizer, cfg)
    seen = []
    for epoch in range(cfg.epochs):
        seen.append(optimizer.param_groups[0]["lr"])
        step_scheduler(scheduler, val_ssims[epoch] if val_ssims else 0.0)
    return seen


def test_linear_schedule_is_constant_then_decays_linearly() -> None:
    got = lrs(TrainConfig(epochs=10, lr_G=1e-3, lr_policy="linear", lr_decay_start=0.5))
    # Reference: 1 - max(0, epoch + 1 - constant) / (decay + 1), with 5 constant and 5 decay epochs.
    expected = [1e-3] * 5 + [1e-3 * (1 - k / 6) for k in range(1, 6)]
    assert got == pytest.approx(expected)


def test_cosine_schedule_follows_half_a_cosine() -> None:
    got = lrs(TrainConfig(epochs=8, lr_G=1e-3, lr_policy="cosine"))
    assert got == pytest.approx([1e-3 * (1 + math.cos(math.pi * e / 8)) / 2 for e in range(8)])


def test_plateau_schedule_halves_after_patience_epochs_without_gain() -> None:
    cfg = TrainConfig(epochs=9, lr_G=1e-3, lr_policy="plateau", plateau_patience=2)
    improving_then_flat = [0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]
    got = lrs(cfg, improving_then_flat)
    # 0.3 is first seen in epoch 3; three epochs without a gain (> patience) halve the lr after epoch 6.
    assert got == pytest.approx([1e-3] * 6 + [5e-4] * 3)


@pytest.mark.slow  # seconds: a subprocess, a training or a W&B run (tests/conftest.py: tiers)
def test_the_loop_reports_the_scheduled_lr(tiny_config: MakeConfig, tmp_path: Path) -> None:
    results = list(train(tiny_config(epochs=2, max_train_images=16, lr_G=4e-4, lr_D=2e-4), tmp_path))
    # linear, 2 epochs: 1 constant epoch, then 1 - 1/2
    assert [r.lr_G for r in results] == pytest.approx([4e-4, 2e-4])
    assert [r.lr_D for r in results] == pytest.approx([2e-4, 1e-4])
