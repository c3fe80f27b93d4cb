"""Typed, validated configuration: the one place where every training default lives.

The field names are the project's vocabulary: the same spelling (`lambda_l1`, `dropout`, `lr_G`,
`lr_D`, ...) appears in search-space YAML, in Tune configs, in W&B and in model cards.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, get_args, get_type_hints

from trainer.errors import UserError, cut, shown

C = TypeVar("C")

LrPolicy = Literal["linear", "cosine", "plateau"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Device = Literal["auto", "cpu", "cuda"]
CompileMode = Literal["auto", "on", "off", "graphs"]
ChannelsLast = Literal["auto", "on", "off"]
IntensityMode = Literal["auto", "dtype", "percentile", "window", "minmax"]
SliceAxis = Literal["axial", "coronal", "sagittal", "all"]
Direction = Literal["AtoB", "BtoA"]

MIN_SIZE = 32  # the U-Net needs at least five 2x downsamplings
MAX_SIZE = 2048
MAX_WIDTH = 512  # ngf / ndf: 8x the reference 64 already makes a 3.5 billion parameter generator
IMAGE_CHANNELS = (1, 3)  # what trainer.data reads: grayscale or RGB (alpha dropped)
# The settings a run may change between two epochs when it continues from a checkpoint with `retune`
# (population-based training hands a trial another trial's checkpoint with new values): the loop
# reads each afresh at every step, or sets it on the optimizers and their lr schedules.
RETUNABLE = ("lambda_l1", "dropout", "lr_G", "lr_D", "beta1")


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@dataclass(frozen=True)
class GeneratorConfig:
    """Everything needed to rebuild a generator: stored in checkpoints and model cards."""

    in_channels: int
    out_channels: int
    size: int
    ngf: int = 64
    dropout: float = 0.5

    def __post_init__(self) -> None:
        for name in ("in_channels", "out_channels"):
            _check(getattr(self, name) in IMAGE_CHANNELS, name, f"must be 1 or 3 (got {getattr(self, name)})")
        _check_size(self.size)
        _check_width("ngf", self.ngf)
        _check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1) (got {self.dropout})")

    @classmethod
    def from_dict(cls, values: Any, source: str) -> GeneratorConfig:
        """Build from a file's generator_config (checkpoint, export): checked in full, so a crafted one
        is refused before a network is built from it."""
        return config_from_dict(cls, values, source, "generator_config key(s)")


def opt(default: Any, help: str, flag_type: Any = None, metavar: str | None = None) -> Any:  # noqa: A002 - argparse's word
    """A config field with its CLI help text, so the default and its meaning live in one place
    (trainer.cli.add_dataclass_flags makes the flag). `flag_type` parses the flag when the field's
    own type cannot (a duration given as 10m); the dataclass then validates the value."""
    return field(default=default, metadata={"help": help, "flag_type": flag_type, "metavar": metavar})


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Flat on purpose: a search space overrides any field by name."""

    # data
    data: str = opt(
        "builtin:glyphs",
        "a folder (A|B images, or A/ and B/ of images or NIfTI volumes) "
        "or builtin:glyphs|colorize|restore|phantom-mr2ct",
    )
    direction: Direction = opt("AtoB", "AtoB translates A into B, BtoA translates B into A")
    size: int = opt(256, "image side in pixels, a power of 2 (32-2048)")
    batch_size: int = opt(16, "images per training step")
    flip: bool = opt(True, "random horizontal flips (same for A and B) during training")
    jitter: bool = opt(False, "reference random jitter: resize to size*286/256, random crop back")
    split_seed: int = opt(0, "seed of the 70/15/15 split; fixed across a search so every trial sees the same split")
    max_train_images: int = opt(0, "use at most this many training pairs (volumes: slices) (0 = all)")

    # intensities: the data's units -> [-1, 1], saved with the model and inverted by predict
    intensity: IntensityMode = opt(
        "auto",
        "auto (percentile for volumes, dtype for image files), dtype (0..255 or 0..65535), percentile "
        "(0.5-99.5 of the training split), window (the window_* values), minmax (of the training split)",
    )
    window_low_a: float = opt(0.0, "intensity window: the A value mapped to -1 (e.g. -1000 for CT in HU)")
    window_high_a: float = opt(0.0, "intensity window: the A value mapped to +1; A without a window uses percentile")
    window_low_b: float = opt(0.0, "intensity window: the B value mapped to -1")
    window_high_b: float = opt(0.0, "intensity window: the B value mapped to +1; B without a window uses percentile")

    # volumes (NIfTI)
    slice_axis: SliceAxis = opt("axial", "volumes: slice plane (axial, coronal, sagittal, from the affine) or all")
    min_foreground: float = opt(0.1, "volumes: keep slices whose foreground covers at least this fraction")
    foreground_threshold: float = opt(
        0.1, "volumes without mask/: foreground = A above this fraction of its 0.5-99.5 percentile range"
    )

    # model
    ngf: int = opt(64, "generator width (filters in the first layer)")
    ndf: int = opt(64, "discriminator width")
    dropout: float = opt(0.5, "dropout in the three innermost decoder blocks (0 disables it)")

    # objective: G loss = gan_weight * adversarial + lambda_l1 * L1
    lambda_l1: float = opt(100.0, "weight of the L1 term in the generator loss")
    gan_weight: float = opt(1.0, "weight of the adversarial term; 0 = the L1-only baseline (no discriminator)")

    # optimisation
    init_generator: str = opt(
        "",
        "start G from the generator of this checkpoint (a run's best_generator.pt, best.pt or last.pt, on the "
        "same data, split, size and ngf), e.g. an L1-only run to fine-tune adversarially; D starts fresh",
    )
    epochs: int = opt(20, "training epochs")
    lr_G: float = opt(2e-4, "generator Adam learning rate")
    lr_D: float = opt(2e-4, "discriminator Adam learning rate")
    beta1: float = opt(0.5, "Adam beta1")
    beta2: float = opt(0.999, "Adam beta2")
    lr_policy: LrPolicy = opt(
        "linear", "linear (constant, then linear to 0), cosine, or plateau (halve on val SSIM plateau)"
    )
    lr_decay_start: float = opt(0.5, "linear policy: fraction of epochs at constant lr before the decay")
    plateau_patience: int = opt(3, "plateau policy: epochs without val SSIM gain before halving the lr")
    ema_decay: float = opt(
        0.0,
        "keep an exponential moving average of G's weights with this decay (e.g. 0.999; 0 = off); when on, "
        "validation scores it and export ships it (trainer.ema)",
    )

    # execution: each speed switch is its own knob so `benchmarks.step` can measure each gain
    seed: int = opt(0, "seed of weights, dropout, shuffling and augmentation")
    device: Device = opt("auto", "auto (CUDA if present, else CPU), cpu or cuda")
    precision: Precision = opt(
        "auto", "auto (bf16 where the hardware has bf16 units, fp16 on older GPUs), fp32, bf16, fp16"
    )
    channels_last: ChannelsLast = opt(
        "auto", "channels-last memory layout: on, off, or auto (on for CUDA and CPUs with bf16 units, off elsewhere)"
    )
    compile: CompileMode = opt(
        "auto",
        "torch.compile the networks: on, off, graphs (compiled and replayed as CUDA graphs), or auto (on a GPU "
        "the mode measured fastest for this GPU and setting, trainer.compile_choice; off on CPU and for runs "
        "under 500 steps)",
    )
    fused_adam: bool = opt(True, "fused Adam (one kernel) instead of the per-parameter loop")
    log_every: int = opt(25, "steps between reads of the losses (each read syncs the device)")

    # evaluation
    val_batch_size: int = opt(32, "images per evaluation batch")

    def __post_init__(self) -> None:
        _check(isinstance(self.data, str) and self.data != "", "data", "must name a folder or builtin:NAME")
        _check_size(self.size)
        for name in ("batch_size", "epochs", "log_every", "val_batch_size", "plateau_patience"):
            _check(getattr(self, name) >= 1, name, f"must be >= 1 (got {getattr(self, name)})")
        for name in ("ngf", "ndf"):
            _check_width(name, getattr(self, name))
        _check(self.max_train_images >= 0, "max_train_images", "must be >= 0 (0 means all)")
        _check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1) (got {self.dropout})")
        _check(self.lambda_l1 >= 0, "lambda_l1", f"must be >= 0 (got {self.lambda_l1})")
        _check(self.gan_weight >= 0, "gan_weight", f"must be >= 0 (got {self.gan_weight})")
        _check(self.lambda_l1 > 0 or self.gan_weight > 0, "lambda_l1", "and gan_weight cannot both be 0")
        for name in ("lr_G", "lr_D"):
            _check(0 < getattr(self, name) < 1, name, f"must be in (0, 1) (got {getattr(self, name)})")
        for name in ("beta1", "beta2"):
            _check(0 <= getattr(self, name) < 1, name, f"must be in [0, 1) (got {getattr(self, name)})")
        _check(0 <= self.ema_decay < 1, "ema_decay", f"must be in [0, 1) (got {self.ema_decay}); 0 turns the EMA off")
        _check(0 <= self.lr_decay_start <= 1, "lr_decay_start", "must be a fraction in [0, 1]")
        _check(
            0 <= self.min_foreground <= 1, "min_foreground", f"must be a fraction in [0, 1] (got {self.min_foreground})"
        )
        _check(
            0 <= self.foreground_threshold < 1,
            "foreground_threshold",
            f"must be a fraction in [0, 1) (got {self.foreground_threshold})",
        )
        if self.intensity == "window":
            windows = {"a": self.window_a, "b": self.window_b}
            _check(
                any(w != (0.0, 0.0) for w in windows.values()),
                "intensity",
                "window needs --window_low_a/--window_high_a or --window_low_b/--window_high_b "
                "(e.g. -1000 and 2000 HU)",
            )
            for side, (low, high) in windows.items():
                _check(
                    (low, high) == (0.0, 0.0) or high > low,
                    f"window_high_{side}",
                    f"must be above window_low_{side} (got {low} .. {high})",
                )
        for name, kind in (
            ("lr_policy", LrPolicy),
            ("precision", Precision),
            ("device", Device),
            ("compile", CompileMode),
            ("channels_last", ChannelsLast),
            ("intensity", IntensityMode),
            ("slice_axis", SliceAxis),
            ("direction", Direction),
        ):
            allowed = get_args(kind)
            _check(
                getattr(self, name) in allowed,
                name,
                f"must be one of {', '.join(allowed)} (got {shown(getattr(self, name))})",
            )

    @property
    def window_a(self) -> tuple[float, float]:
        return (self.window_low_a, self.window_high_a)

    @property
    def window_b(self) -> tuple[float, float]:
        return (self.window_low_b, self.window_high_b)

    @property
    def uses_gan(self) -> bool:
        return self.gan_weight > 0

    @property
    def uses_ema(self) -> bool:
        return self.ema_decay > 0

    def steps_per_epoch(self, train_images: int) -> int:
        """Training steps in one epoch: the last partial batch is dropped (BatchNorm needs batches)."""
        return max(1, train_images // self.batch_size)

    def epochs_to_see(self, images: int, train_images: int) -> int:
        """The fewest epochs in which training on `train_images` pairs sees at least `images` of them."""
        return max(1, math.ceil(images / (self.steps_per_epoch(train_images) * self.batch_size)))

    def generator_config(self, in_channels: int, out_channels: int) -> GeneratorConfig:
        return GeneratorConfig(in_channels, out_channels, self.size, self.ngf, self.dropout)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def retunable(self) -> dict[str, Any]:
        """The RETUNABLE settings' values."""
        return {name: getattr(self, name) for name in RETUNABLE}

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from loose key/values (YAML, Tune, checkpoints), rejecting unknown keys and bad types."""
        return config_from_dict(cls, values, source, "trainer parameter(s)")

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def trainer_parameter_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def config_from_dict(cls: type[C], values: Any, source: str, kind: str, key_prefix: str = "") -> C:
    """A config dataclass from loose key/values: not a mapping, unknown, missing and mistyped keys are
    one line naming `source` and the key (`key_prefix` + name, as the file spells it:
    search.num_samples); then the dataclass checks the values."""
    if not isinstance(values, dict):
        raise UserError(f"{source}: must be a mapping of {kind} to values (got {type(values).__name__})")
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(map(str, set(values) - set(fields)))
    if unknown:
        named = cut(", ".join(key_prefix + name for name in unknown), 200)
        raise UserError(f"{source}: unknown {kind} {named}; allowed: {', '.join(fields)}")
    required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
    missing = [key_prefix + name for name in required if name not in values]
    if missing:
        raise UserError(f"{source}: {kind} {', '.join(missing)} missing")
    hints = get_type_hints(cls) if required else {}  # types required fields; the others go by their default
    types = {f.name: hints[f.name] if f.name in required else type(f.default) for f in dataclasses.fields(cls)}
    coerced = {n: _coerce(key_prefix + n, value, types[n], source) for n, value in values.items()}
    try:
        return cls(**coerced)
    except UserError as err:
        raise UserError(f"{source}: {err}") from None


def _coerce(name: str, value: Any, expected: type, source: str) -> Any:
    """YAML and Tune hand over ints for floats and numpy scalars: accept those, reject real type errors
    and floats that are not finite (YAML's .inf and .nan, a flag's inf)."""
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if ok and not math.isfinite(value):  # inf passes every `>= 0` check, then turns losses into NaN
            raise UserError(f"{source}: {name} must be a finite number (got {value})")
    else:
        ok = isinstance(value, expected)
    if not ok:
        kind = {bool: "true or false", int: "an integer", float: "a number"}.get(expected, "a string")
        raise UserError(f"{source}: {name} must be {kind} (got {shown(value)})")
    return expected(value)


def _check_size(size: int) -> None:
    _check(
        _is_power_of_two(size) and MIN_SIZE <= size <= MAX_SIZE,
        "size",
        f"must be a power of 2 between {MIN_SIZE} and {MAX_SIZE} (got {size}); the U-Net halves the image down to 1x1",
    )


def _check_width(name: str, width: int) -> None:
    _check(1 <= width <= MAX_WIDTH, name, f"must be between 1 and {MAX_WIDTH} (got {width})")


def _check(ok: bool, name: str, what: str) -> None:
    if not ok:
        raise UserError(f"{name} {what}")
