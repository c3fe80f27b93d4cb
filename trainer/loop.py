"""The training loop: read `train` top to bottom.

`train(cfg, run_dir)` is a generator: it yields one EpochResult per epoch, after that epoch's
checkpoint is on disk, so a caller (the CLI, a Ray Tune trainable, a test) can report, log or stop
the run between epochs simply by not asking for the next one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainer.checkpoint import BEST, BEST_GENERATOR, LAST, RunState, starting_generator
from trainer.compile_choice import compile_options, resolve_compile
from trainer.config import RETUNABLE, GeneratorConfig, TrainConfig
from trainer.data import PairedData, PairedImages, augment, load_run_data
from trainer.ema import GeneratorEma
from trainer.errors import TrainingDiverged, UserError
from trainer.files import copy_atomic, remove_stale_temp_files
from trainer.metrics import per_image_metrics
from trainer.models import PatchDiscriminator, UNetGenerator, init_weights
from trainer.names import IDENTITY, LOSS_NAMES, MEAN_IMAGE, METRIC_NAMES

StepCallback = Callable[[int, int, int], None]  # (epoch, step within epoch, steps per epoch)


@dataclass
class EpochResult:
    epoch: int  # epochs completed, from 1
    losses: dict[str, float]  # G_GAN, G_L1 (unscaled), D_real, D_fake: means over the epoch
    val: dict[str, float]  # val_ssim, val_psnr, val_mae
    lr_G: float
    lr_D: float
    best_val_ssim: float
    best_epoch: int
    seconds: float
    images_per_s: float
    generator: nn.Module = dataclasses.field(repr=False)  # the live scored model (the EMA when on), e.g. for samples

    @property
    def is_best(self) -> bool:
        return self.best_epoch == self.epoch

    def metrics(self) -> dict[str, float | int]:
        """Flat name -> number, the names used everywhere downstream (Tune, W&B, reports)."""
        return {
            "epoch": self.epoch,
            **self.losses,
            **self.val,
            "lr_G": self.lr_G,
            "lr_D": self.lr_D,
            "best_val_ssim": self.best_val_ssim,
            "best_epoch": self.best_epoch,
            "epoch_seconds": self.seconds,
            "images_per_s": self.images_per_s,
        }


# ---------------------------------------------------------------------------------------------
# device and precision


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda was requested but no CUDA GPU is visible; use --device auto or cpu")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def cpu_has_bf16_units() -> bool:
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The mixed-precision dtype, or None for plain fp32. `auto` picks what the hardware runs fast."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_bf16_units() else None
    if precision == "fp16" and device.type != "cuda":
        raise UserError("precision fp16 needs a CUDA GPU; use bf16 or fp32 on CPU")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# building blocks


def use_channels_last(cfg: TrainConfig, device: torch.device) -> bool:
    """`channels_last: auto`: on where `benchmarks.step` measured it to pay, off where it lost.

    CUDA: cuDNN's tensor-core convolutions want NHWC. CPUs with bf16 units (AVX-512 bf16, AMX): 1.10x
    at 256 px in fp32 and the layout oneDNN's bf16 kernels use. AVX2-only CPUs: 0.88x (the reference
    step took 17.5 s, channels-last 19.9 s at 256 px, batch 16), so it stays off there.
    """
    if cfg.channels_last != "auto":
        return cfg.channels_last == "on"
    return device.type == "cuda" or cpu_has_bf16_units()


def memory_format(cfg: TrainConfig, device: torch.device) -> torch.memory_format:
    return torch.channels_last if use_channels_last(cfg, device) else torch.contiguous_format


def build_generator(gcfg: GeneratorConfig, device: torch.device, channels_last: bool = False) -> UNetGenerator:
    G = UNetGenerator(gcfg)
    init_weights(G)
    return G.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)


def build_discriminator(cfg: TrainConfig, channels: int, device: torch.device) -> PatchDiscriminator:
    D = PatchDiscriminator(channels, cfg.ndf)
    init_weights(D)
    return D.to(device, memory_format=torch.channels_last if use_channels_last(cfg, device) else torch.preserve_format)


def build_optimizer(params: nn.Module | Iterable[nn.Parameter], lr: float, cfg: TrainConfig) -> torch.optim.Adam:
    """Adam over a module's parameters (or a trial's parameter views, trainer.fused)."""
    if isinstance(params, nn.Module):
        params = params.parameters()
    # fused: one kernel for all parameters; otherwise the reference's per-parameter loop.
    kind = {"fused": True} if cfg.fused_adam else {"foreach": False}
    return torch.optim.Adam(params, lr=lr, betas=(cfg.beta1, cfg.beta2), **kind)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> Any:
    if cfg.lr_policy == "linear":
        # Reference schedule: constant, then linear decay towards 0 over the remaining epochs.
        constant = round(cfg.epochs * cfg.lr_decay_start)
        decay = cfg.epochs - constant

        def factor(epoch: int) -> float:
            return 1.0 - max(0, epoch + 1 - constant) / (decay + 1)

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if cfg.lr_policy == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=cfg.plateau_patience)


def retune_optimizer(optimizer: torch.optim.Optimizer, scheduler: Any, lr_ratio: float, cfg: TrainConfig) -> None:
    """Continue a restored optimizer with `cfg`'s beta1 and its lr schedule scaled by `lr_ratio` (the new
    base lr over the checkpoint's): where the schedule stands (its epoch, a plateau's count) is kept,
    and every lr it gives from now on is `lr_ratio` times what it would have given. Linear and cosine
    schedules are proportional to their base lr, the plateau one to the lr it started from."""
    for group in optimizer.param_groups:
        group["lr"] *= lr_ratio
        if "initial_lr" in group:  # set by every schedule at its start
            group["initial_lr"] *= lr_ratio
        group["betas"] = (cfg.beta1, cfg.beta2)
    if hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = [lr * lr_ratio for lr in scheduler.base_lrs]


def step_scheduler(scheduler: Any, val_ssim: float) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_ssim)
    else:
        scheduler.step()


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def generator_forward(
    G: nn.Module, images: torch.Tensor, device: torch.device, dtype: torch.dtype | None
) -> torch.Tensor:
    with autocast(device, dtype):
        return G(images).float()


@torch.no_grad()
def translate(G: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """G's outputs in eval mode (running BN statistics, no dropout) and fp32, on G's device.

    Never mixed precision: what a model is scored on and exports must not depend on the hardware."""
    was_training = G.training
    G.eval()
    device = next(G.parameters()).device
    outputs = generator_forward(G, inputs.to(device), device, None)
    G.train(was_training)
    return outputs


@torch.no_grad()
def split_metrics(
    images: PairedImages,
    output: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    device: torch.device,
    batch_size: int,
    prefix: str,
) -> dict[str, float]:
    """Mean SSIM / PSNR / MAE over a split of `output(a, b)` against the target b, a batch at a
    time: the one loop behind a model's scores and its baselines'."""
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in METRIC_NAMES}
    for start in range(0, len(images), batch_size):
        a, b = images.batch(torch.arange(start, min(start + batch_size, len(images))))
        b = b.to(device)
        for name, values in per_image_metrics(output(a, b), b).items():
            parts[name].append(values)
    return {f"{prefix}_{name}": torch.cat(values).mean().item() for name, values in parts.items()}


def evaluate(
    G: nn.Module,
    images: PairedImages,
    batch_size: int = 32,
    prefix: str = "val",
) -> dict[str, float]:
    """Mean SSIM / PSNR / MAE of G's fp32 outputs over a split (eval mode: running BN stats, no dropout)."""
    device = next(G.parameters()).device
    return split_metrics(images, lambda a, b: translate(G, a), device, batch_size, prefix)


