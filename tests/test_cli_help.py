"""Every command-line module answers `--help`: exit code 0 and a usage line naming `python -m MODULE`.

The modules are found, not listed: each file of trainer/, orchestrator/ and benchmarks/ that runs as a script
(`if __name__ == "__main__":`). All of them run in one child process, one after the other through
runpy as `python -m` runs them, so the heavy imports (torch, Ray, W&B) are paid once, not per module.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("trainer", "orchestrator", "benchmarks")
SCRIPT_GUARD = 'if __name__ == "__main__":'
RUN_ALL = """
import contextlib, io, json, runpy, sys, warnings
warnings.simplefilter("ignore")  # runpy warns that a module was imported before it runs as __main__
results = {}
for module in sys.argv[1:]:
    out = io.StringIO()
    sys.argv = [module, "--help"]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exit_:
            code = exit_.code or 0
        except BaseException as err:
            code = f"{type(err).__name__}: {err}"
    results[module] = {"code": code, "output": out.getvalue()}
print(json.dumps(results))
"""


def cli_modules() -> list[str]:
    modules = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if SCRIPT_GUARD in path.read_text(encoding="utf-8"):
                parts = path.relative_to(ROOT).with_suffix("").parts
                modules.append(".".join(parts[:-1] if parts[-1] == "__main__" else parts))
    return modules


MODULES = cli_modules()


@pytest.fixture(scope="module")
def help_outputs() -> dict[str, dict]:
    done = subprocess.run(
        [sys.executable, "-c", RUN_ALL, *MODULES], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_the_known_clis_are_found() -> None:
    expected = {"trainer.train", "trainer.evaluate", "trainer.predict", "benchmarks.step", "orchestrator.search"}
    assert expected | {"orchestrator.report", "benchmarks.gpu_check"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_help_exits_0_with_a_usage_line(module: str, help_outputs: dict[str, dict]) -> None:
    result = help_outputs[module]
    assert result["code"] == 0, result
    assert result["output"].startswith(f"usage: python -m {module}"), result["output"][:300]
