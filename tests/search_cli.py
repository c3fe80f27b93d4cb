"""The search CLI as the tests run it: a subprocess of `python -m orchestrator.search` on the tiny spec."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "specs" / "tiny.yaml"


def search_command(storage: str | Path, name: str, *flags: str, config: Path = TINY) -> list[str]:
    return [
        sys.executable, "-m", "orchestrator.search", "--config", str(config),
        "--storage-path", str(storage), "--name", name, *flags,
    ]  # fmt: skip


def search_exit_code(argv: list[str]) -> int:
    """`orchestrator.search.main` in this process, as its exit code (a refusal may come as SystemExit)."""
    from orchestrator import search

    try:
        return search.main(argv)
    except SystemExit as exit_:
        return int(exit_.code)


def search_env(**extra: str) -> dict[str, str]:
    """This process's environment (PIX2PIX_CACHE, WANDB_MODE, ...) with the project importable."""
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def result_lines(experiment: Path) -> dict[str, int]:
    """Reported epochs per trial folder, read from Tune's result.json files."""
    return {
        p.parent.name.split("_")[2]: len(p.read_text().splitlines()) for p in experiment.glob("run_trial_*/result.json")
    }
