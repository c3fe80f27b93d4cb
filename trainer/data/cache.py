"""The node's data cache: what is costly to make from a data set (a decoded split, a copy of data in
object storage) is made once per node under $PIX2PIX_CACHE/data and shared by every process that
needs it, e.g. the concurrent trials of a search, which map the decoded arrays read-only (one copy
in the page cache, however many trials).

An entry is a folder named by a digest of its key (the data files with their sizes and mtimes, the
size, the decoding options, ...), so a changed or added file, or other options, give another entry
and never collide. The first process that needs an entry builds it under a file lock (fcntl.flock:
the others wait for it instead of building it again) into a temporary folder, and renames the
folder into place: readers see a whole entry or none. Its manifest.json records each file's size,
mtime and sha256; a file of another size (truncated), or one changed since the build whose checksum
differs (corrupted), is reported in one line and the entry rebuilt.

The cache holds at most $PIX2PIX_CACHE_MAX_GB (default 100) GB: after a build the least recently
used entries are removed until it fits. A cache folder that cannot be written (read-only, full, not
a folder) is not an error: the caller works without it (decodes into memory) after a one-line
warning. PIX2PIX_DATA_CACHE=off turns the cache off the same way, without the warning.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.builtin import cache_dir
from trainer.errors import STORAGE_ERRNOS, UserError
from trainer.files import temp_dir_beside, write_json

FORMAT = 1  # bump when what an entry holds changes, so entries of older code are not read
MANIFEST = "manifest.json"
MAX_GB_ENV = "PIX2PIX_CACHE_MAX_GB"
DEFAULT_MAX_GB = 100.0
SWITCH_ENV = "PIX2PIX_DATA_CACHE"  # "off": no cache, every process decodes into its own memory
HASH_CHUNK = 16 * 1024**2
# What a cache folder that cannot take an entry raises: read-only or not a folder, or full, over quota
# or past the file-size limit (trainer.errors.STORAGE_ERRNOS).
UNUSABLE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST} | set(STORAGE_ERRNOS)


_WARNED: set[Path] = set()  # cache folders this process has warned about


@dataclass(frozen=True)
class Entry:
    """A complete cache entry: its folder and what its builder recorded beside the files."""

    folder: Path
    meta: dict[str, Any]


def cache_root() -> Path:
    return cache_dir() / "data"


def enabled() -> bool:
    return os.environ.get(SWITCH_ENV, "on").lower() != "off"


def max_bytes() -> int:
    raw = os.environ.get(MAX_GB_ENV)
    if raw is None:
        return int(DEFAULT_MAX_GB * 1024**3)
    try:
        gigabytes = float(raw)
    except ValueError:
        gigabytes = 0.0
    if not gigabytes > 0:
        raise UserError(f"{MAX_GB_ENV}={raw}: must be a number of GB above 0 (the default is {DEFAULT_MAX_GB:g})")
    return int(gigabytes * 1024**3)


def digest(key: dict[str, Any]) -> str:
    canonical = json.dumps({"format": FORMAT, **key}, sort_keys=True, default=str).encode()
    return hashlib.sha256(canonical).hexdigest()[:24]


def cached(kind: str, key: dict[str, Any], build: Callable[[Path], dict[str, Any]], fallback: str) -> Entry | None:
    """The entry of `key`, built by `build(folder) -> meta` when missing or damaged; None when the
    cache is off or its folder cannot take the entry (after a warning ending in `fallback`)."""
    if not enabled():
        return None
    root = cache_root()
    folder = root / f"{kind}-{digest(key)}"
    found = _open(folder, repair=False)  # no lock: entries appear by rename, whole or not at all
    if found is not None:
        _touch(folder)
        return found
    try:
        root.mkdir(parents=True, exist_ok=True)
        with _locked(root / f".{folder.name}.lock"):
            found = _open(folder, repair=True)  # built, or found damaged, while this process waited
            if found is None:
                found = _build(folder, key, build)
        _touch(folder)
        evict(root, keep=folder)
        return found
    except OSError as err:
        if err.errno not in UNUSABLE_ERRNOS:
            raise
        if root not in _WARNED:  # one line per process, not one per split
            _WARNED.add(root)
            print(f"warning: {root}: cannot hold the data cache ({err.strerror}); {fallback}", file=sys.stderr)
        return None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        yield


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def _build(folder: Path, key: dict[str, Any], build: Callable[[Path], dict[str, Any]]) -> Entry:
    tmp = temp_dir_beside(folder)
    try:
        started = time.perf_counter()
        meta = build(tmp)
        files = {}
        for path in _files(tmp):
            stat = path.stat()
            files[str(path.relative_to(tmp))] = {
                "bytes": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "sha256": _sha256(path),
            }
        record = {"format": FORMAT, "key": key, "files": files, "meta": meta}
        record["build_seconds"] = round(time.perf_counter() - started, 3)
        write_json(tmp / MANIFEST, record)
        os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Entry(folder, meta)


def _open(folder: Path, repair: bool) -> Entry | None:
    """The entry in `folder` when it is whole; a damaged one is reported and removed when `repair`."""
    try:
        record = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        if repair and folder.exists():  # a folder without its manifest is no entry of ours
            _remove(folder)
        return None
    except (OSError, ValueError):
        return _damaged(folder, "its manifest cannot be read", repair)
    if record.get("format") != FORMAT:
        return _damaged(folder, f"it was written by another version (format {record.get('format')})", repair)
    for name, expected in record["files"].items():
        path = folder / name
        try:
            stat = path.stat()
        except FileNotFoundError:
            return _damaged(folder, f"{name} is missing", repair)
        if stat.st_size != expected["bytes"]:
            return _damaged(folder, f"{name} is truncated ({stat.st_size} of {expected['bytes']} bytes)", repair)
        # A file written since the build is checked in full; an untouched one is trusted, so that
        # opening a large entry costs a stat per file, not a read of every byte.
        if stat.st_mtime_ns != expected["mtime_ns"] and _sha256(path) != expected["sha256"]:
            return _damaged(folder, f"{name} does not match its checksum (corrupted)", repair)
    return Entry(folder, record["meta"])


def _damaged(folder: Path, why: str, repair: bool) -> None:
    if repair:
        print(f"note: {folder}: {why}; rebuilding it", file=sys.stderr)
        _remove(folder)
    return None


def _remove(folder: Path) -> None:
    """Rename away first: a reader sees the entry whole or gone, never half deleted. Processes that
    map its arrays keep reading them (the kernel frees the files when the last map closes)."""
    doomed = folder.with_name(f".removed-{folder.name}-{os.getpid()}")
    try:
        os.rename(folder, doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def _touch(folder: Path) -> None:
    """The folder's mtime is its last use, for the least-recently-used eviction."""
    try:
        os.utime(folder)
    except OSError:
        pass  # a read-only cache is still read; it only keeps no record of use


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def evict(root: Path, keep: Path) -> None:
    """Remove the least recently used entries until the cache fits max_bytes (`keep`, just used, stays)."""
    limit = max_bytes()
    entries = []
    for folder in root.iterdir():
        if folder.is_dir() and not folder.name.startswith("."):
            try:
                entries.append((folder.stat().st_mtime_ns, _size(folder), folder))
            except FileNotFoundError:  # removed meanwhile by another process
                continue
    total = sum(size for _, size, _ in entries)
    for _, size, folder in sorted(entries):
        if total <= limit:
            break
        if folder == keep:
            continue
        _remove(folder)
        total -= size
        print(
            f"note: {folder}: removed from the data cache, least recently used ({MAX_GB_ENV}={limit / 1024**3:g})",
            file=sys.stderr,
        )
