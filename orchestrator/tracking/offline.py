"""Read what an offline W&B run recorded, without W&B's servers.

wandb 0.31 keeps an offline run's config, history and summary only inside `run-<id>.wandb`, and no
longer ships a Python reader for it. The file is a LevelDB-style log:

    header   7 bytes: ":W&B", magic 0xBEE1 (little-endian), version 0
    blocks   32 KiB each; a chunk never straddles a block, and a block tail shorter than a chunk
             header is zero padding
    chunk    crc32 (4, little-endian) | length (2) | type (1: full, 2: first, 3: middle, 4: last) | data
             the crc covers the type byte and the data
    record   the concatenated data of one full chunk or of a first..last sequence, parsed as
             `wandb.proto.wandb_internal_pb2.Record`

Tests use this to check what the loggers wrote; the report uses it to show what a search logged.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.compat import wandb_records

pb = wandb_records()  # the record types of a .wandb file

FILE_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK_SIZE = 32 * 1024
CHUNK_HEADER = struct.Struct("<IHB")  # crc32, length, type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
RUN_GLOBS = ("offline-run-*", "run-*")


class WandbLogError(ValueError):
    """The file is not a W&B transaction log, or it is corrupt."""


@dataclass(frozen=True)
class LoggedArtifact:
    name: str
    type: str
    metadata: dict[str, Any]
    files: list[str]  # paths inside the artifact


@dataclass
class OfflineRun:
    run_dir: Path
    run_id: str = ""
    project: str = ""
    group: str = ""
    job_type: str = ""
    name: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per step, with "_step"
    summary: dict[str, Any] = field(default_factory=dict)
    image_files: list[Path] = field(default_factory=list)
    table_files: list[Path] = field(default_factory=list)
    artifacts: list[LoggedArtifact] = field(default_factory=list)
    finished: bool = False  # the log ends with the run's exit record


def find_runs(wandb_dir: Path) -> list[Path]:
    """The run folders under a WANDB_DIR (or its `wandb/` subfolder), oldest first: `offline-run-*`, and
    `run-*` for online runs, which keep the same log on disk."""
    wandb_dir = Path(wandb_dir)
    roots = [root for root in (wandb_dir / "wandb", wandb_dir) if root.is_dir()]
    # `latest-run` is a symlink to one of the runs: skip links so no run is listed twice.
    found = (p for root in roots for pattern in RUN_GLOBS for p in root.glob(pattern))
    runs = {p for p in found if p.is_dir() and not p.is_symlink()}
    return sorted(runs, key=lambda p: p.name.removeprefix("offline-"))


def read_run(run_dir: Path) -> OfflineRun:
    """Everything the run's `.wandb` log recorded, less W&B's own bookkeeping keys (`_wandb`, `_runtime`, ...)."""
    run_dir = Path(run_dir)
    logs = sorted(run_dir.glob("run-*.wandb"))
    if not logs:
        raise WandbLogError(f"{run_dir}: no run-<id>.wandb file; not a W&B run folder")
    run = OfflineRun(run_dir=run_dir)
    steps: dict[int, dict[str, Any]] = {}
    for record in read_records(logs[0]):
        _apply(record, run, steps)
    run.history = [steps[step] for step in sorted(steps)]
    media = run_dir / "files" / "media"
    run.image_files = sorted((media / "images").glob("*")) if (media / "images").is_dir() else []
    run.table_files = sorted((media / "table").glob("*.table.json")) if (media / "table").is_dir() else []
    return run


def wait_until_complete(log: Path, timeout: float) -> bool:
    """Wait until the log ends with the run's exit record; False if that takes longer than `timeout` s."""
    deadline = time.monotonic() + timeout
    while not is_complete(log):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def is_complete(log: Path) -> bool:
    try:
        return any(record.WhichOneof("record_type") == "exit" for record in read_records(log))
    except (OSError, WandbLogError):
        return False


def read_records(path: Path) -> Iterator[pb.Record]:
    for payload in read_payloads(Path(path).read_bytes(), str(path)):
        record = pb.Record()
        record.ParseFromString(payload)
        yield record


def read_payloads(data: bytes, source: str) -> Iterator[bytes]:
    """The records' bytes, chunks joined and checksums verified. A truncated last chunk (a run still
    being written, or killed mid-write) ends the log; a bad checksum anywhere else is corruption."""
    if not data.startswith(FILE_HEADER):
        raise WandbLogError(f"{source}: not a W&B run log (it does not start with the ':W&B' header)")
    pos, pending = len(FILE_HEADER), bytearray()
    while pos + CHUNK_HEADER.size <= len(data):
        if BLOCK_SIZE - pos % BLOCK_SIZE < CHUNK_HEADER.size:
            pos += BLOCK_SIZE - pos % BLOCK_SIZE  # block trailer: padding
            continue
        crc, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        start = pos + CHUNK_HEADER.size
        chunk = data[start : start + length]
        if kind == 0 and length == 0:
            break  # zeroed space after the last record
        if len(chunk) < length:
            return
        if crc != zlib.crc32(chunk, zlib.crc32(bytes([kind]))):
            raise WandbLogError(f"{source}: corrupt W&B log (checksum mismatch at byte {pos})")
        pos = start + length
        if kind in (FULL, FIRST):
            pending = bytearray(chunk)
        elif kind in (MIDDLE, LAST):
            pending += chunk
        else:
            raise WandbLogError(f"{source}: corrupt W&B log (unknown chunk type {kind} at byte {pos})")
        if kind in (FULL, LAST):
            yield bytes(pending)


def _apply(record: pb.Record, run: OfflineRun, steps: dict[int, dict[str, Any]]) -> None:
    kind = record.WhichOneof("record_type")
    if kind == "run":
        r = record.run
        run.run_id, run.project, run.group = r.run_id, r.project, r.run_group
        run.job_type, run.name = r.job_type, r.display_name
        _update(run.config, r.config.update)
    elif kind == "config":
        _update(run.config, record.config.update)
        _remove(run.config, record.config.remove)
    elif kind == "history":
        row = {}
        _update(row, record.history.item, keep={"_step"})
        steps.setdefault(int(row.get("_step", len(steps))), {}).update(row)
    elif kind == "summary":
        _update(run.summary, record.summary.update)
        _remove(run.summary, record.summary.remove)
    elif kind == "artifact":
        a = record.artifact
        metadata = json.loads(a.metadata) if a.metadata else {}
        run.artifacts.append(LoggedArtifact(a.name, a.type, metadata, [c.path for c in a.manifest.contents]))
    elif kind == "exit":
        run.finished = True


def _key_path(item: Any) -> list[str]:
    return [item.key] if item.key else list(item.nested_key)


def _value(item: Any) -> Any:
    # History items may carry a typed value instead of JSON.
    typed = item.WhichOneof("value") if isinstance(item, pb.HistoryItem) else None
    if typed == "none":
        return None
    if typed == "json":
        return json.loads(item.json)
    if typed is not None:
        return getattr(item, typed)
    return json.loads(item.value_json)


def _update(target: dict[str, Any], items: Any, keep: frozenset[str] | set[str] = frozenset()) -> None:
    for item in items:
        path = _key_path(item)
        if not path or (path[0].startswith("_") and path[0] not in keep):
            continue
        node = target
        for key in path[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[path[-1]] = _value(item)


def _remove(target: dict[str, Any], items: Any) -> None:
    for item in items:
        *parents, last = _key_path(item) or [""]
        node = target
        for key in parents:
            node = node.get(key, {})
        node.pop(last, None)
