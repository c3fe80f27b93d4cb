"""A training run's checkpoint, the one owner of its format: `RunState` is what last.pt, best.pt and
best_generator.pt hold. The training loop saves it; resume, evaluation, export and the search read
it through this class, never by key. Loading uses `weights_only=True`, so only tensors and plain
containers are ever unpickled, and a generator is rebuilt only after its config and weights were
checked against each other (a crafted file cannot make it allocate gigabytes first).
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainer.config import GeneratorConfig, TrainConfig
from trainer.data import PairedData, load_run_data
from trainer.errors import UserError, cut
from trainer.files import write_atomic_bytes
from trainer.memory import available_bytes, generator_bytes
from trainer.models import UNetGenerator

LAST = "last.pt"  # the latest epoch's full state: what --resume continues from
BEST = "best.pt"  # the best epoch's full state
BEST_GENERATOR = "best_generator.pt"  # the best epoch without D and optimizer state: what export and evaluation need
# What a checkpoint holds besides the summary fields: the networks and everything to continue training.
FULL_STATE = ("G", "G_ema", "D", "opt_G", "opt_D", "sched_G", "sched_D", "scaler", "rng")
# How the paragraphs of torch's refusal of a pickle start that say nothing about the file itself
TORCH_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation")
NetState = dict[str, Any]  # a state_dict, or an optimizer's, scheduler's or scaler's
# Fields that checkpoints written before they existed lack (RunState.load gives the default)
ADDED_LATER = ("schedule",)


@dataclass
class RunState:
    """One epoch of a run: the summary every reader needs, and the full state to continue from
    (None where the file does not hold it: best_generator.pt keeps only the scored generator)."""

    config: dict[str, Any]  # TrainConfig.to_dict()
    generator_config: dict[str, Any]
    epoch: int  # epochs completed
    history: list[dict[str, float | int]]  # EpochResult.metrics() of every epoch so far
    best_val_ssim: float
    best_epoch: int
    split_hash: str  # the train/val/test split the run was trained and scored on
    data_source: str
    intensity: dict[str, Any] | None  # how pixels or voxels became the network's values (trainer.data)
    G: NetState | None = None
    G_ema: NetState | None = None  # the moving average of G, when the run keeps one (ema_decay > 0)
    D: NetState | None = None  # None for the L1-only baseline
    opt_G: NetState | None = None
    opt_D: NetState | None = None
    sched_G: NetState | None = None
    sched_D: NetState | None = None
    scaler: NetState | None = None
    rng: dict[str, Any] | None = None
    # The RETUNABLE settings of each stretch of epochs: [{"epoch": its first epoch, "lambda_l1": ..., ...}];
    # one entry unless the run continued with new values (trainer.loop.train's `retune`). Empty in
    # checkpoints written before it existed: the config's values held for every epoch.
    schedule: list[dict[str, Any]] = field(default_factory=list)
    source: str = field(default="checkpoint", compare=False)  # the file it was read from, for messages; not saved

    @property
    def scored_weights(self) -> NetState:
        """The generator weights validation scored and export ships: the EMA when the run kept one."""
        return self.G_ema if self.G_ema is not None else self.G

    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.config, source=self.source)

    def generator(self) -> UNetGenerator:
        """The scored generator, rebuilt and checked, in eval mode on the CPU."""
        return checked_generator(self.generator_config, self.scored_weights, self.source)

    def load_data(self, run_dir: Path | None) -> PairedData:
        """The run's data and split (split.json in run_dir), refusing data that no longer gives the
        split this state was trained and scored on."""
        cfg = self.train_config()
        data = load_run_data(cfg, run_dir, save_split_file=False)  # reading a model writes nothing
        if data.split_hash != self.split_hash:
            raise UserError(
                f"{cfg.data}: gives a different train/val/test split (hash {data.split_hash}) than the one this "
                f"model was trained on ({self.split_hash}); keep split.json next to the checkpoint"
                f"{f' in {run_dir}' if run_dir else ''} and the data files unchanged"
            )
        return data

    def save(self, path: Path) -> None:
        """The whole state (last.pt, best.pt)."""
        save_torch(path, {name: getattr(self, name) for name in saved_fields()})

    def save_generator_only(self, path: Path) -> None:
        """The summary and the scored generator alone (best_generator.pt): a quarter of the bytes of the
        whole state or less, still enough for everything that only evaluates or exports."""
        summary = {name: getattr(self, name) for name in saved_fields() if name not in FULL_STATE}
        key = "G_ema" if self.G_ema is not None else "G"
        save_torch(path, {**summary, key: self.scored_weights})

    @classmethod
    def load(cls, path: Path) -> RunState:
        state = load_torch(Path(path))
        if not isinstance(state, dict):
            raise UserError(f"{path}: not a checkpoint of this trainer; use a run's last.pt or best.pt")
        names = saved_fields()
        missing = [n for n in names if n not in FULL_STATE and n not in ADDED_LATER and n not in state]
        if missing or (state.get("G") is None and state.get("G_ema") is None):
            what = repr(missing[0]) if missing else "generator weights"
            raise UserError(f"{path}: has no {what}; use a file this trainer wrote")
        values = {n: state.get(n) for n in names if n not in ADDED_LATER or state.get(n) is not None}
        return cls(**values, source=str(path))


def starting_generator(path: str, gcfg: GeneratorConfig, split_hash: str) -> NetState:
    """The scored generator weights of the checkpoint at `path` (TrainConfig.init_generator), for a
    run that builds `gcfg` on the split `split_hash`: refused in one line when the network differs in
    shape, or when the split does (the run's validation pairs would have been that run's training
    pairs, and its val SSIM would flatter it)."""
    state = RunState.load(Path(path))
    theirs = GeneratorConfig.from_dict(state.generator_config, f"{path}: generator_config")
    shape = ("in_channels", "out_channels", "size", "ngf")
    differ = [name for name in shape if getattr(theirs, name) != getattr(gcfg, name)]
    if differ:
        mine = ", ".join(f"{name} {getattr(gcfg, name)}" for name in differ)
        its = ", ".join(f"{name} {getattr(theirs, name)}" for name in differ)
        raise UserError(
            f"init_generator {path}: its generator has {its}, this run's {mine}; use a checkpoint of a run with "
            "the same settings"
        )
    if state.split_hash != split_hash:
        raise UserError(
            f"init_generator {path}: was trained on another train/val/test split (hash {state.split_hash}, this "
            f"run's {split_hash}); use a run on the same data and split_seed, or its val pairs would be trained on"
        )
    return state.generator().state_dict()  # the weights checked against their config first


def saved_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(RunState) if f.name != "source"]


def save_torch(path: Path, obj: Any) -> None:
    """Serialized in memory first: torch's own file writer aborts the process when the disk fills
    (a C++ error thrown in a destructor), where Python's write raises OSError, which we can report."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic_bytes(path, buffer.getbuffer())


