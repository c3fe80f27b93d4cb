"""Multi-node behaviour, tested on one machine (issue 6).

Each test starts a `ray.cluster_utils.Cluster`: a head node with no CPUs (so no trial runs beside the
driver) and two worker nodes, each with its own small object store. The search is the real CLI,
`python -m orchestrator.search --address <cluster>`, in a subprocess: this pytest process may hold
another Ray instance already (the in-process search tests). `--storage-path` is a tmp folder that
stands for the shared storage of a real cluster (every node here is on this machine).

Token auth (Ray 2.60): the nodes follow RAY_AUTH_MODE of the process that starts them, and a driver
given an explicit `--address` never turns token auth on by itself (only `ray.init()` of a new local
cluster and `--address auto` with a token on disk do). A token cluster joined by a driver without
RAY_AUTH_MODE=token fails with "Failed to connect to Ray cluster"; a driver in token mode joins a
cluster without auth. So the fixture does what `ray.init()` does for a new local cluster (token mode,
token created if missing) and the driver inherits RAY_AUTH_MODE=token from this process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from search_cli import ROOT, search_command, search_env

from orchestrator.trials.trainable import scratch_dir

MB = 1024**2
NODE_STORE = 80 * MB  # each node's own object store (Ray would take 30% of RAM per node otherwise)
SEARCH_TIMEOUT = 240  # seconds; a search here takes well under a minute without other load

Row = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# the cluster and the driver


def use_token_auth() -> None:
    """What `ray.init()` does before it starts a new local cluster: token auth unless RAY_AUTH_MODE says
    otherwise, with a token (conftest's, in RAY_AUTH_TOKEN_PATH; ~/.ray/auth_token otherwise). This
    process caches the mode (its GCS client must match the cluster's), so this runs before the cluster
    starts; its nodes and the driver inherit it."""
    from ray._private.authentication.authentication_token_setup import (
        enable_token_auth_by_default,
        ensure_token_if_auth_enabled,
    )

    enable_token_auth_by_default()  # sets RAY_AUTH_MODE=token here when it is unset
    ensure_token_if_auth_enabled(None, create_token_if_missing=True)


@pytest.fixture
def make_cluster(monkeypatch: pytest.MonkeyPatch, glyphs_root: Path) -> Iterator[Callable[..., Any]]:
    """Starts a head (no CPUs) and the given worker nodes; shuts everything down after the test.

    glyphs_root builds the glyph data in the session cache (PIX2PIX_CACHE, inherited by every node)
    before trials on several nodes could race to build it."""
    from ray.cluster_utils import Cluster
    from ray.experimental import internal_kv

    # Own temp dir: this cluster's sessions and its ray_current_cluster file stay out of /tmp/ray,
    # where other Ray instances on this machine live. Short, since Ray's socket paths are limited.
    temp_dir = tempfile.mkdtemp(prefix="raymn-", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", temp_dir)
    use_token_auth()
    # Cluster.shutdown() resets this process's internal KV client, which an in-process ray.init() of
    # another test may still need: put it back afterwards.
    saved_kv = (internal_kv.global_gcs_client, internal_kv._initialized)
    clusters: list[Cluster] = []

    def make(*workers: dict[str, Any]) -> Cluster:
        cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 0, "object_store_memory": NODE_STORE, "include_dashboard": False},
        )
        clusters.append(cluster)
        for args in workers:
            cluster.add_node(object_store_memory=NODE_STORE, **args)
        cluster.wait_for_nodes()
        return cluster

    try:
        yield make
    finally:
        for cluster in clusters:
            cluster.shutdown()
        internal_kv.global_gcs_client, internal_kv._initialized = saved_kv
        shutil.rmtree(temp_dir, ignore_errors=True)


def worker_ids(cluster: Any) -> set[str]:
    return {node.node_id for node in cluster.worker_nodes}


def start_search(cluster: Any, storage: Path, log: Path, *flags: str) -> subprocess.Popen:
    command = search_command(storage, "multi", "--address", cluster.address, "--wandb", "off", *flags)
    env = search_env()  # RAY_AUTH_MODE, RAY_TMPDIR and PIX2PIX_CACHE included
    with log.open("w") as out:
        return subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_for(driver: subprocess.Popen, log: Path, deadline: float) -> None:
    """Wait for the driver to exit 0 before the deadline."""
    try:
        code = driver.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        stop(driver)
        pytest.fail(f"the search did not finish in time; driver log ends:\n{tail(log)}")
    assert code == 0, f"the search exited {code}; driver log ends:\n{tail(log)}"


def stop(driver: subprocess.Popen) -> None:
    if driver.poll() is None:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver's own session only: the cluster is not in it
        driver.wait()


def tail(log: Path, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


# ---------------------------------------------------------------------------------------------
# what the search left in the storage path


def result_rows(experiment: Path) -> dict[str, list[Row]]:
    """Tune's result.json rows per trial folder (a line being written is skipped)."""
    rows: dict[str, list[Row]] = {}
    for path in sorted(experiment.glob("run_trial_*/result.json")):
        trial_rows = []
        for line in path.read_text().splitlines():
            try:
                trial_rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
        rows[path.parent.name] = trial_rows
    return rows


def checkpoints(trial_dir: Path) -> list[Path]:
    """A trial's Tune checkpoints in storage (each report writes one; the split is in every one)."""
    return sorted(p for p in trial_dir.glob("checkpoint_*") if (p / "split.json").is_file())


def load_summary(experiment: Path) -> dict[str, Any]:
    return json.loads((experiment / "summary.json").read_text())


# ---------------------------------------------------------------------------------------------
# 1. a worker node lost mid-search


def node_of_a_checkpointed_trial(experiment: Path, epochs: int, workers: set[str]) -> tuple[str, str] | None:
    """(trial folder, node id) of a running trial that has a checkpoint in storage and epochs to go."""
    for trial, rows in result_rows(experiment).items():
        if rows and rows[-1]["epoch"] <= epochs - 3 and rows[-1]["node_id"] in workers:
            if checkpoints(experiment / trial):
                return trial, rows[-1]["node_id"]
    return None


def restarts(rows: list[Row]) -> list[tuple[int, int]]:
    """(epoch reported before, first epoch after) for each time the trial started again."""
    found, reported = [], 0
    for row in rows:
        if row["iterations_since_restore"] == 1 and reported:
            found.append((reported, row["epoch"]))
        reported = max(reported, row["epoch"])
    return found


@pytest.mark.slow
def test_lost_worker_node_trials_resume_from_checkpoint_elsewhere(make_cluster, tmp_path: Path) -> None:
    epochs, samples = 6, 3
    cluster = make_cluster({"num_cpus": 1}, {"num_cpus": 1})
    storage, log = tmp_path / "storage", tmp_path / "driver.log"
    experiment = storage / "multi"
    driver = start_search(
        cluster, storage, log,
        "--epochs", str(epochs), "--num-samples", str(samples), "--max-concurrent", "2", "--cpus-per-trial", "1",
        "--grace-period", str(epochs), "--stop-patience", "0",  # no early stop: every trial runs every epoch
    )  # fmt: skip
    started = time.time()
    deadline = started + SEARCH_TIMEOUT
    try:
        while (found := node_of_a_checkpointed_trial(experiment, epochs, worker_ids(cluster))) is None:
            assert driver.poll() is None, f"the search ended before a node could be removed:\n{tail(log)}"
            assert time.time() < deadline, f"no trial reported a checkpoint in time:\n{tail(log)}"
            time.sleep(0.2)
        victim_trial, victim = found
        before = {trial: list(rows) for trial, rows in result_rows(experiment).items()}
        (node,) = [n for n in cluster.worker_nodes if n.node_id == victim]
        removed_at = time.time()
        cluster.remove_node(node, allow_graceful=False)  # SIGKILL, as when a machine disappears
        wait_for(driver, log, deadline)
    finally:
        stop(driver)
    survivors = worker_ids(cluster)

    rows = result_rows(experiment)
    summary = load_summary(experiment)
    assert len(summary["trials"]) == samples == len(rows)
    on_victim = {trial for trial, trial_rows in before.items() if trial_rows and trial_rows[-1]["node_id"] == victim}
    assert victim_trial in on_victim
    retried, redone, notes = 0, 0, []
    for trial, trial_rows in rows.items():
        again = restarts(trial_rows)
        # No trial started over from epoch 1 after it had reported (every report carries a checkpoint).
        assert all(first > 1 for _, first in again), f"{trial} restarted from scratch: {again}"
        if trial in on_victim:
            assert again, f"{trial} ran on the removed node but was never restarted"
            (restart,) = [r for r in trial_rows if r["iterations_since_restore"] == 1 and r["epoch"] > 1]
            assert restart["node_id"] in survivors, f"{trial} restarted on {restart['node_id']}"
            retried += 1
            redone += sum(last - (first - 1) for last, first in again)
            last_before = before[trial][-1]
            notes.append(
                f"{restart['trial_id']}: epoch {last_before['epoch']} checkpointed on the lost node "
                f"{removed_at - last_before['timestamp']:.0f} s before it went, epoch {restart['epoch']} reported "
                f"on {restart['node_id'][:8]} {restart['timestamp'] - removed_at:.0f} s after"
            )
        else:
            assert not again, f"{trial} was restarted although its node stayed: {again}"
        assert {r["epoch"] for r in trial_rows} == set(range(1, epochs + 1)), trial
        assert {r["gpu_ids"] for r in trial_rows} == {""}  # CPU trials hold no GPU
    for trial in summary["trials"]:
        assert trial["status"] == "finished", (trial["trial_id"], trial["status"], trial["reason"])
        # summary.json says which trials were retried and why; no attempt left its scratch folder
        retried_here = any(trial["trial_id"] in folder for folder in on_victim)
        assert bool(trial["retries"]) == retried_here, (trial["trial_id"], trial["retries"])
        assert not scratch_dir(trial["trial_id"]).exists()
        assert trial["epochs"] == epochs and trial["node_id"] in survivors | {victim}
        history = [int(h["epoch"]) for h in trial["history"]]
        assert sorted(set(history)) == list(range(1, epochs + 1)), (trial["trial_id"], history)
    print(
        f"\nnode {victim[:8]} removed {removed_at - started:.0f} s in, with {len(on_victim)} trial(s) on it: "
        f"{retried} retried from their last checkpoint on the remaining node, {redone} epoch(s) redone; "
        + "; ".join(notes)
    )


# ---------------------------------------------------------------------------------------------
# 2. fractional (fake) GPUs: two trials per GPU, spread over the nodes, checkpoints in the storage path


def surely_running(rows: list[Row]) -> tuple[float, float]:
    """The time span in which a trial (one run, no restarts) was certainly running.

    Tune's "timestamp" is whole seconds (the report happened in [ts, ts + 1)) and "time_total_s" is
    exact seconds since the trial's start, so the start lies in [ts - total, ts - total + 1) for
    every row: certainly running from min(ts - total) + 1 until its last report's ts."""
    start = min(r["timestamp"] - r["time_total_s"] for r in rows) + 1
    return start, float(rows[-1]["timestamp"])


def most_at_once(spans: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    most = running = 0
    for _, step in events:  # ends sort before starts at the same instant: touching spans do not overlap
        running += step
        most = max(most, running)
    return most


@pytest.mark.slow
def test_half_gpu_trials_run_two_per_gpu(make_cluster, tmp_path: Path) -> None:
    epochs, samples = 3, 4
    cluster = make_cluster({"num_cpus": 2, "num_gpus": 1}, {"num_cpus": 2, "num_gpus": 1})  # fake GPUs
    storage, log = tmp_path / "storage", tmp_path / "driver.log"
    driver = start_search(
        cluster, storage, log,
        "--gpus-per-trial", "0.5", "--cpus-per-trial", "0.5", "--max-concurrent", "4",
        "--epochs", str(epochs), "--num-samples", str(samples), "--grace-period", str(epochs), "--stop-patience", "0",
    )  # fmt: skip
    try:
        wait_for(driver, log, time.time() + SEARCH_TIMEOUT)
    finally:
        stop(driver)

    experiment = storage / "multi"
    rows = result_rows(experiment)
    assert len(rows) == samples and all(rows.values())
    assert all(r["iterations_since_restore"] == r["epoch"] for trial in rows.values() for r in trial)  # no restarts
    # Each trial was given the one GPU of its node (Ray sets CUDA_VISIBLE_DEVICES=0; torch, finding no CUDA, uses CPU).
    assert {r["gpu_ids"] for trial in rows.values() for r in trial} == {"0"}
    by_node: dict[str, list[tuple[float, float]]] = {}
    for trial_rows in rows.values():
        (node,) = {r["node_id"] for r in trial_rows}
        by_node.setdefault(node, []).append(surely_running(trial_rows))
    assert set(by_node) == worker_ids(cluster), "trials did not use both GPU nodes (or ran on the CPU-less head)"
    for trial_dir in sorted(experiment.glob("run_trial_*")):
        # Only the latest checkpoint is kept; the workers wrote it to the storage path.
        last_epoch = rows[trial_dir.name][-1]["epoch"]
        assert [p.name for p in checkpoints(trial_dir)] == [f"checkpoint_{last_epoch - 1:06d}"], trial_dir.name
    # 2 CPUs per node would allow 4 trials of 0.5 CPU: only the GPU (0.5 of 1 per trial) holds it to 2.
    at_once = {node[:8]: most_at_once(spans) for node, spans in by_node.items()}
    assert all(n == 2 for n in at_once.values()), f"trials at once per node: {at_once}"
    assert most_at_once([s for spans in by_node.values() for s in spans]) <= 4
    print(
        f"\n{samples} trials of 0.5 GPU + 0.5 CPU on 2 nodes of 1 fake GPU + 2 CPUs; most at once per node: {at_once}"
    )
