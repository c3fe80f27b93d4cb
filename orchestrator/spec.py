"""The search specification: one YAML file, validated on load, overridden by CLI flags.

    train:   fixed trainer settings (any field of trainer.config.TrainConfig)
    search:  how to search (num_samples, concurrency, resources, early stopping, seed)
    space:   the searched parameters, each a distribution over a TrainConfig field

A spec that loads is a spec that runs: every mistake is reported here, naming the file and the key.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.resources
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml

from orchestrator.trials.plateau import PlateauRule
from trainer.config import RETUNABLE, TrainConfig, config_from_dict, opt, trainer_parameter_names
from trainer.errors import UserError, cut, shown
from trainer.files import write_atomic_text

SECTIONS = ("train", "search", "space")
SPACE_TYPES = ("float", "int", "categorical")
# YAML 1.1 reads `1e-5` (no dot) as a string; accept it as the number everyone means.
SCIENTIFIC = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


class SpecLoader(yaml.SafeLoader):
    """YAML as a spec needs it, with aliases limited: each alias stands for a copy of its anchor's
    values, so nine nested aliases of nine ("billion laughs", 345 bytes) make a document of 10^9
    values that every later step (checks, error messages) would walk. A spec is a few dozen values;
    the document may hold MAX_VALUES once its aliases are expanded, and is refused beyond that."""

    MAX_VALUES = 10_000

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._values = 0  # values the document holds so far, each alias counted as its expansion
        self._sizes: dict[int, int] = {}  # id(node) -> values under it (the nodes live while composing)

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = self.anchors.get(event.anchor)
            if node is not None:  # an undefined alias is the composer's own error
                self._count(self._size(node), event.start_mark)
            return super().compose_node(parent, index)
        node = super().compose_node(parent, index)
        self._count(1, node.start_mark)
        return node

    def _size(self, node: yaml.Node) -> int:
        if id(node) not in self._sizes:
            children = node.value if isinstance(node, yaml.SequenceNode) else ()
            if isinstance(node, yaml.MappingNode):
                children = [part for pair in node.value for part in pair]
            self._sizes[id(node)] = 1 + sum(self._size(child) for child in children)
        return self._sizes[id(node)]

    def _count(self, values: int, mark: Any) -> None:
        self._values += values
        if self._values > self.MAX_VALUES:
            raise yaml.composer.ComposerError(
                problem=f"aliases (*name) expand the file to more than {self.MAX_VALUES:,} values; "
                "write the values out instead",
                problem_mark=mark,
            )


SpecLoader.add_implicit_resolver("tag:yaml.org,2002:float", SCIENTIFIC, list("-+0123456789."))
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*$")
SECONDS_PER_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600}


def parse_duration(value: Any, where: str) -> float:
    """Seconds from 600, '600s', '10m' or '2h'; 0 means no budget."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    match = DURATION.match(str(value)) if isinstance(value, str) else None
    if match is None:
        raise UserError(f"{where} must be a duration such as 600, 90s, 10m or 2h (got {shown(value)})")
    return float(match.group(1)) * SECONDS_PER_UNIT[match.group(2)]


def format_duration(seconds: float | None) -> str:
    """Seconds for people, as the banner, summary and report show budgets and wall times: 24.3 s,
    9 min, 7 min 05 s, 1 h 30 min (a dash when unknown)."""
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s".replace(".0 s", " s")
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min" + (f" {secs:02d} s" if secs else "")
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h" + (f" {minutes:02d} min" if minutes else "")


# Trainer parameters a space may not hold, and why.
UNSEARCHABLE = {
    "epochs": "epochs cannot be searched: ASHA's rungs and the end reasons use one fixed number; set train.epochs "
    "to a number or to auto (ASHA already gives weak trials fewer epochs)",
    "init_generator": "init_generator cannot be searched: fix it in train, or let search.warm_start set it",
}
SPEC_FILE = "spec.yaml"  # the spec of a search, in its experiment folder
# What a resumed search may change (orchestrator.trials.limits applies them over the saved search);
# every other setting shapes the trials Tune saved, so a resume refuses to change it.
CHANGEABLE_ON_RESUME = ("search.num_samples", "search.max_concurrent")
AUTO_EPOCHS = "auto"  # train.epochs: enough epochs to see search.min_train_images training pairs


