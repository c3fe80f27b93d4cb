"""The tests keep their files in temporary folders: nothing lands in the user's home directory.

Ray 2.60 turns token auth on for every new local cluster and, when it finds no token, writes a new
one to ~/.ray/auth_token. The subprocess below runs with a fresh HOME and does what the multi-node
fixture does before its cluster starts (test_multinode.use_token_auth), then starts Ray."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from search_cli import ROOT

START_RAY_AS_THE_TESTS_DO = """
from test_multinode import use_token_auth
use_token_auth()
import ray
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, object_store_memory=80 * 1024**2)
ray.shutdown()
"""


@pytest.mark.slow  # trains, or runs a subprocess, for seconds (tests/conftest.py: tiers)
def test_ray_writes_no_auth_token_into_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    ray_tmp = tempfile.mkdtemp(prefix="rayhome-", dir="/tmp")  # short: Ray's socket paths are limited
    env = {
        **os.environ,
        "HOME": str(home),
        "RAY_TMPDIR": ray_tmp,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), str(Path(__file__).parent)]),
    }
    try:
        done = subprocess.run(
            [sys.executable, "-c", START_RAY_AS_THE_TESTS_DO], env=env, capture_output=True, text=True, timeout=120
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (home / ".ray" / "auth_token").exists(), "Ray wrote its token into the home directory"
