"""Checkpoints and other files written atomically (temp file in the same folder, then rename).

A checkpoint holds everything needed to continue or rebuild a run: the full config, models,
optimizers, schedulers, the epoch, RNG states and the metric history. Loading uses
`weights_only=True`, so only tensors and plain containers are ever unpickled.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from trainer.errors import UserError

LAST = "last.pt"
BEST = "best.pt"
BEST_GENERATOR = "best_generator.pt"  # the best epoch without D and optimizer state: what export and evaluation need
GENERATOR_ONLY_KEYS = (
    "config", "generator_config", "epoch", "history", "best_val_ssim", "best_epoch", "split_hash", "data_source",
    "intensity",
)  # fmt: skip


def scored_generator_key(state: dict[str, Any]) -> str:
    """The generator weights of a checkpoint that validation scored and export ships: "G_ema" (the
    moving average, trainer.ema) when the run kept one, else "G"."""
    return "G_ema" if state.get("G_ema") is not None else "G"


def generator_only(state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint reduced to the scored generator: a quarter of the bytes of a full one or less (no
    D, no Adam moments, no raw G beside its EMA), still readable by everything that only evaluates or
    exports."""
    key = scored_generator_key(state)
    return {**{k: state[k] for k in GENERATOR_ONLY_KEYS}, key: state[key]}


def temp_dir_beside(final: Path) -> Path:
    """An empty folder beside `final`, to fill and then rename to `final`."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    use_default_permissions(tmp, directory=True)
    return tmp


def use_default_permissions(path: Path, directory: bool = False) -> None:
    """mkstemp/mkdtemp create private files (0600/0700); give them the mode a plain open or mkdir
    would, so that a team sharing the storage can read the results."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if directory else 0o666) & ~umask)


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    use_default_permissions(Path(tmp))
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic_text(path: Path, text: str) -> None:
    _write_atomic(path, lambda tmp: tmp.write_text(text))


def json_safe(value: Any) -> Any:
    """Strict JSON has no NaN or infinity (e.g. the PSNR of two identical images): those become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: Path, value: Any) -> None:
    write_atomic_text(path, json.dumps(json_safe(value), indent=1, allow_nan=False, default=str))


def write_atomic_bytes(path: Path, data: bytes) -> None:
    _write_atomic(path, lambda tmp: tmp.write_bytes(data))


def copy_atomic(src: Path, dst: Path) -> None:
    _write_atomic(dst, lambda tmp: shutil.copyfile(src, tmp))


def save_torch(path: Path, obj: Any) -> None:
    """Serialized in memory first: torch's own file writer aborts the process when the disk fills
    (a C++ error thrown in a destructor), where Python's write raises OSError, which we can report."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    _write_atomic(path, lambda tmp: tmp.write_bytes(buffer.getbuffer()))


def checkpoint_entries(state: Any, source: Path | str, *keys: str) -> list[Any]:
    """The values of `keys` in a loaded file, or a one-line UserError when the file lacks one."""
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise UserError(f"{source}: has no {missing[0]!r}; use a file this trainer wrote")
    return [state[k] for k in keys]


def nearest_existing(path: Path) -> Path:
    """`path` or its closest existing parent: where creating `path` would start."""
    return next(p for p in (path, *path.absolute().parents) if p.exists() or p.is_symlink())


def check_output_folder(folder: Path, flag: str, given: Path | None = None) -> None:
    """Refuse, before any work, a folder that cannot take the output: a file in its place or in its
    path, or a place this user cannot write to. It need not exist yet (writing creates it). `given`
    is what the user typed, when that is a file inside `folder`."""
    existing = nearest_existing(folder)
    if not existing.is_dir():
        raise UserError(f"{flag} {given or folder}: {existing} is not a folder (a file?); choose another {flag}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {given or folder}: {existing} is not writable (read-only); choose another {flag}")


def check_output_file(path: Path, flag: str) -> None:
    """check_output_folder for the folder of one output file, which must not be a folder itself."""
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a folder; give a file name")
    check_output_folder(path.parent, flag, path)


def load_torch(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; point to a run's last.pt or best.pt")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated file, foreign pickle, not a checkpoint at all
        raise UserError(
            f"{path}: not a readable checkpoint ({type(err).__name__}: {err}); use a file this trainer wrote"
        ) from None