def epochs_flag(text: str) -> int | str:
    """--epochs of a search: a number of epochs, or auto."""
    if text == AUTO_EPOCHS:
        return AUTO_EPOCHS
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{shown(text)} is neither a number of epochs nor {AUTO_EPOCHS}") from None


# The paper's settings (Isola et al. 2017), which TrainConfig's defaults hold: every search runs them
# first (orchestrator.trials.references), so a space must include them.
# gan_weight too: a space that searches it (0 included reaches the L1-dominant region) must hold the
# paper's 1, or the "paper" trial would be some other weighting.
PAPER_PARAMETERS = ("lambda_l1", "dropout", "lr_G", "lr_D", "beta1", "gan_weight")
# The search specs ship inside the package (package data), so an installed copy has them wherever it
# runs; the repository's top-level search_spaces/ is a link to this folder. Read through
# importlib.resources: a pip install puts them in a real folder, hence a Path.
SHIPPED_SPECS = Path(str(importlib.resources.files("orchestrator") / "search_spaces"))
SHIPPED_PREFIX = "search_spaces"  # how the README, the Makefile and cluster.yaml name them
DEFAULT_SPEC = SHIPPED_SPECS / "default.yaml"


@dataclass(frozen=True)
class SearchSettings:
    """How the search runs. Each field is also a CLI flag of `orchestrator.search`."""

    num_samples: int = opt(8, "number of trials")
    max_concurrent: int = opt(2, "trials running at once")
    cpus_per_trial: float = opt(1.0, "CPUs reserved per trial (also its torch threads)")
    gpus_per_trial: float = opt(0.0, "GPUs per trial; fractions pack trials onto one GPU (0.5 = two per GPU)")
    grace_period: int = opt(2, "ASHA: epochs every trial gets before it can be stopped")
    grace_fraction: float = opt(
        0.0,
        "ASHA: when > 0, the grace period is this fraction of a trial's epochs (at least 1 epoch), in place of "
        "grace_period: a 39-epoch trial is not judged after the 2 epochs that suit an 8-epoch one",
    )
    reduction_factor: int = opt(2, "ASHA: keep the top 1/reduction_factor of trials at each rung")
    rank_references: bool = opt(
        True,
        "ASHA ranks the reference trials with the searched ones; false: the references run all their epochs "
        "(the plateau stop and the budget still end them) and their results set no rung's cut-off, so an "
        "L1-only reference that learns faster than any adversarial trial does not stop them all",
    )
    stop_patience: int = opt(3, "stop a trial after this many epochs without a val SSIM gain (0 = never)")
    plateau_window: int = opt(
        1,
        "plateau stop: judge the median val SSIM of a trial's last N epochs, not each epoch's own (1), so that "
        "one lucky epoch of a noisy GAN curve does not start the patience count",
    )
    rules_for_epochs: int = opt(
        8,
        "grace_period, stop_patience and plateau_window suit trials of this many epochs; with train.epochs: auto, "
        "trials of more epochs (a small training split) get all three scaled in proportion, so that many short, "
        "noisy epochs are not judged one by one (0 = never scale)",
    )
    image_every: int = opt(2, "epochs between sample-image panels in W&B and the study")
    max_failures: int = opt(2, "retries of a crashed trial, each from its last checkpoint")
    startup_trials: int = opt(3, "TPE: random trials before the model-based sampling starts")
    seed: int = opt(0, "seed of the Optuna sampler (trials share the trainer seed of the spec, for a fair comparison)")
    time_budget: float = opt(
        0.0,
        "wall time for the trials in seconds, or 90s, 10m, 2h; running trials end then and the best so far "
        "is exported (0 = none)",
        flag_type=str,
        metavar="DURATION",
    )
    keep_generators: int = opt(
        3, "ended trials that keep their best generator on disk (the best by val SSIM; the references keep theirs too)"
    )
    keep_full_state: bool = opt(
        False, "keep ended trials' full checkpoints (discriminator and optimizers too; 3-4x the disk)"
    )
    min_train_images: int = opt(
        6144,
        "with train.epochs: auto, each trial gets the fewest epochs in which it sees this many training pairs "
        "(never fewer than grace_period): 8 epochs of default.yaml's 768 glyphs, as many steps on any set",
    )
    l1_reference: bool = opt(
        True,
        "after the paper's settings, run them once without the discriminator (gan_weight 0): the L1-only "
        "reference, never exported; turn off where the search varies or fixes gan_weight itself",
    )

    warm_start: bool = opt(
        False,
        "searched trials fine-tune the L1-only reference's best generator (they wait for it to end) with a "
        "fresh discriminator, instead of starting from random weights; the references start from scratch and "
        "are kept out of ASHA's rungs, whatever rank_references says",
    )

    pbt: bool = opt(
        False,
        "population-based training (Ray Tune's PBT) in place of ASHA and the plateau stop: all trials are live at "
        "once and take turns on the CPUs or GPUs; every pbt_interval epochs a searched trial in the bottom quarter "
        "continues from the latest checkpoint of one in the top quarter, its values perturbed (x0.8 or x1.2, or "
        "drawn anew, within the space). The references run their course outside the population",
    )
    pbt_interval: int = opt(2, "pbt: epochs between two looks at the population (counted like grace_period)")

    @property
    def references_apart(self) -> bool:
        """Whether ASHA leaves the reference trials alone. Always with warm_start: every fine-tune starts
        from the L1-only reference's best generator, so ASHA must not stop it in its first epochs, and
        trials from random weights and from trained ones cannot share one rung's cut-off."""
        return self.warm_start or not self.rank_references

    def grace_epochs(self, epochs: int, scale: int = 1) -> int:
        """ASHA's grace period for trials of `epochs` epochs, `scale` epochs counting as one
        (SearchSpec.stop_scale)."""
        if self.grace_fraction > 0:
            return max(1, round(self.grace_fraction * epochs))
        return min(self.grace_period * scale, epochs)

    def __post_init__(self) -> None:
        for name in (
            "num_samples", "max_concurrent", "grace_period", "reduction_factor", "image_every", "keep_generators",
            "min_train_images", "plateau_window", "pbt_interval",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise UserError(f"search.{name} must be >= 1 (got {getattr(self, name)})")
        for name in ("stop_patience", "max_failures", "startup_trials", "time_budget", "rules_for_epochs"):
            if getattr(self, name) < 0:
                raise UserError(f"search.{name} must be >= 0 (got {getattr(self, name)})")
        if not 0 <= self.grace_fraction <= 1:
            raise UserError(f"search.grace_fraction must be between 0 and 1 (got {self.grace_fraction})")
        if self.reduction_factor < 2:
            raise UserError(f"search.reduction_factor must be >= 2 (got {self.reduction_factor})")
        if self.cpus_per_trial <= 0:
            raise UserError(f"search.cpus_per_trial must be > 0 (got {self.cpus_per_trial})")
        if self.gpus_per_trial < 0:
            raise UserError(f"search.gpus_per_trial must be >= 0 (got {self.gpus_per_trial})")


@dataclass(frozen=True)
class Param:
    """One searched parameter: float/int (low, high, log) or categorical (choices)."""

    name: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def distribution(self) -> optuna.distributions.BaseDistribution:
        if self.type == "float":
            return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log)
        if self.type == "int":
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log)
        return optuna.distributions.CategoricalDistribution(list(self.choices))

    def contains(self, value: Any) -> bool:
        if self.type == "categorical":
            return value in self.choices
        return self.low <= value <= self.high

    def nearest(self, value: Any) -> Any:
        """`value` where the space holds it, else the closest value it does (the first choice)."""
        if self.type == "categorical":
            return value if value in self.choices else self.choices[0]
        clipped = min(max(value, self.low), self.high)
        return int(clipped) if self.type == "int" else float(clipped)

    def describe(self) -> dict[str, Any]:
        if self.type == "categorical":
            return {"type": self.type, "choices": list(self.choices)}
        return {"type": self.type, "low": self.low, "high": self.high, "log": self.log}


