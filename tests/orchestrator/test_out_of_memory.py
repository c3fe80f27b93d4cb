"""Memory that runs out, under an address-space limit (`ulimit -v`, RLIMIT_AS) as a scheduler sets
one: the search warns before it starts, and trainer.train ends in one line saying what to lower."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from search_cli import ROOT, TINY, search_env

GIB = 2**30
ADDRESS_SPACE = 5 * GIB  # room for torch's own mappings (about 3.4 GB), far from what 512 px at batch 32 needs


def limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


@pytest.mark.slow  # trains, or runs a subprocess, for seconds (tests/conftest.py: tiers)
def test_the_search_preflight_warns_when_ulimit_v_leaves_a_trial_too_little() -> None:
    probe = (
        "from pathlib import Path\n"
        "from orchestrator.preflight import check_search\n"
        "from orchestrator.spec import load_spec\n"
        f"spec = load_spec(Path({str(TINY)!r})).with_overrides({{'size': 512, 'batch_size': 64}}, {{}})\n"
        "print('\\n'.join(check_search(spec, None)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=search_env(), capture_output=True, text=True, timeout=120,
        preexec_fn=limit_address_space,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "but the address-space limit (ulimit -v) leaves a process about" in done.stdout, done.stdout


@pytest.mark.slow  # trains, or runs a subprocess, for seconds (tests/conftest.py: tiers)
def test_an_allocation_failure_in_trainer_train_is_one_line_saying_what_to_lower(tmp_path: Path) -> None:
    flags = ["--data", "builtin:glyphs", "--size", "512", "--batch_size", "32", "--epochs", "1"]
    flags += ["--max_train_images", "64", "--device", "cpu", "--precision", "fp32", "--out", str(tmp_path / "run")]
    done = subprocess.run(
        [sys.executable, "-m", "trainer.train", *flags], cwd=ROOT, env=os.environ, capture_output=True, text=True,
        timeout=300, preexec_fn=limit_address_space,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("error: out of memory at 512 px, batch 32, ngf 64, ndf 64 (")
    assert "GiB more could not be allocated); lower batch_size, size, ngf/ndf or max_train_images" in lines[0]
