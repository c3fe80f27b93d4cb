"""The fast path computes the same step as the fp32 reference, within stated tolerances.

Each test builds the reference step (fp32, NCHW, per-parameter Adam) and a fast variant from the
same initial weights, runs `trainer.loop.TrainStep` -- the step the loop runs -- on the same batch
and compares G's outputs and the weights after the update.

Tolerances (measured on tiny models, 32 px, ngf = ndf = 8, several seeds; the bounds leave about
2-4x headroom over the worst value seen):
- bf16 autocast + channels_last + fused Adam: G outputs within 0.05 (tanh range [-1, 1]; mean
  difference about 0.003); after one step every weight within 2.05 * lr of the reference. Adam's
  first update is about lr * sign(gradient), so a gradient near zero whose sign bf16 flips moves
  its weight by up to 2 * lr; the mean difference stays below 0.15 * lr.
- channels_last alone (fp32): outputs within 1e-5, weights within 1e-6 + 2.05 * lr on the few
  elements whose gradient is zero up to rounding (at most 0.1% of them).
- fused Adam vs the per-parameter loop: identical gradients give weights within 1e-6 after 5 steps.
"""

from __future__ import annotations

import copy

import pytest
import torch

import trainer.loop
from benchmarks import step as bench
from trainer.config import TrainConfig
from trainer.loop import (
    TrainStep,
    autocast_dtype,
    build_discriminator,
    build_generator,
    build_optimizer,
    compile_mode,
    cpu_has_bf16_units,
    generator_forward,
    use_channels_last,
)

SIZE, WIDTH, BATCH, CHANNELS = 32, 8, 4, 3
REFERENCE = dict(precision="fp32", channels_last="off", fused_adam=False, compile="off", log_every=1)
CPU = torch.device("cpu")


def make_cfg(**changes: object) -> TrainConfig:
    # dropout 0: the masks would be drawn differently for bf16 and fp32 activations
    return TrainConfig(
        size=SIZE, ngf=WIDTH, ndf=WIDTH, batch_size=BATCH, dropout=0.0, device="cpu", **{**REFERENCE, **changes}
    )


def make_pair(fast: TrainConfig, seed: int = 0) -> tuple[TrainStep, TrainStep]:
    """Reference and fast steps over identical initial weights."""
    ref_cfg = make_cfg()
    torch.manual_seed(seed)
    G = build_generator(ref_cfg.generator_config(CHANNELS, CHANNELS), CPU, channels_last=False)
    D = build_discriminator(ref_cfg, 2 * CHANNELS, CPU)
    steps = []
    for cfg in (ref_cfg, fast):
        g, d = copy.deepcopy(G), copy.deepcopy(D)
        if cfg.channels_last == "on":
            g, d = g.to(memory_format=torch.channels_last), d.to(memory_format=torch.channels_last)
        dtype = autocast_dtype(cfg.precision, CPU)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        steps.append(
            TrainStep(cfg, g, d, build_optimizer(g, cfg.lr_G, cfg), build_optimizer(d, cfg.lr_D, cfg), scaler, dtype)
        )
    return steps[0], steps[1]