@dataclass(frozen=True)
class SearchSpec:
    source: str
    train: dict[str, Any]  # train.epochs may be AUTO until `with_epochs_for` resolves it
    search: SearchSettings
    space: dict[str, Param] = field(default_factory=dict)
    auto_train_images: int | None = None  # epochs was auto and was resolved for this many training pairs

    @property
    def epochs_auto(self) -> bool:
        """train.epochs is auto and not resolved yet."""
        return self.train.get("epochs") == AUTO_EPOCHS

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        return {name: p.distribution() for name, p in self.space.items()}

    def paper_point(self) -> dict[str, Any]:
        """The first trial: every searched parameter at TrainConfig's default, the paper's setting (load_spec
        checks that the space includes those of PAPER_PARAMETERS; any other takes the nearest value its
        space allows)."""
        defaults = TrainConfig()
        return {name: p.nearest(getattr(defaults, name)) for name, p in self.space.items()}

    @property
    def runs_l1_reference(self) -> bool:
        """search.l1_reference, where the search does not vary or fix gan_weight itself."""
        fixed_gan = self.train.get("gan_weight", TrainConfig().gan_weight)
        return self.search.l1_reference and "gan_weight" not in self.space and fixed_gan > 0

    def fixed_settings(self) -> dict[str, Any]:
        """The fixed trainer settings, less an unresolved `epochs: auto` (it needs the data to become a number)."""
        return {k: v for k, v in self.train.items() if not (k == "epochs" and v == AUTO_EPOCHS)}

    def trial_config(self, params: dict[str, Any]) -> TrainConfig:
        if self.epochs_auto:
            raise RuntimeError(f"{self.source}: train.epochs is auto; resolve it (with_epochs_for) before trials")
        return TrainConfig.from_dict({**self.train, **params}, source=self.source)

    def to_dict(self) -> dict[str, Any]:
        """The spec as its YAML file holds it: load_spec reads this back to an equal spec."""
        return {
            "train": dict(self.train),
            "search": dataclasses.asdict(self.search),
            "space": {name: p.describe() for name, p in self.space.items()},
        }

    def differences(self, other: SearchSpec) -> list[str]:
        """Keys whose values differ, as section.key (train.epochs, search.num_samples, space.dropout)."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [
            f"{section}.{key}"
            for section in SECTIONS
            for key in sorted(set(mine[section]) | set(theirs[section]))
            if mine[section].get(key) != theirs[section].get(key)
        ]

    def with_epochs_for(self, train_images: int) -> SearchSpec:
        """`epochs: auto` made a number for a training split of `train_images` pairs: the fewest epochs
        that show a trial search.min_train_images pairs, and at least grace_period."""
        if not self.epochs_auto:
            return self
        cfg = TrainConfig.from_dict(self.fixed_settings(), source=self.source)
        epochs = max(self.search.grace_period, cfg.epochs_to_see(self.search.min_train_images, train_images))
        return dataclasses.replace(self, train={**self.train, "epochs": epochs}, auto_train_images=train_images)

    @property
    def stop_scale(self) -> int:
        """How many epochs count as one in the stopping rules (grace period, plateau patience and
        window): with epochs: auto, a trial's epochs over search.rules_for_epochs; 1 otherwise."""
        if self.auto_train_images is None or not self.search.rules_for_epochs:
            return 1
        return max(1, round(self.trial_config({}).epochs / self.search.rules_for_epochs))

    def plateau_rule(self) -> PlateauRule:
        if self.search.pbt:  # a trial that stalls is replaced by a better one's copy, not stopped
            return PlateauRule(0)
        scale = self.stop_scale
        return PlateauRule(self.search.stop_patience * scale, self.search.plateau_window * scale)

    @property
    def pbt_epochs(self) -> int:
        """Epochs between two looks of PBT at the population, counted like the grace period."""
        return self.search.pbt_interval * self.stop_scale

    def describe_epochs(self) -> str:
        """How long a full trial is, and why, and how trials are judged, in a few words (the start line
        and the summary)."""
        cfg = self.trial_config({})
        described = f"{cfg.epochs} epochs"
        if self.auto_train_images is not None:
            per_epoch = cfg.steps_per_epoch(self.auto_train_images) * cfg.batch_size
            described += (
                f" (auto: {per_epoch} of {self.auto_train_images} training pairs an epoch, "
                f"at least {self.search.min_train_images} a trial and {self.search.grace_period} epochs)"
            )
        if self.search.pbt:
            return described + f", population-based training: a look at the population every {self.pbt_epochs} epochs"
        scale = self.stop_scale
        if scale > 1:
            rule, grace = self.plateau_rule(), self.search.grace_epochs(cfg.epochs, scale)
            described += (
                f", judged in steps of {scale} epochs: grace {grace}, plateau patience {rule.patience}, "
                f"window {rule.window}"
            )
        return described

    def check_fixed_settings(self) -> None:
        """The fixed settings alone must form a valid config; epochs a number or auto."""
        epochs = self.train.get("epochs")
        if isinstance(epochs, str) and epochs != AUTO_EPOCHS:
            raise UserError(f"{self.source}: train.epochs must be an integer or {AUTO_EPOCHS} (got {shown(epochs)})")
        TrainConfig.from_dict(self.fixed_settings(), source=self.source)
        if self.search.warm_start and not self.runs_l1_reference:
            raise UserError(
                f"{self.source}: search.warm_start fine-tunes the L1-only reference, which this search does not run "
                "(search.l1_reference is false, or gan_weight is searched or 0); turn warm_start off or run it"
            )
        if self.search.pbt:
            self.check_population_based()
        if self.search.warm_start and self.train.get("init_generator"):
            raise UserError(
                f"{self.source}: train.init_generator and search.warm_start both say where G starts; keep one"
            )

    def check_population_based(self) -> None:
        """PBT changes the searched values while a trial trains: only the RETUNABLE settings can change."""
        fixed_only = [name for name in self.space if name not in RETUNABLE]
        if fixed_only:
            raise UserError(
                f"{self.source}: search.pbt changes the searched values while a trial trains, which "
                f"{', '.join(fixed_only)} cannot do (only {', '.join(RETUNABLE)} can); fix it in train or turn pbt off"
            )
        if self.search.warm_start:
            raise UserError(f"{self.source}: search.pbt and search.warm_start cannot be combined; keep one")

    def with_overrides(self, train: dict[str, Any], search: dict[str, Any]) -> SearchSpec:
        """CLI flags win over the file; the result is validated like the file was."""
        train = {**self.train, **{k: v for k, v in train.items() if v is not None}}
        search_values = {k: v for k, v in search.items() if v is not None}
        clash = sorted(set(train) & set(self.space))
        if clash:
            raise UserError(f"{self.source}: {', '.join(clash)} is searched in space and cannot also be fixed")
        settings = _settings(self.source, {**dataclasses.asdict(self.search), **search_values})
        # A resolved `epochs: auto` stays one, its stopping rules scaled, unless the epochs change.
        resolved_for = self.auto_train_images if train.get("epochs") == self.train.get("epochs") else None
        spec = SearchSpec(self.source, train, settings, self.space, auto_train_images=resolved_for)
        spec.check_fixed_settings()
        return spec


