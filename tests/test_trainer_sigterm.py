"""A scheduler's SIGTERM (Slurm, Kubernetes, `ray job stop`) to `trainer.train`: treated like Ctrl-C,
with nothing left behind, and a resume that cleans up after a run that was killed mid-write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from trainer.checkpoint import LAST, RunState
from trainer.errors import EXIT_TERMINATED

FLAGS = ["--data", "builtin:glyphs", "--size", "32", "--epochs", "3", "--ngf", "8", "--ndf", "8"]
FLAGS += ["--batch_size", "8", "--max_train_images", "64", "--precision", "fp32", "--device", "cpu"]


def temp_files(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir() if p.name.startswith("."))


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