def batch(seed: int, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(BATCH, CHANNELS, SIZE, SIZE, generator=g) * 2 - 1
    b = (a.flip(3) * 0.7 + 0.1 * torch.randn(a.shape, generator=g)).clamp(-1, 1)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return a.contiguous(memory_format=fmt), b.contiguous(memory_format=fmt)


def weight_differences(ref: TrainStep, fast: TrainStep) -> torch.Tensor:
    pairs = [*zip(ref.G.parameters(), fast.G.parameters()), *zip(ref.D.parameters(), fast.D.parameters())]
    return torch.cat([(p - q).abs().flatten() for p, q in pairs])


def run_one_step(ref: TrainStep, fast: TrainStep) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """G outputs (train mode, as the step sees them) of both, then one step of each on the same batch."""
    a, b = batch(1, channels_last=False)
    a_fast, b_fast = batch(1, channels_last=fast.cfg.channels_last == "on")
    with torch.no_grad():
        out_ref = generator_forward(ref.G, a, CPU, ref.amp_dtype)
        out_fast = generator_forward(fast.G, a_fast, CPU, fast.amp_dtype)
    losses_ref, losses_fast = ref(a, b), fast(a_fast, b_fast)
    assert torch.isfinite(losses_ref).all() and torch.isfinite(losses_fast).all()
    return (out_ref - out_fast).abs(), weight_differences(ref, fast), (losses_ref - losses_fast).abs()


@pytest.mark.skipif(not cpu_has_bf16_units(), reason="this CPU has no bf16 units: the fast path is fp32 here")
@pytest.mark.parametrize("seed", [0, 1])
def test_bf16_fast_path_matches_fp32_after_one_step(seed: int) -> None:
    fast_cfg = make_cfg(precision="bf16", channels_last="on", fused_adam=True, log_every=25)
    ref, fast = make_pair(fast_cfg, seed)
    assert fast.amp_dtype == torch.bfloat16
    outputs, weights, losses = run_one_step(ref, fast)
    lr = fast_cfg.lr_G
    assert outputs.max() < 0.05, f"G outputs differ by up to {outputs.max():.4f}"
    assert outputs.mean() < 0.01
    assert weights.max() <= 2.05 * lr, f"a weight moved {weights.max() / lr:.2f} lr away from fp32's"
    assert weights.mean() < 0.15 * lr, f"weights differ by {weights.mean() / lr:.3f} lr on average"
    assert losses[1] < 0.01 * ref(*batch(2, False))[1].abs() + 1e-3  # G_L1 (unscaled) agrees to ~1%


def test_channels_last_matches_nchw() -> None:
    ref, fast = make_pair(make_cfg(channels_last="on"))
    outputs, weights, _ = run_one_step(ref, fast)
    lr = ref.cfg.lr_G
    assert outputs.max() < 1e-5
    assert weights.max() <= 1e-6 + 2.05 * lr
    assert (weights > 1e-6).float().mean() <= 1e-3, "more than 0.1% of the weights took a different step"


def test_fused_adam_matches_per_parameter_adam() -> None:
    torch.manual_seed(0)
    G = build_generator(make_cfg().generator_config(CHANNELS, CHANNELS), CPU)
    g_ref, g_fused = copy.deepcopy(G), copy.deepcopy(G)
    opt_ref = build_optimizer(g_ref, 2e-4, make_cfg(fused_adam=False))
    opt_fused = build_optimizer(g_fused, 2e-4, make_cfg(fused_adam=True))
    assert opt_fused.defaults["fused"] and not opt_ref.defaults["foreach"]
    for step in range(5):
        gen = torch.Generator().manual_seed(step)
        for p, q in zip(g_ref.parameters(), g_fused.parameters()):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        opt_ref.step()
        opt_fused.step()
    for p, q in zip(g_ref.parameters(), g_fused.parameters()):
        torch.testing.assert_close(q, p, atol=1e-6, rtol=0)


def test_compile_auto() -> None:
    cfg = TrainConfig()
    assert cfg.compile == "auto"
    assert compile_mode(cfg, CPU, total_steps=10**6) == "off"  # CPU: measured not to pay (benchmarks.step)
    assert compile_mode(cfg, torch.device("cuda"), total_steps=20) == "off"  # a tiny run never repays the compile
    assert compile_mode(cfg.replace(compile="on"), CPU, total_steps=1) == "on"
    assert compile_mode(cfg.replace(compile="off"), torch.device("cuda"), total_steps=10**6) == "off"


@pytest.mark.parametrize("bf16_units", [True, False])
def test_channels_last_auto_follows_the_cpu_and_the_bench_marks_the_default_row(monkeypatch, bf16_units: bool) -> None:
    # An AVX2-only CPU (no bf16 units) is simulated: channels-last measured 0.88x there.
    monkeypatch.setattr(trainer.loop, "cpu_has_bf16_units", lambda: bf16_units)
    cfg = TrainConfig()
    assert use_channels_last(cfg, CPU) is bf16_units
    assert use_channels_last(cfg, torch.device("cuda"))
    assert use_channels_last(cfg.replace(channels_last="on"), CPU) and not use_channels_last(
        cfg.replace(channels_last="off"), torch.device("cuda")
    )
    rows = bench.row_configs(TrainConfig(device="cpu"), CPU)
    side_rows = [row.name for row in rows if "off by default here" in row.name]
    assert side_rows == ([] if bf16_units else ["+channels_last (off by default here)"])
    # The rows below the side row go on without channels-last, so one of them is the default.
    assert all((row.cfg.channels_last == "on") is bf16_units for row in rows[2:] if row.name not in side_rows)
    assert bench.default_row_name(rows, CPU) == "+no per-step sync"  # compile: auto stays off on CPU