def save_spec(spec: SearchSpec, folder: Path) -> Path:
    """Keep the spec a search runs with in its experiment folder: --resume continues with it, and
    `--config <folder>/spec.yaml` repeats the search."""
    path = Path(folder) / SPEC_FILE
    write_atomic_text(path, yaml.safe_dump(spec.to_dict(), sort_keys=False))
    return path


def spec_file(path: Path) -> Path:
    """`path`, or the shipped spec that `search_spaces/NAME.yaml` names when no such file is here (an
    installed copy run outside the repository, as the README's commands write them)."""
    path = Path(path)
    shipped = SHIPPED_SPECS / path.name
    if not path.exists() and path.parent == Path(SHIPPED_PREFIX) and shipped.is_file():
        return shipped
    return path


def load_spec(path: Path) -> SearchSpec:
    source = str(path)
    path = spec_file(Path(path))
    if not path.is_file():
        shipped = ", ".join(sorted(f"{SHIPPED_PREFIX}/{p.name}" for p in SHIPPED_SPECS.glob("*.yaml")))
        raise UserError(f"{source}: search space file not found; give a YAML file or a shipped spec ({shipped})")
    try:
        raw = yaml.load(path.read_text(), Loader=SpecLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{source}: not valid YAML{where} ({getattr(err, 'problem', err)})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{source}: must be a mapping with the sections {', '.join(SECTIONS)}")
    unknown = sorted(map(str, set(raw) - set(SECTIONS)))
    if unknown:
        raise UserError(f"{source}: unknown section(s) {cut(', '.join(unknown))}; allowed: {', '.join(SECTIONS)}")
    train = _mapping(source, "train", raw.get("train"))
    search = _mapping(source, "search", raw.get("search"))
    space = {name: _param(source, name, value) for name, value in _mapping(source, "space", raw.get("space")).items()}
    clash = sorted(set(train) & set(space))
    if clash:
        raise UserError(f"{source}: {', '.join(clash)} appears in both train and space; fix it or search it, not both")
    spec = SearchSpec(source, train, _settings(source, search), space)
    spec.check_fixed_settings()
    defaults = TrainConfig()
    for name in (name for name in PAPER_PARAMETERS if name in space):
        value = getattr(defaults, name)
        if not space[name].contains(value):
            raise UserError(
                f"{source}: space.{name} excludes {value:g}, the paper's setting that every search runs first; "
                "widen the range to include it"
            )
    for p in space.values():  # every value the space can produce must be a valid trainer setting
        for probe in p.choices if p.type == "categorical" else (p.low, p.high):
            try:
                TrainConfig.from_dict({**spec.fixed_settings(), p.name: int(probe) if p.type == "int" else probe})
            except UserError as err:
                raise UserError(f"{source}: space.{p.name} allows a value the trainer rejects ({err})") from None
    return spec


def _mapping(source: str, key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{source}: {key} must be a mapping of name: value (got {type(value).__name__})")
    return value


def _settings(source: str, values: dict[str, Any]) -> SearchSettings:
    values = dict(values)
    if "time_budget" in values:
        values["time_budget"] = parse_duration(values["time_budget"], f"{source}: search.time_budget")
    return config_from_dict(SearchSettings, values, source, "key(s)", key_prefix="search.")


def _param(source: str, name: str, value: Any) -> Param:
    where = f"{source}: space.{cut(str(name))}"
    if name not in trainer_parameter_names():
        raise UserError(
            f"{where}: {cut(str(name))} is not a trainer parameter; allowed: {', '.join(trainer_parameter_names())}"
        )
    if name in UNSEARCHABLE:
        raise UserError(f"{where}: {UNSEARCHABLE[name]}")
    if not isinstance(value, dict):
        raise UserError(f"{where} must be a mapping such as {{type: float, low: 0.0, high: 0.6}}")
    kind = value.get("type")
    if kind not in SPACE_TYPES:
        raise UserError(f"{where}.type must be one of {', '.join(SPACE_TYPES)} (got {shown(kind)})")
    allowed = {"type", "choices"} if kind == "categorical" else {"type", "low", "high", "log"}
    unknown = cut(", ".join(sorted(map(str, set(value) - allowed))))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {unknown}; a {kind} parameter takes {', '.join(sorted(allowed))}")
    if kind == "categorical":
        choices = value.get("choices")
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{where}.choices must be a non-empty list")
        return Param(name, kind, choices=tuple(choices))
    bounds = {}
    for bound in ("low", "high"):
        number = value.get(bound)
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
            raise UserError(f"{where}.{bound} must be a number (got {shown(number)})")
        if kind == "int" and not float(number).is_integer():
            raise UserError(f"{where}.{bound} must be an integer for an int parameter (got {shown(number)})")
        bounds[bound] = number
    log = value.get("log", False)
    if not isinstance(log, bool):
        raise UserError(f"{where}.log must be true or false (got {shown(log)})")
    if bounds["low"] >= bounds["high"]:
        raise UserError(f"{where}: low must be < high (got low={bounds['low']}, high={bounds['high']})")
    if log and bounds["low"] <= 0:
        raise UserError(f"{where}: a log-scaled range needs low > 0 (got low={bounds['low']})")
    return Param(name, kind, float(bounds["low"]), float(bounds["high"]), log)
