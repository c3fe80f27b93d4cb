"""An exponential moving average of the generator's weights (`ema_decay` > 0).

GAN training moves G's weights around a good solution rather than settling in it, so one epoch's
weights can score well and the next badly. The average of the recent weights is what validation
scores and what export ships when the EMA is on; the raw G keeps training as before.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

# The average starts as a copy of the freshly initialised G. A fixed decay of 0.999 would still give
# those random weights 70% of the average after 350 steps (a short CPU run), so early on the decay
# follows (1 + t) / (10 + t), which averages over roughly the last tenth of the steps taken, until
# it reaches ema_decay (0.999 after about 9,000 steps).
WARMUP = 10


def ema_decay_at(decay: float, updates: int) -> float:
    """The decay of update number `updates` (counted from 0)."""
    return min(decay, (1 + updates) / (WARMUP + updates))


class GeneratorEma:
    """A copy of G whose parameters follow G's by EMA; its buffers (BatchNorm's running statistics)
    are copied, not averaged: they describe the activations of the weights they sit beside."""

    def __init__(self, G: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(G).eval()
        self.module.requires_grad_(False)
        self._params = list(self.module.parameters())
        self._buffers = list(self.module.buffers())

    @torch.no_grad()
    def update(self, G: nn.Module) -> None:
        """After an optimizer step of G: ema += (1 - decay) * (G - ema), on the device, without a sync."""
        weight = 1.0 - ema_decay_at(self.decay, self.updates)
        torch._foreach_lerp_(self._params, [p.detach() for p in G.parameters()], weight)
        torch._foreach_copy_(self._buffers, list(G.buffers()))
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Any], updates: int) -> None:
        """Resume: the averaged weights and the number of updates already made (it sets the decay)."""
        self.module.load_state_dict(state)
        self.updates = updates
