"""Atomic writes: a reader sees the old file or the new one, and no signal strands a temp file."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from trainer import files
from trainer.errors import Terminated, sigterm_raises
from trainer.files import write_atomic_bytes


def test_a_sigterm_during_an_atomic_write_arrives_after_the_rename(tmp_path: Path) -> None:
    """The signal is held while the temp file exists: the write finishes, then Terminated is raised
    (before the fix, a SIGTERM right after mkstemp left `.best.pt.XXXX` in a run folder)."""
    target = tmp_path / "best.pt"
    data = b"x" * 100_000

    def signal_then_write(tmp: Path) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        tmp.write_bytes(data)

    with sigterm_raises(), pytest.raises(Terminated):
        files._write_atomic(target, signal_then_write)
    assert target.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]


def test_a_failed_atomic_write_keeps_the_old_file_and_names_the_target(tmp_path: Path) -> None:
    target = tmp_path / "last.pt"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        write_atomic_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