def checkpoint_entries(state: Any, source: Path | str, *keys: str) -> list[Any]:
    """The values of `keys` in a loaded file, or a one-line UserError when the file lacks one."""
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise UserError(f"{source}: has no {missing[0]!r}; use a file this trainer wrote")
    return [state[k] for k in keys]


def checked_generator(gcfg: Any, state: Any, source: Path | str) -> UNetGenerator:
    """The generator a file describes, with its weights, in eval mode on the CPU.

    Everything is checked before the network is allocated, since a crafted config (ngf 2048) would
    otherwise take gigabytes first: the config's values, its memory estimated on the meta device
    against what this machine has (trainer.memory), and each weight's name and shape against a meta
    copy of the network. Each problem is a one-line UserError naming `source`."""
    cfg = GeneratorConfig.from_dict(gcfg, f"{source}: generator_config")
    need, have = generator_bytes(cfg), available_bytes()
    if have is not None and need > have:
        raise UserError(
            f"{source}: its generator_config (ngf {cfg.ngf}, {cfg.size} px) needs about {need / 2**30:.1f} GiB, "
            f"more than the {have / 2**30:.1f} GiB available; free memory, or check that the file is a model "
            "this trainer exported"
        )
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in UNetGenerator(cfg).state_dict().items()}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{source}: its weights are not a dict of tensors; use a file this trainer wrote")
    got = {k: tuple(v.shape) for k, v in state.items()}
    differ = sorted(k for k in expected.keys() | got.keys() if expected.get(k) != got.get(k))
    if differ:
        first = differ[0]
        raise UserError(
            f"{source}: weights do not fit its generator_config ({len(differ)} tensors differ, e.g. {first}: "
            f"{got.get(first, 'missing')} in the file, {expected.get(first, 'none')} for ngf {cfg.ngf}, "
            f"{cfg.in_channels} -> {cfg.out_channels} channels); use a file this trainer wrote, unedited"
        )
    G = UNetGenerator(cfg)
    G.load_state_dict(state)
    return G.eval()


def load_torch(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; point to a run's last.pt or best.pt")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated file, foreign pickle, not a checkpoint at all
        why = f"{type(err).__name__}: {load_failure(err)}"
        raise UserError(f"{path}: not a readable checkpoint ({why}); use a file this trainer wrote") from None


def load_failure(err: Exception) -> str:
    """Why torch.load refused a file, in one short line. For a pickle that names code (a crafted file)
    torch writes paragraphs of advice, ending in loading the file unchecked, around the one that
    says what it refused (`Trying to load unsupported GLOBAL posix.system ...`): keep that one."""
    paragraphs = [" ".join(p.split()) for p in str(err).split("\n\n")]
    useful = [p for p in paragraphs if p and not p.startswith(TORCH_ADVICE)]
    return cut(useful[0] if useful else paragraphs[0].split(". ")[0] or type(err).__name__, 160)
