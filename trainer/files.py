"""Files written atomically (a temp file in the same folder, then a rename: a reader sees the old
file or the new one, never half of one), with the permissions a plain write would give, and the
checks that an output place can take a file before any work starts."""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.errors import UserError, signals_held


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


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with signals_held():  # a signal between mkstemp and the rename would strand the temp file
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), dir=path.parent)
        try:
            os.close(fd)
            use_default_permissions(Path(tmp))
            write(Path(tmp))
            os.replace(tmp, path)
        except OSError as err:
            Path(tmp).unlink(missing_ok=True)
            if err.filename is None:  # a write() that failed names no file: name the one it was for
                raise OSError(err.errno, err.strerror, str(path)) from err
            raise
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def remove_stale_temp_files(path: Path) -> None:
    """Remove the temporary files of earlier atomic writes of `path` that never finished: a process
    killed mid-write (SIGKILL, power loss) cannot remove its own. Call it where no other process
    writes `path`, e.g. when a run resumes in its own folder."""
    for stale in path.parent.glob(f"{glob.escape(_temp_prefix(path))}*"):
        stale.unlink(missing_ok=True)


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


def write_atomic_bytes(path: Path, data: bytes | memoryview) -> None:
    _write_atomic(path, lambda tmp: tmp.write_bytes(data))


def copy_atomic(src: Path, dst: Path) -> None:
    _write_atomic(dst, lambda tmp: shutil.copyfile(src, tmp))


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
    if not os.access(existing, os.W_OK | os.X_OK) or not can_create_file_in(existing):
        raise UserError(f"{flag} {given or folder}: {existing} is not writable (read-only); choose another {flag}")


def can_create_file_in(folder: Path) -> bool:
    """Whether a file can be created in `folder`, by creating one: os.access trusts the mode bits,
    which root and network file systems (NFS root squash, FUSE) do not follow. Linux creates it
    unnamed (O_TMPFILE), so nothing appears in the folder even for a moment."""
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".write-check-"):
            return True
    except OSError:
        return False


def check_output_file(path: Path, flag: str) -> None:
    """check_output_folder for the folder of one output file, which must not be a folder itself."""
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a folder; give a file name")
    check_output_folder(path.parent, flag, path)
