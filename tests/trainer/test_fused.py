"""K fused trials (trainer.fused) train exactly as K separate runs of the plain step.

Dropout 0: a separate run draws its dropout masks from the process-wide generator and a fused trial
from its own (so that packing cannot change a trial), so with dropout the masks differ by design;
that case is covered by the packing-independence test instead.

Why two precisions: in float64 a fused trial equals its separate run to 1e-14 at any learning rate,
so the fusion is the same computation (checked at 1e-10). In fp32 a grouped convolution sums in
another order than K plain ones (rounding ~1e-7), and Adam divides the first moment by the root of
the second: where a weight's gradients cancel over the steps (a near-zero first moment), a
rounding-sized change is a large relative change of its step. Out of ~200,000 weights per trial, 1-2
moved by up to 3.7e-5 at lr 1.5e-4, all others agreed to 1e-6. So the fp32 check takes atol 1e-5 for
all but 1 in 10,000 weights of a tensor (none in tensors under 10,000), and Adam's own bound
(2 * lr per step) for those.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks import fused as bench_fused
from benchmarks.step import synthetic_images
from trainer.config import TrainConfig
from trainer.data import PairedImages
from trainer.errors import UserError
from trainer.fused import FusedTrials
from trainer.models import UNetGenerator

CPU = torch.device("cpu")
CHANNELS, STEPS = 3, 3
BASE = TrainConfig(
    size=32, ngf=8, ndf=8, batch_size=4, dropout=0.0, device="cpu", precision="fp32", channels_last="off",
    compile="off", log_every=1,
)  # fmt: skip
TRIALS = [  # different seeds (weights, batches), lambdas, learning rates, betas, schedules, GAN weights
    BASE.replace(seed=0, lambda_l1=100.0, lr_G=2e-4, lr_D=2e-4),
    BASE.replace(seed=1, lambda_l1=10.0, lr_G=1e-4, lr_D=5e-5, beta1=0.9),
    BASE.replace(seed=2, lambda_l1=50.0, lr_G=1.5e-4, lr_D=1e-4, gan_weight=0.5, lr_policy="cosine"),
]
WIDE_LRS = [  # the search space's range (search_spaces/default.yaml): float64 only, see above
    TRIALS[0].replace(lr_G=2e-3, lr_D=1e-3),
    TRIALS[1].replace(lr_G=1e-3, lr_D=1e-5),
    TRIALS[2].replace(lr_G=5e-4, lr_D=3e-4),
]


def images() -> PairedImages:
    return synthetic_images(12, BASE.size, CPU, seed=7)


def separate_run(cfg: TrainConfig, data: PairedImages) -> tuple[dict, dict, dict]:
    state = bench_fused.separate_run(cfg, data, STEPS, CPU)
    return state["G"], state["D"], state["opt_G"]


def fused_run(cfgs: list[TrainConfig], data: PairedImages, steps: int = STEPS) -> FusedTrials:
    return bench_fused.fused_run(cfgs, data, steps, CPU)


def assert_same(actual: dict, expected: dict, atol: float = 1e-5, step_bound: float | None = None) -> None:
    """All values within atol; with `step_bound` (fp32 weights, see above), 1 in 10,000 within it instead."""
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        if step_bound is None or not value.is_floating_point():
            torch.testing.assert_close(actual[name], value, atol=atol, rtol=0, msg=name)
            continue
        diff = (actual[name] - value).abs()
        assert (diff > atol).sum() <= value.numel() // 10_000, (name, diff.max().item())
        assert diff.max() <= step_bound, (name, diff.max().item())


@pytest.fixture(params=["float32", "float64"])
def precision(request):
    """(trial configs, atol) of the check; float64 networks and batches in the second."""
    if request.param == "float32":
        yield TRIALS, 1e-5
        return
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield WIDE_LRS, 1e-10
    finally:
        torch.set_default_dtype(previous)


def test_fused_trials_equal_separate_runs(precision) -> None:
    cfgs, atol = precision
    data = images()
    fused = fused_run(cfgs, data)
    for k, cfg in enumerate(cfgs):
        G, D, opt_G = separate_run(cfg, data)
        state = fused.trial_state(k)
        assert state.G[next(iter(G))].dtype == torch.get_default_dtype()
        fp32 = torch.get_default_dtype() == torch.float32
        assert_same(state.G, G, atol, 2 * cfg.lr_G * STEPS if fp32 else None)
        assert_same(state.D, D, atol, 2 * cfg.lr_D * STEPS if fp32 else None)
        assert state.opt_G["param_groups"] == opt_G["param_groups"]  # lr, betas, param order: the plain format
        for i, moments in opt_G["state"].items():
            assert_same(state.opt_G["state"][i], moments, atol)


def test_one_trial_comes_out_as_a_plain_generator() -> None:
    fused = fused_run(TRIALS, images(), steps=1)
    plain = UNetGenerator(TRIALS[1].generator_config(CHANNELS, CHANNELS))
    plain.load_state_dict(fused.trial_state(1).G)  # strict: same keys and shapes as a plain run's
    x = torch.rand(2, CHANNELS, BASE.size, BASE.size) * 2 - 1
    fused.G.eval()
    packed = fused.pack([x] * len(TRIALS))
    with torch.no_grad():
        expected = fused.G(packed).unflatten(1, (len(TRIALS), -1))[:, 1]
        torch.testing.assert_close(plain.eval()(x), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(fused.generator(1).eval()(x), expected, atol=1e-5, rtol=0)


def test_a_trial_trains_the_same_whichever_trials_share_its_pack() -> None:
    # With dropout on, each trial draws its masks from its own generator.
    data = images()
    cfgs = [cfg.replace(dropout=0.5) for cfg in TRIALS]
    alone = fused_run(cfgs[1:2], data)
    packed = fused_run(cfgs, data)
    assert_same(packed.trial_state(1).G, alone.trial_state(0).G, step_bound=2 * cfgs[1].lr_G * STEPS)


def test_a_trial_moves_between_packs() -> None:
    # Resume: trial 2's state (weights, moments, schedule) loaded into another pack continues it.
    data = images()
    source = fused_run(TRIALS, data, steps=2)
    target = FusedTrials.build(TRIALS[::-1], CHANNELS, CHANNELS, CPU)
    target.load_trial(0, source.trial_state(2))
    assert_same(target.trial_state(0).G, source.trial_state(2).G)
    assert target.trial_state(0).opt_G["state"][0]["step"] == 2


def test_only_per_trial_settings_may_differ() -> None:
    with pytest.raises(UserError, match="fused trials: ngf differs"):
        FusedTrials.build([BASE, BASE.replace(ngf=16)], CHANNELS, CHANNELS, CPU)
    with pytest.raises(UserError, match="gan_weight must be 0 in all trials of a pack or in none"):
        FusedTrials.build([BASE, BASE.replace(gan_weight=0.0)], CHANNELS, CHANNELS, CPU)
