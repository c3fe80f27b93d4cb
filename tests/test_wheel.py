"""A regular install (a built wheel, not the repository) carries the search specs and runs from any folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from search_cli import ROOT

CHECK = """
import sys
from pathlib import Path
import orchestrator
from orchestrator.spec import DEFAULT_SPEC, load_spec
assert Path(orchestrator.__file__).is_relative_to(sys.argv[1]), orchestrator.__file__  # the wheel's code
assert DEFAULT_SPEC.is_relative_to(sys.argv[1]), DEFAULT_SPEC  # the installed copy, not the repo's
spec = load_spec(DEFAULT_SPEC)
print(spec.train["data"], spec.search.num_samples)
print(load_spec(Path("search_spaces/gpu-256.yaml")).train["size"])  # as the README writes it, from elsewhere
"""


@pytest.mark.slow  # trains, or runs a subprocess, for seconds (tests/conftest.py: tiers)
def test_a_built_wheel_ships_the_specs_and_runs_elsewhere(tmp_path: Path) -> None:
    # Built from a copy: setuptools leaves build/ and *.egg-info in the folder it builds.
    source = tmp_path / "source"
    for package in ("trainer", "orchestrator"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    # --no-build-isolation: this environment's setuptools, nothing fetched
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path],
        check=True, capture_output=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("pix2pix_tune-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for spec in ("default.yaml", "glyphs-128.yaml", "gpu-256.yaml", "mr2ct-phantom.yaml"):
        assert f"orchestrator/search_spaces/{spec}" in names, names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}  # the wheel's code only, not the repository's
    done = subprocess.run(
        [sys.executable, "-c", CHECK, str(site)], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["builtin:glyphs", "10", "256"]
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.search", "--help"], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0 and "--config" in done.stdout, done.stderr[-2000:]
