"""K trials trained in one process with their networks fused (HFTA: Wang et al., MLSys 2021).

One launch-bound step per trial becomes one step of K times the work: trial k's convolutions are
group k of grouped convolutions (groups = K), its activations channels [k*C, (k+1)*C) of tensors
of K*C channels, and its BatchNorm channels the same slice of one BatchNorm over K*C channels
(per-channel statistics, so that is exactly K separate BatchNorms). The skip and pair
concatenations interleave per trial. What each trial keeps as its own:

- hyperparameters: lambda_l1, gan_weight, lr_G, lr_D, betas, the lr schedule, dropout, seed,
  epochs (FusedTrials.PER_TRIAL); everything else must be equal in a pack (it shapes the networks,
  the data or the step);
- weights: the fused parameters own the memory, and each trial has `nn.Parameter` views of its
  slices, so its optimizer is the plain run's `torch.optim.Adam` over those views (Adam is
  elementwise: per-trial learning rates, betas and moments need nothing else), with its own
  scheduler and GradScaler. Gradients reach the views as slices of the fused gradients (no copy);
- initial weights and data: trial k's networks are built by the plain builders after
  `torch.manual_seed(seed_k)` and its batches come from its own data generator, so with dropout 0
  a fused trial follows its separate run to float rounding (tests/test_fused.py);
- dropout: masks from the trial's own generator, so a trial trains the same whichever trials share
  its pack. (A separate run draws its masks from the process-wide generator instead, so with
  dropout > 0 a fused trial is an equally distributed run, not the same masks.)

`FusedTrials.trial_state(k)` and `generator(k)` give trial k's networks and optimizer states in a
plain run's formats (trainer.checkpoint.RunState fields), so checkpoints and exports stay per trial.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainer.compile_choice import compile_options, resolve_compile
from trainer.config import TrainConfig
from trainer.errors import UserError
from trainer.loop import (
    autocast,
    autocast_dtype,
    build_discriminator,
    build_generator,
    build_optimizer,
    build_scheduler,
    set_requires_grad,
    use_channels_last,
)
from trainer.models import PatchDiscriminator, UNetBlock, UNetGenerator

# What may differ between the trials of one pack; every other TrainConfig field must be equal.
PER_TRIAL = (
    "lambda_l1",
    "gan_weight",
    "lr_G",
    "lr_D",
    "beta1",
    "beta2",
    "lr_policy",
    "lr_decay_start",
    "plateau_patience",
    "dropout",
    "seed",
    "epochs",
)
DROPOUT_SEED_OFFSET = 1_000_003  # a trial's dropout generator: seeded apart from its weights and data


def cat_per_trial(tensors: Sequence[torch.Tensor], trials: int) -> torch.Tensor:
    """torch.cat(dim=1) of each trial's channel slices: [x_0, y_0, x_1, y_1, ...] for x, y of K*C channels."""
    parts = [t.unflatten(1, (trials, -1)) for t in tensors]
    return torch.cat(parts, 2).flatten(1, 2)


