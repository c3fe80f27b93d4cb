"""A scheduler's SIGTERM (Slurm, Kubernetes, `ray job stop`) to `trainer.train`: treated like Ctrl-C,
with nothing left behind, and a resume that cleans up after a run that was killed mid-write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer.checkpoint import LAST, RunState
from trainer.errors import EXIT_TERMINATED

FLAGS = ["--data", "builtin:glyphs", "--size", "32", "--epochs", "3", "--ngf", "8", "--ndf", "8"]
FLAGS += ["--batch_size", "8", "--max_train_images", "64", "--precision", "fp32", "--device", "cpu"]


def temp_files(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir() if p.name.startswith("."))


@pytest.mark.slow  # trains, or runs a subprocess, for seconds (tests/conftest.py: tiers)
def test_sigterm_after_the_first_checkpoint_saves_says_how_to_resume_and_leaves_no_temp_file(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "trainer.train", *FLAGS, "--out", str(run_dir)]
    train = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=os.environ)
    deadline = time.monotonic() + 120
    while not (run_dir / LAST).exists() and train.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    train.send_signal(signal.SIGTERM)  # right after the first last.pt: best.pt is being written now
    _, stderr = train.communicate(timeout=60)

    assert train.returncode == EXIT_TERMINATED, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("terminated; "), stderr
    assert f"--resume --out {run_dir}" in lines[0]
    assert temp_files(run_dir) == []

    # A run killed by SIGKILL mid-write leaves a temp file that it cannot remove; resuming does.
    stale = run_dir / ".best.pt.k1ll3d"
    stale.write_bytes(b"half a checkpoint")
    done = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300, env=os.environ)
    assert done.returncode == 0, done.stderr
    assert RunState.load(run_dir / LAST).epoch == 3
    assert temp_files(run_dir) == []


@pytest.mark.slow  # trains, or runs a subprocess, for seconds (tests/conftest.py: tiers)
def test_a_checkpoint_past_the_file_size_limit_is_one_line_naming_the_limit(tmp_path: Path) -> None:
    """`ulimit -f` (RLIMIT_FSIZE) as a scheduler sets it: the first last.pt outgrows it. One line with
    what to raise and how to continue, exit 2, and the checkpoint's temporary file removed."""
    import resource

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # a checkpoint of ngf 8 is about 1 MB

    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "trainer.train", *FLAGS, "--out", str(run_dir)]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ, timeout=300,
                          preexec_fn=limit_file_size)  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    line = done.stderr.strip().splitlines()[-1]  # after a warning, where the data cache outgrew the limit too
    assert line.startswith(f"error: writing {run_dir / LAST}: File too large; raise the file-size limit"), line
    assert f"--resume --out {run_dir}" in line and temp_files(run_dir) == []
