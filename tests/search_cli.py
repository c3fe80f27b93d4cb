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
    """This process's environment (PIX2PIX_CACHE, WANDB_MODE, ...) with the project importable, less
    WANDB_SERVICE: W&B sets it in a process that starts its service (a test that logs in-process), and a
    driver that inherits it logs through that service, which outlives the driver: a killed driver's
    runs stay open there, and its resumed runs of the same ids then wrote nothing (seen in the PBT test)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **extra}
    env.pop("WANDB_SERVICE", None)
    return env


def result_lines(experiment: Path) -> dict[str, int]:
    """Reported epochs per trial folder, read from Tune's result.json files."""
    return {
        p.parent.name.split("_")[2]: len(p.read_text().splitlines()) for p in experiment.glob("run_trial_*/result.json")
    }