class TrialDropout(nn.Module):
    """Dropout over K trials' channel slices: trial k drops with its own p, from its own generator."""

    def __init__(self, ps: Sequence[float], seeds: Sequence[int]) -> None:
        super().__init__()
        self.ps = list(ps)
        self.seeds = list(seeds)
        self.generators: list[torch.Generator] = []

    def generators_on(self, device: torch.device) -> list[torch.Generator]:
        if not self.generators or self.generators[0].device != device:
            self.generators = [torch.Generator(device).manual_seed(s + DROPOUT_SEED_OFFSET) for s in self.seeds]
        return self.generators

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        shape = (x.shape[0], x.shape[1] // len(self.ps), *x.shape[2:])
        masks = []
        for p, generator in zip(self.ps, self.generators_on(x.device)):
            keep = torch.empty(shape, device=x.device, dtype=x.dtype).bernoulli_(1 - p, generator=generator)
            masks.append(keep / (1 - p))
        return x * torch.cat(masks, 1)


class FusedUNetBlock(nn.Module):
    def __init__(self, model: nn.Sequential, outermost: bool, trials: int) -> None:
        super().__init__()
        self.model, self.outermost, self.trials = model, outermost, trials

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        return cat_per_trial([x, self.model(x)], self.trials)


class FusedGenerator(nn.Module):
    """K U-Nets as one: input and output hold the trials' channels one after the other."""

    def __init__(self, model: FusedUNetBlock) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class FusedDiscriminator(nn.Module):
    """K PatchGANs as one: logits of shape (batch, K, h, w)."""

    def __init__(self, model: nn.Sequential, trials: int) -> None:
        super().__init__()
        self.model, self.trials = model, trials

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.model(cat_per_trial([a, b], self.trials))


def fuse(modules: Sequence[nn.Module], seeds: Sequence[int]) -> nn.Module:
    """One module computing K equally shaped networks at once, their weights copied in: the same
    module tree and names, so a fused state_dict is the trials' state_dicts stacked along dim 0."""
    first, trials = modules[0], len(modules)
    if any(type(m) is not type(first) for m in modules):
        raise ValueError(f"cannot fuse {sorted({type(m).__name__ for m in modules})}")
    if isinstance(first, nn.ConvTranspose2d | nn.Conv2d):
        kind = type(first)
        fused = kind(
            first.in_channels * trials,
            first.out_channels * trials,
            first.kernel_size,
            stride=first.stride,
            padding=first.padding,
            bias=first.bias is not None,
            groups=first.groups * trials,
        )
    elif isinstance(first, nn.BatchNorm2d):
        fused = nn.BatchNorm2d(first.num_features * trials, eps=first.eps, momentum=first.momentum)
    elif isinstance(first, nn.Dropout):
        return TrialDropout([m.p for m in modules], seeds)
    elif isinstance(first, nn.ReLU | nn.LeakyReLU | nn.Tanh):
        return copy.deepcopy(first)
    elif isinstance(first, nn.Sequential):
        lengths = {len(m) for m in modules}
        if len(lengths) > 1:
            raise ValueError("cannot fuse networks of different depths")
        return nn.Sequential(*(fuse([m[i] for m in modules], seeds) for i in range(len(first))))
    elif isinstance(first, UNetBlock):
        return FusedUNetBlock(fuse([m.model for m in modules], seeds), first.outermost, trials)
    elif isinstance(first, UNetGenerator):
        return FusedGenerator(fuse([m.model for m in modules], seeds))
    elif isinstance(first, PatchDiscriminator):
        return FusedDiscriminator(fuse([m.model for m in modules], seeds), trials)
    else:
        raise ValueError(f"cannot fuse a {type(first).__name__}")
    with torch.no_grad():
        for name, tensor in fused.state_dict().items():
            parts = [m.state_dict()[name] for m in modules]
            tensor.copy_(parts[0] if tensor.dim() == 0 else torch.cat(parts))  # num_batches_tracked: equal
    return fused.to(first.weight.device)


def trial_slice(tensor: torch.Tensor, k: int, trials: int) -> torch.Tensor:
    """Trial k's part of a fused tensor (a view): its dim-0 chunk; a scalar is shared."""
    return tensor if tensor.dim() == 0 else tensor.chunk(trials)[k]


def trial_views(module: nn.Module, k: int, trials: int) -> list[nn.Parameter]:
    """Trial k's parameters as leaves sharing the fused parameters' memory, in the plain module's order."""
    return [nn.Parameter(trial_slice(p.detach(), k, trials)) for p in module.parameters()]


def check_pack(cfgs: Sequence[TrainConfig]) -> None:
    """Trials fuse only when the networks, data and step are the same apart from PER_TRIAL."""
    if not cfgs:
        raise UserError("fused trials: a pack needs at least one trial config")
    first = cfgs[0].to_dict()
    for cfg in cfgs[1:]:
        for name, value in cfg.to_dict().items():
            if name not in PER_TRIAL and value != first[name]:
                raise UserError(
                    f"fused trials: {name} differs ({first[name]!r} and {value!r}); only "
                    f"{', '.join(PER_TRIAL)} may differ between trials packed on one device"
                )
    for name, on in (("gan_weight", lambda c: c.uses_gan), ("dropout", lambda c: c.dropout > 0)):
        if len({on(c) for c in cfgs}) > 1:
            raise UserError(f"fused trials: {name} must be 0 in all trials of a pack or in none")


def pack_mode(cfgs: Sequence[TrainConfig], device: torch.device, total_steps: int) -> str:
    """The step mode of a pack: `compile: auto` judges it by its whole work, K trials' batches."""
    cfg = cfgs[0]
    return resolve_compile(cfg.compile, device, cfg.size, cfg.batch_size * len(cfgs), cfg.ngf, total_steps)


@dataclass
class TrialState:
    """Trial k's networks and optimisation state, in the plain run's formats (trainer.checkpoint.RunState)."""

    G: dict[str, torch.Tensor]
    D: dict[str, torch.Tensor] | None
    opt_G: dict[str, Any]
    opt_D: dict[str, Any] | None
    sched_G: dict[str, Any]
    sched_D: dict[str, Any] | None
    scaler: dict[str, Any]
    dropout_rng: list[torch.Tensor]  # its dropout generators' states, one per dropout layer


class FusedTrials:
    """K trials' networks fused into one G and one D, trained by one step.

    `build` makes it from K configs; `step(a, b)` trains every trial one step on its own batch and
    returns the losses as (K, 4): G_GAN, G_L1 (unscaled), D_real, D_fake, one row per trial, on the
    device without a sync; `trial_state(k)` / `load_trial(k, state)` / `generator(k)` move a trial's
    state in and out in the plain run's formats.
    """

    def __init__(self, cfgs: Sequence[TrainConfig], G: FusedGenerator, D: FusedDiscriminator | None, mode: str):
        self.cfgs, self.G, self.D, self.trials = list(cfgs), G, D, len(cfgs)
        shared = self.cfgs[0]
        self.device = next(G.parameters()).device
        self.amp_dtype = autocast_dtype(shared.precision, self.device)
        self.channels_last = use_channels_last(shared, self.device)
        self.views_G = [trial_views(G, k, self.trials) for k in range(self.trials)]
        self.opt_G = [build_optimizer(v, c.lr_G, c) for v, c in zip(self.views_G, cfgs)]
        self.sched_G = [build_scheduler(o, c) for o, c in zip(self.opt_G, cfgs)]
        self.views_D = [trial_views(D, k, self.trials) for k in range(self.trials)] if D is not None else []
        self.opt_D = [build_optimizer(v, c.lr_D, c) for v, c in zip(self.views_D, cfgs)]
        self.sched_D = [build_scheduler(o, c) for o, c in zip(self.opt_D, cfgs)]
        fp16 = self.amp_dtype == torch.float16
        self.scalers = [torch.amp.GradScaler(self.device.type, enabled=fp16) for _ in cfgs]
        self.gan_weight = torch.tensor([c.gan_weight for c in cfgs], device=self.device)
        self.lambda_l1 = torch.tensor([c.lambda_l1 for c in cfgs], device=self.device)
        # BatchNorm's num_batches_tracked is one counter for the pack (momentum is set, so it is only
        # recorded, never used); a trial loaded from elsewhere keeps its own count as an offset.
        self.counter_offsets: list[dict[str, int]] = [{} for _ in cfgs]
        self.graphs = mode == "graphs"
        compiled = mode != "off"
        self.G_fwd = torch.compile(G, **compile_options(mode)) if compiled else G
        self.D_fwd = torch.compile(D, **compile_options(mode)) if compiled and D is not None else D

    @classmethod
    def build(
        cls, cfgs: Sequence[TrainConfig], in_channels: int, out_channels: int, device: torch.device, mode: str = "off"
    ) -> FusedTrials:
        """Each trial's networks as its plain run builds them (same seed, same init), then fused."""
        check_pack(cfgs)
        channels_last = use_channels_last(cfgs[0], device)
        Gs, Ds = [], []
        for cfg in cfgs:
            torch.manual_seed(cfg.seed)
            Gs.append(build_generator(cfg.generator_config(in_channels, out_channels), device, channels_last))
            if cfg.uses_gan:
                Ds.append(build_discriminator(cfg, in_channels + out_channels, device))
        seeds = [c.seed for c in cfgs]
        layout = torch.channels_last if channels_last else torch.preserve_format
        G = fuse(Gs, seeds).to(memory_format=layout)
        D = fuse(Ds, seeds).to(memory_format=layout) if Ds else None
        return cls(cfgs, G, D, mode)

    # --- the step -----------------------------------------------------------------------------

    def pack(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """The trials' batches (each batch, C, H, W) -> one (batch, K*C, H, W) in the step's layout."""
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        return torch.cat(list(tensors), 1).contiguous(memory_format=layout)

    def _scaled_sum(self, losses: torch.Tensor) -> torch.Tensor:
        """Sum of the trials' losses, each scaled by its own GradScaler (a no-op outside fp16): trial k's
        gradients are those of its own loss, as the other terms do not depend on its weights."""
        if not self.scalers[0].is_enabled():
            return losses.sum()
        return torch.stack([s.scale(loss) for s, loss in zip(self.scalers, losses)]).sum()

    @staticmethod
    def _expose_grads(module: nn.Module, views: list[list[nn.Parameter]]) -> None:
        """Each trial's view parameters get their slice of the fused gradients (views, no copy)."""
        trials = len(views)
        for i, p in enumerate(module.parameters()):
            for k in range(trials):
                views[k][i].grad = None if p.grad is None else trial_slice(p.grad, k, trials)

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """One step of every trial on packed batches (see `pack`); returns (K, 4) losses."""
        trials, device = self.trials, self.device
        if self.graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with autocast(device, self.amp_dtype):
            fake = self.G_fwd(a)
        zero = torch.zeros(trials, device=device)
        g_gan = d_real = d_fake = zero
        if self.D is not None:
            set_requires_grad(self.D, True)
            with autocast(device, self.amp_dtype):  # the BCE too: autocast runs it in fp32, as in the plain step
                d_real = per_trial_bce(self.D_fwd(a, b), 1.0)
                d_fake = per_trial_bce(self.D_fwd(a, fake.detach()), 0.0)
            for p in self.D.parameters():
                p.grad = None
            self._scaled_sum(0.5 * (d_real + d_fake)).backward()
            self._expose_grads(self.D, self.views_D)
            for scaler, opt in zip(self.scalers, self.opt_D):
                scaler.step(opt)
                opt.zero_grad(set_to_none=True)
            set_requires_grad(self.D, False)
            with autocast(device, self.amp_dtype):
                g_gan = per_trial_bce(self.D_fwd(a, fake), 1.0)
        g_l1 = (fake.float() - b).abs().unflatten(1, (trials, -1)).mean((0, 2, 3, 4))
        for p in self.G.parameters():
            p.grad = None
        self._scaled_sum(self.gan_weight * g_gan + self.lambda_l1 * g_l1).backward()
        self._expose_grads(self.G, self.views_G)
        for scaler, opt in zip(self.scalers, self.opt_G):
            scaler.step(opt)
            opt.zero_grad(set_to_none=True)
            scaler.update()
        return torch.stack([g_gan, g_l1, d_real, d_fake], 1).detach().float()

    # --- trials in and out ----------------------------------------------------------------------

    def _slices(self, module: nn.Module, k: int) -> dict[str, torch.Tensor]:
        """Trial k's state_dict of a fused module; BatchNorm's shared step counters as the trial counts them."""
        return {
            name: trial_slice(t, k, self.trials).clone() + self.counter_offsets[k].get(name, 0)
            for name, t in module.state_dict().items()
        }

    def _dropouts(self) -> list[TrialDropout]:
        return [m for m in self.G.modules() if isinstance(m, TrialDropout)]

    def trial_state(self, k: int) -> TrialState:
        """Trial k's state, copied out in the plain run's formats."""
        return TrialState(
            G=self._slices(self.G, k),
            D=self._slices(self.D, k) if self.D is not None else None,
            opt_G=self.opt_G[k].state_dict(),
            opt_D=self.opt_D[k].state_dict() if self.D is not None else None,
            sched_G=self.sched_G[k].state_dict(),
            sched_D=self.sched_D[k].state_dict() if self.D is not None else None,
            scaler=self.scalers[k].state_dict(),
            dropout_rng=[m.generators_on(self.device)[k].get_state() for m in self._dropouts()],
        )

    def load_trial(self, k: int, state: TrialState) -> None:
        """Continue trial k from a state `trial_state` gave (of this or another pack)."""
        offsets = self.counter_offsets[k] = {}
        with torch.no_grad():
            for module, weights in ((self.G, state.G), (self.D, state.D)):
                if module is not None:
                    for name, tensor in module.state_dict().items():
                        if tensor.dim():
                            trial_slice(tensor, k, self.trials).copy_(weights[name])
                        else:  # num_batches_tracked, one for the pack: keep the trial's own count beside it
                            offsets[name] = int(weights[name]) - int(tensor)
        self.opt_G[k].load_state_dict(state.opt_G)
        self.sched_G[k].load_state_dict(state.sched_G)
        if self.D is not None:
            self.opt_D[k].load_state_dict(state.opt_D)
            self.sched_D[k].load_state_dict(state.sched_D)
        self.scalers[k].load_state_dict(state.scaler)
        for module, rng in zip(self._dropouts(), state.dropout_rng):
            module.generators_on(self.device)[k].set_state(rng)

    def generator(self, k: int) -> UNetGenerator:
        """Trial k's generator as a plain U-Net (fp32, contiguous, on the pack's device)."""
        convs = [m for m in self.G.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
        in_channels, out_channels = convs[0].in_channels // self.trials, convs[-1].out_channels // self.trials
        G = UNetGenerator(self.cfgs[k].generator_config(in_channels, out_channels))
        G.load_state_dict(self._slices(self.G, k))
        return G.to(self.device).train(self.G.training)


def per_trial_bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    """BCE-with-logits against a constant target, the mean over each trial's (batch, h, w): shape (K,)."""
    losses = F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target), reduction="none")
    return losses.mean((0, 2, 3))
