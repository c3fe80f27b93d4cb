"""What clusters and careless hands do to the search driver: SIGTERM, a second driver on the same
experiment, a resume of a finished search, names that escape, and a driver killed outright."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from search_cli import ROOT, result_lines, search_command, search_env

from orchestrator import search


def wait_for_a_result(driver: subprocess.Popen, experiment: Path) -> None:
    deadline = time.time() + 240
    while not result_lines(experiment) and time.time() < deadline:
        assert driver.poll() is None, "the search ended before a trial reported"
        time.sleep(0.2)


def test_sigterm_stops_like_ctrl_c_a_second_driver_is_refused_and_the_resume_keeps_wandb_off(tmp_path: Path) -> None:
    """SIGTERM (what `ray job stop`, Kubernetes and Slurm send) to the driver alone: exit 143, state
    saved, trials interrupted, the resume command printed, no Ray stack dump. While the driver runs, a
    second search with its --name, or a --resume of it, is refused in one line. The printed command
    resumes with W&B off, as the search started (and is stopped the same way)."""
    # Trials far longer than this test runs them: neither ASHA nor the plateau rule stops them.
    flags = ["--wandb", "off", "--num-samples", "2", "--epochs", "500", "--grace-period", "500", "--stop-patience", "0"]
    flags += ["--no-l1-reference"]
    env = search_env()
    experiment = tmp_path / "term"
    driver = subprocess.Popen(
        search_command(tmp_path, "term", *flags), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    wait_for_a_result(driver, experiment)

    for extra, refusal in (((), "already exists"), (("--resume",), "another search driver is running")):
        second = subprocess.run(
            search_command(tmp_path, "term", *flags, *extra), cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert second.returncode == 2, second.stderr[-2000:]
        (line,) = second.stderr.strip().splitlines()
        assert refusal in line and "term" in line, line

    stdout, stderr = terminate(driver)
    summary = json.loads((experiment / "summary.json").read_text())
    assert summary["state"] == "interrupted" and summary["best"] is None
    assert "interrupted" in {t["status"] for t in summary["trials"]}

    resume = stderr.strip().splitlines()[-1].split()
    assert resume[:3] == ["python", "-m", "orchestrator.search"] and "--resume" in resume
    before = sum(result_lines(experiment).values())
    resumed = subprocess.Popen([sys.executable, *resume[1:]], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    deadline = time.time() + 240
    while sum(result_lines(experiment).values()) == before and time.time() < deadline:
        assert resumed.poll() is None, "the resumed search ended before a trial reported"
        time.sleep(0.2)
    terminate(resumed)
    assert not (experiment / "wandb").exists()  # it started with --wandb off, and so it resumed


def terminate(driver: subprocess.Popen) -> tuple[str, str]:
    """SIGTERM to the driver alone, and what it printed: exit 143, no Ray stack dump, no traceback."""
    driver.send_signal(signal.SIGTERM)
    stdout, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 143, stderr[-2000:]
    assert "SIGTERM received" not in stderr + stdout and "Traceback" not in stderr, stderr[-2000:]
    return stdout, stderr


def test_a_driver_killed_outright_leaves_no_ray_process_behind(tmp_path: Path) -> None:
    """SIGKILL gives the driver no chance to shut Ray down: orchestrator.reaper ends what it left."""
    driver = subprocess.Popen(
        search_command(tmp_path, "killed", "--wandb", "off"), cwd=ROOT, env=search_env(), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    wait_for_a_result(driver, tmp_path / "killed")
    left = [p for p in psutil.Process(driver.pid).children(recursive=True) if "reaper" not in " ".join(p.cmdline())]
    assert any(p.name() == "raylet" for p in left)
    driver.kill()
    driver.wait()
    gone, alive = psutil.wait_procs(left, timeout=20)
    assert not alive, [(p.pid, p.name()) for p in alive]


@pytest.mark.parametrize("name", ["../escaped", "sub/dir", ".."])
def test_a_name_is_one_folder_name(tmp_path: Path, name: str, capsys) -> None:
    storage = tmp_path / "experiments"
    with pytest.raises(SystemExit) as exit_:
        search.main(["--storage-path", str(storage), "--name", name, "--wandb", "off"])
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"--name {name!r}: an experiment name is one folder name" in line
    assert not storage.exists() and not (tmp_path / "escaped").exists()
