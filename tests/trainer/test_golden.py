"""Golden values: the losses of the first three fp32 training steps on fixed inputs.

A change anywhere in the step (networks, initialisation, loss weighting, optimizer, the order of
the D and G updates) moves these numbers; a change that should not alter training must leave them.
Recorded with torch 2.14.1 on CPU. fp32 convolutions differ in their last bits between CPU kinds
(oneDNN picks kernels per instruction set), hence the relative tolerance of 1e-4.
"""

from __future__ import annotations

import pytest
import torch

from trainer.config import TrainConfig
from trainer.loop import TrainStep, build_discriminator, build_generator, build_optimizer
from trainer.names import LOSS_NAMES

CFG = TrainConfig(
    size=32, ngf=8, ndf=8, batch_size=4, dropout=0.0, lambda_l1=100.0, lr_G=2e-4, lr_D=2e-4, seed=0, device="cpu",
    precision="fp32", channels_last="off", fused_adam=False, compile="off", log_every=1,
)  # fmt: skip
GOLDEN = [  # G_GAN, G_L1, D_real, D_fake per step
    [0.7962009, 0.5035469, 0.7370744, 0.649426],
    [0.7928764, 0.5043389, 0.7733382, 0.6492206],
    [0.7434623, 0.4963456, 0.7095762, 0.706719],
]


def three_step_losses() -> list[list[float]]:
    torch.manual_seed(CFG.seed)
    G = build_generator(CFG.generator_config(3, 3), torch.device("cpu"))
    D = build_discriminator(CFG, 6, torch.device("cpu"))
    step = TrainStep(
        CFG, G, D, build_optimizer(G, CFG.lr_G, CFG), build_optimizer(D, CFG.lr_D, CFG),
        torch.amp.GradScaler("cpu", enabled=False), amp_dtype=None,
    )  # fmt: skip
    inputs = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(3):
        a = torch.rand(CFG.batch_size, 3, CFG.size, CFG.size, generator=inputs) * 2 - 1
        b = torch.rand(CFG.batch_size, 3, CFG.size, CFG.size, generator=inputs) * 2 - 1
        losses.append(step(a, b).tolist())
    return losses


def test_the_first_three_fp32_steps_give_the_recorded_losses() -> None:
    assert len(LOSS_NAMES) == 4
    got = three_step_losses()
    for i, (row, expected) in enumerate(zip(got, GOLDEN)):
        assert row == pytest.approx(expected, rel=1e-4), f"step {i + 1}: {dict(zip(LOSS_NAMES, row))}"
