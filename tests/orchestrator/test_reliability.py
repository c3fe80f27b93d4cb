"""Faults a user causes every day, each caught before it costs anything: one line, exit 2, nothing written."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import ray._private.ray_constants as ray_constants
import torch
from search_cli import ROOT, TINY, search_command, search_env

from orchestrator import search
from orchestrator.preflight import check_search
from orchestrator.spec import load_spec
from trainer.checkpoint import save_torch
from trainer.config import GeneratorConfig, TrainConfig
from trainer.errors import UserError
from trainer.export import export_generator
from trainer.memory import generator_bytes, training_bytes
from trainer.models import UNetGenerator


def run_search_expecting_error(tmp_path: Path, capsys, *flags: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        search.main(["--config", str(TINY), "--storage-path", str(tmp_path), "--name", "x", *flags])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert not (tmp_path / "x").exists(), "a refused search wrote its folder"
    return err


def test_a_missing_data_folder_is_refused_before_ray_starts(tmp_path: Path, capsys) -> None:
    err = run_search_expecting_error(tmp_path, capsys, "--data", str(tmp_path / "nowhere"))
    assert "nowhere: data folder not found" in err


def test_an_empty_data_folder_is_refused_before_ray_starts(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert "no images found" in run_search_expecting_error(tmp_path, capsys, "--data", str(tmp_path / "empty"))


@pytest.mark.slow  # seconds: a subprocess, a training or a W&B run (tests/conftest.py: tiers)
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_gpus_per_trial_on_a_machine_without_gpu_is_refused(tmp_path: Path, capsys) -> None:
    err = run_search_expecting_error(tmp_path, capsys, "--gpus-per-trial", "0.5")
    assert "--gpus-per-trial 0.5: this machine has no GPU" in err


@pytest.mark.slow  # reads every glyph file's header, as a search's preflight does (tests/conftest.py: tiers)
def test_a_trial_too_big_for_this_machine_is_named_before_it_starts() -> None:
    spec = load_spec(TINY).with_overrides({"size": 2048, "batch_size": 64}, {})
    (warning,) = check_search(spec, None)
    assert "GiB (2048 px, batch 64" in warning and "lower --max-concurrent, --batch-size or --size" in warning
    assert check_search(load_spec(TINY), None) == []


def test_memory_estimate_counts_the_real_networks_and_grows_with_size() -> None:
    gcfg = GeneratorConfig(3, 3, 64, ngf=8)
    weights = sum(p.numel() for p in UNetGenerator(gcfg).parameters()) * 4
    assert weights < generator_bytes(gcfg) < weights + 64 * 64 * 3 * 4 * 200  # weights plus activations
    one, five, nine = (training_bytes(TrainConfig(size=64, ngf=8, ndf=8, batch_size=b)) for b in (1, 5, 9))
    assert nine - five == five - one > 0  # activations grow with the batch, the weights do not


def listening_addresses(root_pid: int) -> list[tuple[str, str]]:
    """(process name, address) of every listening TCP socket of `root_pid` and its descendants."""
    root = psutil.Process(root_pid)
    found = []
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            for conn in process.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    found.append((process.name(), conn.laddr.ip))
    return found


def is_loopback(address: str) -> bool:
    address = address.removeprefix("::ffff:")  # an IPv4 address on a dual-stack socket
    return ipaddress.ip_address(address).is_loopback


def test_the_embedded_ray_listens_on_loopback_only_and_refuses_a_client_without_this_searchs_token(
    tmp_path: Path,
) -> None:
    """Nothing outside the machine can reach the embedded Ray; on the machine, a client needs this
    search's token, which is never written to disk (Ray's own default is ~/.ray/auth_token, 0644)."""
    probe = (
        "import json, os, sys, ray\n"
        "from orchestrator.cluster import start_ray\n"
        "start_ray(None)\n"
        "pid = ray.remote(lambda: os.getpid())\n"
        "ray.get([pid.remote() for _ in range(2)])\n"  # workers up: they listen too
        "print(json.dumps(ray.get_runtime_context().gcs_address), flush=True)\n"
        "sys.stdin.read()\n"  # keep Ray up until the test has looked at it
    )
    env = {k: v for k, v in search_env(HOME=str(tmp_path)).items() if not k.startswith("RAY_AUTH")}
    driver = subprocess.Popen(
        [sys.executable, "-c", probe], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        gcs = json.loads(driver.stdout.readline())
        listening = listening_addresses(driver.pid)
        names = {name for name, _ in listening}
        assert {"gcs_server", "raylet"} <= names, listening
        assert all(is_loopback(address) for _, address in listening), listening
        assert gcs.startswith("127.0.0.1:"), gcs

        join = f"import ray; ray.init(address={gcs!r}); print('joined')"
        # Ray would swap 127.0.0.1 for this machine's own address, where nothing listens, unless
        # clusters are off: so the stranger comes through loopback, as another local user could.
        stranger = subprocess.Popen(
            [sys.executable, "-c", join],
            env={**env, ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR: "0"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # Ray's client retries for about 20 s before it gives up; its first refusal is the answer.
        lines = []
        for line in stranger.stdout:
            lines.append(line)
            if "InvalidAuthToken" in line or "joined" in line:
                break
        stranger.kill()
        stranger.wait()
        assert "InvalidAuthToken" in lines[-1], "".join(lines[-5:])
    finally:
        driver.communicate("", timeout=60)
    assert not (tmp_path / ".ray" / "auth_token").exists()


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real 2 MiB file system (tmpfs), where the machine lets the tests mount one."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_is_an_error_not_an_abort_and_leaves_no_temp_file(small_disk: Path) -> None:
    with pytest.raises(OSError) as err:
        save_torch(small_disk / "last.pt", {"weights": torch.zeros(1024, 1024)})  # 4 MiB into 2 MiB
    assert err.value.errno == errno.ENOSPC
    assert list(small_disk.iterdir()) == []


def test_an_export_the_disk_cannot_hold_is_refused_before_writing(small_disk: Path) -> None:
    G = UNetGenerator(GeneratorConfig(3, 3, 64, ngf=16))
    with pytest.raises(UserError, match=r"best: the export needs about \d+ MiB but .* has [0-9.]+ MiB free"):
        export_generator(G, small_disk / "best", {"name": "test"})
    assert list(small_disk.iterdir()) == []


def test_a_full_disk_stops_the_search_at_the_first_failure_with_one_line(small_disk: Path) -> None:
    """Trials checkpoint to a storage path on a real 2 MiB file system: the first trial that fails for
    the full disk stops the search (the others would fail the same way, retries and all), and the
    driver ends with one line naming the trial's error and the command that continues the search."""
    command = search_command(small_disk, "full", "--wandb", "off")
    done = subprocess.run(command, cwd=ROOT, env=search_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = done.stderr.strip().splitlines()
    assert "No space left on device" in line and "trial " in line and "--resume --name full" in line, line
    assert "Traceback" not in done.stdout and len(done.stdout.splitlines()) < 20, done.stdout[-2000:]