def identity_baseline(
    images: PairedImages, device: torch.device, batch_size: int = 64, prefix: str = "test"
) -> dict[str, float]:
    """The metrics of output = input: what a model must beat to have learned anything."""
    return split_metrics(images, lambda a, b: a.to(device), device, batch_size, prefix)


@torch.no_grad()
def mean_image(images: PairedImages, batch_size: int = 256) -> torch.Tensor:
    """The mean target of a split in [-1, 1], (C, H, W): the mean-image baseline's one output."""
    total = torch.zeros(images.target_shape)
    for start in range(0, len(images), batch_size):
        _, b = images.batch(torch.arange(start, min(start + batch_size, len(images))))
        total += b.sum(0).cpu()
    return total / len(images)


def mean_image_baseline(
    train: PairedImages, images: PairedImages, device: torch.device, batch_size: int = 64, prefix: str = "test"
) -> dict[str, float]:
    """The metrics of output = the mean training target, whatever the input: the baseline where
    output = input means nothing (A and B in different units or channels)."""
    mean = mean_image(train).to(device)
    return split_metrics(images, lambda a, b: mean.expand_as(b), device, batch_size, prefix)


def baseline_metrics(data: PairedData, split: str, device: torch.device, batch_size: int) -> tuple[dict, str]:
    """The 2D baseline of a split: identity where A and B share units, else the mean image."""
    images = data.splits[split]
    if data.has_identity_baseline:
        return identity_baseline(images, device, batch_size, prefix=split), IDENTITY
    return mean_image_baseline(data.splits["train"], images, device, batch_size, prefix=split), MEAN_IMAGE


