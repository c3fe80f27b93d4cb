"""What clusters and careless hands do to the search driver: SIGTERM and Ctrl-C, a second driver on
the same experiment, names that escape, and a driver killed outright; each stopped search resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psutil
import pytest
from search_cli import ROOT, TINY, result_lines, search_command, search_env, search_exit_code

from orchestrator import search
from orchestrator.spec import load_spec
from orchestrator.trials.references import INIT_GENERATOR


def wait_for_a_result(driver: subprocess.Popen, experiment: Path, after: int = 0) -> None:
    """Until the trials have reported more than `after` epochs in all."""
    deadline = time.time() + 240
    while sum(result_lines(experiment).values()) <= after and time.time() < deadline:
        assert driver.poll() is None, "the search ended before a trial reported"
        time.sleep(0.2)


def test_sigterm_then_ctrl_c_stop_cleanly_a_second_driver_is_refused_and_the_printed_command_finishes(
    tmp_path: Path, capsys
) -> None:
    """SIGTERM (what `ray job stop`, Kubernetes and Slurm send) to the driver alone, then a terminal's
    Ctrl-C (SIGINT to the process group) to the driver the printed command started: each exits (143,
    130) with the state saved, the trials interrupted, nothing exported, the resume command printed and
    no Ray stack dump. While a driver runs, a second search with its --name, or a --resume of it, is
    refused in one line. The printed command resumes with W&B off, as the search started; the last
    resume changes the W&B mode (offline) and the number of trials (3, at once) and finishes."""
    # Without the L1-only reference, which the study leaves out: both trials are the study's.
    # Epochs enough for two stops and a resume between them; no plateau stop.
    flags = ["--wandb", "off", "--num-samples", "2", "--epochs", "8", "--stop-patience", "0", "--no-l1-reference"]
    env = search_env()
    experiment = tmp_path / "stops"
    import orchestrator.driver  # noqa: F401  # now, so that the refusals below take milliseconds, not the trials' time

    driver = subprocess.Popen(
        search_command(tmp_path, "stops", *flags), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    wait_for_a_result(driver, experiment)
    # In this process, not a new one: refused before Ray starts, while the trials still run.
    for extra, refusal in (((), "already exists"), (("--resume",), "another search driver is running")):
        assert search_exit_code([*search_command(tmp_path, "stops", *flags, *extra)[3:]]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert refusal in line and "stops" in line, line

    stderr = stopped(driver, signal.SIGTERM, 143)
    resume = printed_resume(stderr, experiment)
    resumed = subprocess.Popen([sys.executable, *resume[1:]], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    wait_for_a_result(resumed, experiment, after=sum(result_lines(experiment).values()))
    stderr = stopped(resumed, signal.SIGINT, 130)
    assert not (experiment / "wandb").exists()  # it started with --wandb off, and so it resumed
    summary = json.loads((experiment / "summary.json").read_text())
    interrupted = [t for t in summary["trials"] if t["status"] == "interrupted"]
    assert interrupted and all("--resume continues it" in t["reason"] for t in interrupted)
    study = optuna.load_study(study_name="stops", storage=f"sqlite:///{experiment / 'optuna.db'}")
    pruned = {t.user_attrs["trial_id"] for t in study.trials if t.state == optuna.trial.TrialState.PRUNED}
    assert pruned == {t["trial_id"] for t in interrupted}

    # W&B mode and the number of trials may change on a resume; the study's sampler goes on where it was.
    more = ["--wandb", "offline", "--num-samples", "3", "--max-concurrent", "3"]
    resume = printed_resume(stderr, experiment)
    last = subprocess.run([sys.executable, *resume[1:], *more], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=400)  # fmt: skip
    assert last.returncode == 0, last.stderr[-2000:]
    assert "resuming with --num-samples 3 (was 2)" in last.stdout
    assert "resuming with --max-concurrent 3 (was 2)" in last.stdout
    saved = load_spec(experiment / "spec.yaml").search
    assert (saved.num_samples, saved.max_concurrent) == (3, 3)
    summary = json.loads((experiment / "summary.json").read_text())
    assert summary["state"] == "finished" and summary["best"] is not None
    assert len(summary["trials"]) == 3 and all(t["status"] != "interrupted" for t in summary["trials"])
    assert list((experiment / "wandb").glob("offline-run-*")), "the last resume logged to W&B offline"


def stopped(driver: subprocess.Popen, sig: signal.Signals, code: int) -> str:
    """`sig` to the driver (SIGTERM) or its process group (SIGINT, as a terminal sends it), and what it
    printed: exit `code`, no Ray stack dump, no traceback."""
    if sig == signal.SIGINT:
        os.killpg(driver.pid, sig)
    else:
        driver.send_signal(sig)
    stdout, stderr = driver.communicate(timeout=120)
    assert driver.returncode == code, stderr[-2000:]
    assert "SIGTERM received" not in stderr + stdout and "Traceback" not in stderr, stderr[-2000:]
    return stderr


def printed_resume(stderr: str, experiment: Path) -> list[str]:
    """The resume command a stopped driver printed last, after checking that it saved an interrupted
    search with nothing exported."""
    summary = json.loads((experiment / "summary.json").read_text())
    assert summary["state"] == "interrupted" and summary["best"] is None and not (experiment / "best").exists()
    assert "interrupted" in {t["status"] for t in summary["trials"]}
    resume = stderr.strip().splitlines()[-1].split()
    assert resume[:3] == ["python", "-m", "orchestrator.search"] and "--resume" in resume
    return resume


def test_a_driver_killed_outright_leaves_no_ray_process_behind_and_resumes_without_rerunning_or_losing_trials(
    tmp_path: Path,
) -> None:
    """SIGKILL gives the driver no chance to shut Ray down: orchestrator.reaper ends what it left.
    A warm-started search (its fine-tunes wait for the L1-only reference, then start from its best
    generator), killed once both references have finished all their epochs and a fine-tune has
    started, resumes with no trial run again nor lost, and every fine-tune starts from the same
    generator; trials that ended just before a kill end again on resume. (The SIGTERM test above
    resumes a search without warm start.)"""
    command = search_command(
        tmp_path, "killed", "--wandb", "off", "--max-concurrent", "1", "--stop-patience", "0", "--warm-start"
    )
    env = search_env()
    driver = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    experiment = tmp_path / "killed"
    deadline = time.time() + 240
    while time.time() < deadline:
        lines = result_lines(experiment)
        if sum(n == 3 for n in lines.values()) >= 2 and len(lines) >= 3:
            break
        assert driver.poll() is None, "the search ended before it could be killed"
        time.sleep(0.5)
    else:
        pytest.fail("no trial finished in time")
    left = running_descendants(driver.pid)
    assert any(p.name() == "raylet" for p in left)
    driver.kill()
    driver.wait()
    gone, alive = psutil.wait_procs(left, timeout=20)
    assert not alive, [(p.pid, p.name()) for p in alive]
    finished_before = {t: n for t, n in result_lines(experiment).items() if n == 3}
    # The study holds the fine-tunes, written as they end (a warm-started search's study leaves out the
    # references): the killed driver left none, not even the one running.
    study = optuna.load_study(study_name="killed", storage=f"sqlite:///{experiment / 'optuna.db'}")
    assert study.trials == []

    resumed = subprocess.run([*command, "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads((experiment / "summary.json").read_text())
    ids = [t["trial_id"] for t in summary["trials"]]
    assert len(ids) == len(set(ids)) == load_spec(TINY).search.num_samples
    after = result_lines(experiment)
    for trial, n in finished_before.items():
        assert after[trial] == n, f"finished trial {trial} was run again"
    # The reference searcher's state came back too: one L1-only reference, and two fine-tunes, which
    # start from its generator, the one started before the kill and the one after; the study has them.
    (l1_only,) = [t["trial_id"] for t in summary["trials"] if "gan_weight" in t["params"]]
    tunes = {t["trial_id"]: t["params"][INIT_GENERATOR] for t in summary["trials"] if INIT_GENERATOR in t["params"]}
    assert len(tunes) == 2 and len(set(tunes.values())) == 1, tunes
    assert (experiment / next(iter(tunes.values()))).parent.name.split("_")[2] == l1_only
    study = optuna.load_study(study_name="killed", storage=f"sqlite:///{experiment / 'optuna.db'}")
    assert sorted(t.user_attrs["trial_id"] for t in study.trials) == sorted(tunes)

    # A trial's end trims its checkpoint at once (orchestrator.trials.retention), while Tune records the
    # end in its experiment state a moment later: a driver killed in between leaves a trimmed trial that
    # Tune's state calls RUNNING, and no summary. Made here from the finished search: resumed, its
    # trials end again as they had ended, none failed and none trained again.
    ended = {t["trial_id"]: t["status"] for t in summary["trials"]}
    state_file = max(experiment.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    state = json.loads(state_file.read_text())
    for entry in state["trial_data"]:
        entry[0] = json.dumps({**json.loads(entry[0]), "status": "RUNNING"})
    state_file.write_text(json.dumps(state))
    (experiment / "summary.json").unlink()
    again = subprocess.run([*command, "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stderr[-2000:]
    summary = json.loads((experiment / "summary.json").read_text())
    assert {t["trial_id"]: t["status"] for t in summary["trials"]} == ended, summary["trials"]
    assert result_lines(experiment) == after, "an ended trial trained again"


def running_descendants(pid: int) -> list[psutil.Process]:
    """The processes under `pid` that still run, the reaper aside. One that ends while it is looked at
    (a zombie its parent has not reaped yet, or gone) is not running."""
    running = []
    for process in psutil.Process(pid).children(recursive=True):
        try:
            if process.status() != psutil.STATUS_ZOMBIE and "reaper" not in " ".join(process.cmdline()):
                running.append(process)
        except psutil.NoSuchProcess:  # ZombieProcess included
            pass
    return running


@pytest.mark.parametrize("name", ["../escaped", "sub/dir", ".."])
def test_a_name_is_one_folder_name(tmp_path: Path, name: str, capsys) -> None:
    storage = tmp_path / "experiments"
    with pytest.raises(SystemExit) as exit_:
        search.main(["--storage-path", str(storage), "--name", name, "--wandb", "off"])
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"--name {name!r}: an experiment name is one folder name" in line
    assert not storage.exists() and not (tmp_path / "escaped").exists()