def rng_state(data_rng: torch.Generator) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "data": data_rng.get_state(),
    }


def restore_rng(state: dict[str, Any], data_rng: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    data_rng.set_state(state["data"])


def check_resumable(saved: dict[str, Any], cfg: TrainConfig, path: Path, may_differ: tuple[str, ...] = ()) -> None:
    differences = [
        f"{name} {saved[name]!r} -> {value!r}"
        for name, value in cfg.to_dict().items()
        if saved.get(name) != value and name not in may_differ
    ]
    if differences:
        raise UserError(
            f"{path}: was trained with other settings ({'; '.join(differences)}); "
            "resume with the same settings or choose a new output folder"
        )


# ---------------------------------------------------------------------------------------------
# one training step: the code the loop runs and `benchmarks.step` times


def training_batch(
    images: PairedImages, index: torch.Tensor, cfg: TrainConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integers on the device -> an augmented [-1, 1] batch in the step's memory layout."""
    a, b = images.batch(index)
    a, b = augment(a, b, cfg.size, cfg.flip, generator)
    layout = memory_format(cfg, a.device)
    return a.contiguous(memory_format=layout), b.contiguous(memory_format=layout)


def compile_mode(cfg: TrainConfig, device: torch.device, total_steps: int) -> str:
    """The step mode this run uses: off, on (torch.compile) or graphs (compiled CUDA graphs);
    `compile: auto` picks what measured fastest on this GPU model and setting (trainer.compile_choice)."""
    return resolve_compile(cfg.compile, device, cfg.size, cfg.batch_size, cfg.ngf, total_steps)


class TrainStep:
    """One Pix2Pix step on a batch: D on real vs generated pairs, then G on adversarial + L1.

    Calling it returns the step's losses (G_GAN, G_L1 unscaled, D_real, D_fake) as one detached
    float32 tensor on the device; nothing in here reads a value back to the host, so the caller
    decides how often to sync (the loop: once per log interval).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        G: nn.Module,
        D: nn.Module | None,
        opt_G: torch.optim.Optimizer,
        opt_D: torch.optim.Optimizer | None,
        scaler: torch.amp.GradScaler,
        amp_dtype: torch.dtype | None,
        mode: str = "off",
    ) -> None:
        self.cfg, self.G, self.D, self.opt_G, self.opt_D, self.scaler = cfg, G, D, opt_G, opt_D, scaler
        self.amp_dtype = amp_dtype
        self.device = next(G.parameters()).device
        self.graphs = mode == "graphs"
        # The compiled wrappers share the modules' parameters: checkpoints keep using G and D.
        compiled = mode != "off"
        self.G_fwd = torch.compile(G, **compile_options(mode)) if compiled else G
        self.D_fwd = torch.compile(D, **compile_options(mode)) if compiled and D is not None else D

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        cfg, D, scaler = self.cfg, self.D, self.scaler
        if self.graphs:  # a new step: the graphs may overwrite the previous step's outputs, all read by now
            torch.compiler.cudagraph_mark_step_begin()
        with autocast(self.device, self.amp_dtype):
            fake = self.G_fwd(a)
        zero = torch.zeros((), device=self.device)
        g_gan = d_real = d_fake = zero
        if D is not None:
            # D: real pairs -> 1, generated pairs -> 0 (G's output detached).
            set_requires_grad(D, True)
            with autocast(self.device, self.amp_dtype):
                real_logits = self.D_fwd(a, b)
                fake_logits = self.D_fwd(a, fake.detach())
                d_real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                d_fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
            self.opt_D.zero_grad(set_to_none=True)
            scaler.scale(0.5 * (d_real + d_fake)).backward()
            scaler.step(self.opt_D)
            # G's adversarial term: fool D, whose weights stay fixed for this step.
            set_requires_grad(D, False)
            with autocast(self.device, self.amp_dtype):
                logits = self.D_fwd(a, fake)
                g_gan = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        g_l1 = (fake.float() - b).abs().mean()
        self.opt_G.zero_grad(set_to_none=True)
        scaler.scale(cfg.gan_weight * g_gan + cfg.lambda_l1 * g_l1).backward()
        scaler.step(self.opt_G)
        scaler.update()
        return torch.stack([g_gan, g_l1, d_real, d_fake]).detach().float()


# ---------------------------------------------------------------------------------------------
# the loop


def train(
    cfg: TrainConfig,
    run_dir: Path,
    resume: bool = False,
    on_step: StepCallback | None = None,
    data: PairedData | None = None,
    best_full_state: bool = True,
    retune: bool = False,
) -> Iterator[EpochResult]:
    """Train Pix2Pix; yield one EpochResult per epoch after writing `last.pt`, and on a new best
    epoch `best_generator.pt` and (with `best_full_state`, for a run a person may continue or
    evaluate from its best epoch) `best.pt`.

    With `resume` and `retune`, the RETUNABLE settings of `cfg` may differ from the checkpoint's: the
    run continues from its state with the new values (population-based training), and the
    checkpoint's `schedule` records from which epoch each set of values held."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in (LAST, BEST, BEST_GENERATOR):  # left by a run killed mid-write: this run writes them anew
        remove_stale_temp_files(run_dir / name)
    device = pick_device(cfg.device)
    amp_dtype = autocast_dtype(cfg.precision, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels
    torch.manual_seed(cfg.seed)
    data_rng = torch.Generator().manual_seed(cfg.seed)

    # --- data: decoded once, kept on the device as integers ---
    if data is None:
        data = load_run_data(cfg, run_dir)
    train_set = data.splits["train"].to(device)
    val_set = data.splits["val"]
    steps_per_epoch = cfg.steps_per_epoch(len(train_set))

    # --- models, optimizers, schedulers ---
    gcfg = cfg.generator_config(data.in_channels, data.out_channels)
    G = build_generator(gcfg, device, use_channels_last(cfg, device))
    if cfg.init_generator:  # a resume overwrites it below with the run's own latest weights
        G.load_state_dict(starting_generator(cfg.init_generator, gcfg, data.split_hash))
    opt_G = build_optimizer(G, cfg.lr_G, cfg)
    sched_G = build_scheduler(opt_G, cfg)
    D = opt_D = sched_D = None
    if cfg.uses_gan:  # L1-only baseline: no discriminator at all
        D = build_discriminator(cfg, data.in_channels + data.out_channels, device)
        opt_D = build_optimizer(D, cfg.lr_D, cfg)
        sched_D = build_scheduler(opt_D, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    mode = compile_mode(cfg, device, total_steps=cfg.epochs * steps_per_epoch)
    train_step = TrainStep(cfg, G, D, opt_G, opt_D, scaler, amp_dtype, mode)
    ema = GeneratorEma(G, cfg.ema_decay) if cfg.uses_ema else None
    scored = ema.module if ema is not None else G  # what validation scores, best.pt is chosen by, export ships

    history: list[dict[str, float | int]] = []
    schedule = [{"epoch": 1, **cfg.retunable()}]
    best_val_ssim, best_epoch, start_epoch = -math.inf, 0, 0
    if resume and (run_dir / LAST).exists():
        state = RunState.load(run_dir / LAST)
        check_resumable(state.config, cfg, run_dir / LAST, RETUNABLE if retune else ())
        saved = TrainConfig.from_dict(state.config, source=str(run_dir / LAST))
        G.load_state_dict(state.G)
        opt_G.load_state_dict(state.opt_G)
        sched_G.load_state_dict(state.sched_G)
        retune_optimizer(opt_G, sched_G, cfg.lr_G / saved.lr_G, cfg)
        if D is not None:
            D.load_state_dict(state.D)
            opt_D.load_state_dict(state.opt_D)
            sched_D.load_state_dict(state.sched_D)
            retune_optimizer(opt_D, sched_D, cfg.lr_D / saved.lr_D, cfg)
        scaler.load_state_dict(state.scaler)
        restore_rng(state.rng, data_rng)
        history = state.history
        best_val_ssim, best_epoch, start_epoch = state.best_val_ssim, state.best_epoch, state.epoch
        schedule = state.schedule or [{"epoch": 1, **saved.retunable()}]
        if cfg.retunable() != saved.retunable():
            schedule = [*schedule, {"epoch": start_epoch + 1, **cfg.retunable()}]
            # The checkpoint's best epoch was trained with other values (another trial's, under PBT):
            # this run's best is among the epochs it trains with its own.
            best_val_ssim, best_epoch = -math.inf, 0
        if ema is not None:  # one update per step, every epoch the same number of steps
            ema.load_state_dict(state.G_ema, updates=start_epoch * steps_per_epoch)

    for epoch in range(start_epoch, cfg.epochs):
        G.train()
        started = time.perf_counter()
        order = torch.randperm(len(train_set), generator=data_rng)
        # Losses accumulate on the device and are read once per log interval: no sync per step.
        sums = torch.zeros(len(LOSS_NAMES), device=device)
        for step in range(steps_per_epoch):
            a, b = training_batch(train_set, order[step * cfg.batch_size : (step + 1) * cfg.batch_size], cfg, data_rng)
            sums += train_step(a, b)
            if ema is not None:
                ema.update(G)
            last_step = step == steps_per_epoch - 1
            if (step + 1) % cfg.log_every == 0 or last_step:
                if not torch.isfinite(sums).all():
                    raise TrainingDiverged(f"loss became NaN or infinite in epoch {epoch + 1}, step {step + 1}")
            if on_step is not None:
                on_step(epoch + 1, step + 1, steps_per_epoch)

        losses = dict(zip(LOSS_NAMES, (sums / steps_per_epoch).tolist()))  # reads the device: training is done
        train_seconds = time.perf_counter() - started
        if D is None:  # the L1-only baseline has no adversarial terms to report
            losses = {"G_L1": losses["G_L1"]}
        # In fp32 whatever the training precision: val SSIM picks the best checkpoint, drives early
        # stopping and reappears in the model card, scored again there.
        val = evaluate(scored, val_set, cfg.val_batch_size, prefix="val")
        lr_G, lr_D = opt_G.param_groups[0]["lr"], (opt_D.param_groups[0]["lr"] if opt_D else cfg.lr_D)
        step_scheduler(sched_G, val["val_ssim"])
        if sched_D is not None:
            step_scheduler(sched_D, val["val_ssim"])
        if val["val_ssim"] > best_val_ssim:
            best_val_ssim, best_epoch = val["val_ssim"], epoch + 1
        seconds = time.perf_counter() - started
        result = EpochResult(
            epoch=epoch + 1,
            losses=losses,
            val=val,
            lr_G=lr_G,
            lr_D=lr_D,
            best_val_ssim=best_val_ssim,
            best_epoch=best_epoch,
            seconds=seconds,
            images_per_s=steps_per_epoch * cfg.batch_size / train_seconds,  # training throughput, not validation
            generator=scored,
        )
        history.append(result.metrics())

        state = RunState(
            config=cfg.to_dict(),
            generator_config=dataclasses.asdict(gcfg),
            epoch=epoch + 1,
            history=history,
            best_val_ssim=best_val_ssim,
            best_epoch=best_epoch,
            split_hash=data.split_hash,
            data_source=data.source,
            intensity=data.intensity_record(),
            G=G.state_dict(),
            G_ema=ema.state_dict() if ema is not None else None,
            D=D.state_dict() if D is not None else None,
            opt_G=opt_G.state_dict(),
            opt_D=opt_D.state_dict() if opt_D is not None else None,
            sched_G=sched_G.state_dict(),
            sched_D=sched_D.state_dict() if sched_D is not None else None,
            scaler=scaler.state_dict(),
            rng=rng_state(data_rng),
            schedule=schedule,
        )
        state.save(run_dir / LAST)
        if result.is_best:
            if best_full_state:
                copy_atomic(run_dir / LAST, run_dir / BEST)
            state.save_generator_only(run_dir / BEST_GENERATOR)
        yield result
