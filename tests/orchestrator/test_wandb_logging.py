"""W&B logging, end to end with real offline runs read back from their .wandb logs (no mocks)."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from orchestrator.tracking.offline import OfflineRun, WandbLogError, find_runs, read_run
from orchestrator.tracking.runs import (
    NullLogger,
    WandbRunLogger,
    check_online_or_fallback,
    finish_run,
    log_search_run,
    open_trial_logger,
    resolve_wandb_mode,
    start_run,
    sync_command,
)
from trainer.errors import UserError

FAKE_KEY = "fake-key-" + "0123456789abcdef" * 2
PROJECT, GROUP = "pix2pix-tune-test", "exp-glyphs"
WANDB_ENV = ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL", "WANDB_ENTITY")
PARAMS = {"lambda_l1": 120.5, "dropout": 0.25, "batch_size": 16, "lr_policy": "cosine"}


def epoch_metrics(epoch: int) -> dict[str, float | int]:
    return {
        "epoch": epoch, "G_GAN": 0.7, "G_L1": 0.3 / epoch, "D_real": 0.6, "D_fake": 0.55,
        "val_ssim": 0.5 + 0.1 * epoch, "val_psnr": 15.0 + epoch, "val_mae": 0.2 / epoch,
        "lr_G": 2e-4, "lr_D": 2e-4, "best_val_ssim": 0.5 + 0.1 * epoch, "best_epoch": epoch,
    }  # fmt: skip


def sample_grid() -> np.ndarray:
    grid = np.zeros((16, 50, 3), np.uint8)
    grid[:, :16] = 255  # input | output | target, told apart by colour
    grid[:, 34:, 1] = 200
    return grid


@pytest.fixture(scope="module")
def wandb_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Offline W&B with every folder it writes to inside one temp dir, and a fake API key set."""
    root = tmp_path_factory.mktemp("wandb-env")
    with pytest.MonkeyPatch.context() as mp:
        for name in WANDB_ENV:
            mp.delenv(name, raising=False)
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        mp.setenv("WANDB_API_KEY", FAKE_KEY)
        for name, folder in (("WANDB_DIR", "default"), ("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache")):
            mp.setenv(name, str(root / folder))
        mp.setenv("WANDB_CONFIG_DIR", str(root / "config"))
        mp.setenv("NETRC", str(root / "netrc"))  # absent: the user's ~/.netrc stays out of it
        yield root


@pytest.fixture(scope="module")
def experiment(wandb_env: Path) -> Path:
    """Two trials (one finished with an image, one failed) and the search's run, as the search makes them."""
    exp = wandb_env / "exp"
    good = open_trial_logger("offline", PROJECT, GROUP, "trial_00000", {**PARAMS, "epochs": 3}, exp)
    assert isinstance(good, WandbRunLogger)
    for epoch in (1, 2, 3):
        good.log_metrics(epoch_metrics(epoch), epoch=epoch)
        if epoch == 2:
            good.log_image("val_samples", sample_grid(), epoch=epoch, caption="input | output | target")
    good.finish({"best_val_ssim": 0.8, "best_epoch": 3, "epochs": 3, "end_reason": "finished"})

    bad = open_trial_logger("offline", PROJECT, GROUP, "trial_00001", {**PARAMS, "dropout": 0.5}, exp)
    bad.log_metrics(epoch_metrics(1), epoch=1)
    bad.finish({"epochs": 1, "end_reason": "failed", "error": "RuntimeError: boom"})

    best = exp / "best"
    best.mkdir(parents=True)
    card = {"trial_id": "trial_00000", "params": PARAMS, "test": {"test_ssim": 0.9}}
    (best / "model_card.json").write_text(json.dumps(card))
    (best / "generator.pt").write_bytes(b"\0" * 1000)
    trials = [
        {"trial_id": "trial_00000", "status": "finished", "reason": "", "params": PARAMS, "epochs": 3,
         "best_val_ssim": 0.8, "best_epoch": 3},
        {"trial_id": "trial_00001", "status": "failed", "reason": "RuntimeError: boom",
         "params": {**PARAMS, "dropout": 0.5}, "epochs": 1, "best_val_ssim": None, "best_epoch": None},
    ]  # fmt: skip
    log_search_run("offline", PROJECT, GROUP, exp, trials, best, card)
    return exp


@pytest.fixture(scope="module")
def runs(experiment: Path) -> dict[str, OfflineRun]:
    found = [read_run(d) for d in find_runs(experiment)]
    assert len(found) == 3
    return {run.name: run for run in found}


def test_trial_run_records_group_config_history_and_summary(runs: dict[str, OfflineRun]) -> None:
    run = runs["trial_00000"]
    assert (run.project, run.group, run.job_type, run.finished) == (PROJECT, GROUP, "trial", True)
    assert run.config == {**PARAMS, "epochs": 3}
    assert [row["_step"] for row in run.history] == [1, 2, 3]
    assert [row["epoch"] for row in run.history] == [1, 2, 3]
    assert run.history[2]["val_ssim"] == pytest.approx(0.8)
    assert set(epoch_metrics(1)) <= set(run.history[0])
    assert run.history[1]["val_samples"]["_type"] == "image-file"  # the image shares its epoch's row
    assert run.summary["best_val_ssim"] == 0.8 and run.summary["end_reason"] == "finished"
    assert run.summary["best_epoch"] == 3


def test_trial_image_is_a_png_of_the_grid(runs: dict[str, OfflineRun]) -> None:
    [image_file] = runs["trial_00000"].image_files
    assert image_file.name.startswith("val_samples_2_")
    assert np.array_equal(np.asarray(Image.open(image_file).convert("RGB")), sample_grid())
    assert runs["trial_00000"].history[1]["val_samples"]["caption"] == "input | output | target"


def test_failed_trial_keeps_its_error(runs: dict[str, OfflineRun]) -> None:
    run = runs["trial_00001"]
    assert run.summary["end_reason"] == "failed" and run.summary["error"] == "RuntimeError: boom"
    assert run.config["dropout"] == 0.5 and run.image_files == []


def test_search_run_has_the_trials_table_and_the_model_artifact(runs: dict[str, OfflineRun]) -> None:
    run = runs[f"{GROUP}-search"]
    assert (run.group, run.job_type) == (GROUP, "search")
    assert run.summary["best_trial"] == "trial_00000" and run.summary["num_trials"] == 2
    [table_file] = run.table_files
    table = json.loads(table_file.read_text())
    assert table["columns"][:2] == ["trial_id", "status"] and set(PARAMS) <= set(table["columns"])
    assert [row[0] for row in table["data"]] == ["trial_00000", "trial_00001"]
    by_type = {a.type: a for a in run.artifacts}
    model = by_type["model"]
    assert model.name == f"{GROUP}-best-generator"
    assert model.metadata["trial_id"] == "trial_00000" and model.metadata["params"] == PARAMS
    assert sorted(model.files) == ["generator.pt", "model_card.json"]
    # the table is the run's own file, not also a "run_table" artifact staged outside the folder
    assert "run_table" not in by_type


def test_api_key_is_written_nowhere(wandb_env: Path, experiment: Path) -> None:
    files = [p for p in wandb_env.rglob("*") if p.is_file()]
    assert len(files) > 10
    leaks = [p for p in files if FAKE_KEY.encode() in p.read_bytes()]
    assert leaks == []


@pytest.mark.slow  # seconds: a subprocess, a training or a W&B run (tests/conftest.py: tiers)
def test_sync_command_finds_the_offline_runs_from_the_folder_and_from_anywhere(experiment: Path) -> None:
    assert sync_command() == "wandb sync wandb"  # summary.json's: no path of this machine in it
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for command, cwd in ((sync_command(), experiment), (sync_command(experiment), "/")):
        result = subprocess.run(
            ["bash", "-c", f"{command} --dry-run"], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert "Would sync 3 run(s)" in result.stdout + result.stderr


def test_retried_trial_continues_its_own_run(wandb_env: Path) -> None:
    exp = wandb_env / "retry"
    for epochs in ((1, 2), (3,)):  # the first attempt crashed after epoch 2; Tune restarts from its checkpoint
        logger = open_trial_logger("offline", PROJECT, GROUP, "trial_00007", PARAMS, exp)
        for epoch in epochs:
            logger.log_metrics(epoch_metrics(epoch), epoch=epoch)
        logger.finish({"epochs": epochs[-1], "end_reason": "finished"})
    first, second = (read_run(d) for d in find_runs(exp))
    assert first.run_id == second.run_id
    assert [r["epoch"] for r in first.history + second.history] == [1, 2, 3]


def test_epochs_reported_again_after_a_copied_checkpoint_are_all_kept(wandb_env: Path) -> None:
    """Under search.pbt a trial at epoch 3 may continue another's epoch-1 checkpoint: its epochs 2 and
    3 come again, with their own values and panel, and W&B keeps every row in the order it came."""
    logger = open_trial_logger("offline", PROJECT, GROUP, "trial_00008", PARAMS, wandb_env / "pbt")
    epochs = (1, 2, 3, 2, 3, 4)
    for row, epoch in enumerate(epochs):
        logger.log_metrics({**epoch_metrics(epoch), "values/lambda_l1": 100.0 + row}, epoch=epoch)
        if row == 4:
            logger.log_image("val_samples", sample_grid(), epoch=epoch)
    logger.finish({"epochs": 4, "end_reason": "finished"})
    [run] = [read_run(d) for d in find_runs(wandb_env / "pbt")]
    assert [r["epoch"] for r in run.history] == list(epochs)
    assert [r["values/lambda_l1"] for r in run.history] == [100.0 + row for row in range(len(epochs))]
    assert [row for row, r in enumerate(run.history) if "val_samples" in r] == [4]


def test_reader_joins_records_that_span_blocks(wandb_env: Path) -> None:
    blob = "".join(chr(0x41 + i % 26) for i in range(70_000))  # one config record over two 32 KiB blocks
    run = start_run("offline", project=PROJECT, group=GROUP, name="big", job_type="trial",
                    wandb_dir=wandb_env / "big", config={"blob": blob})  # fmt: skip
    for step in range(1, 301):
        run.log({"value": step * 0.5}, step=step)
    finish_run(run)
    [run_dir] = find_runs(wandb_env / "big")
    [log] = run_dir.glob("run-*.wandb")
    assert log.stat().st_size > 3 * 32 * 1024
    back = read_run(run_dir)
    assert back.config["blob"] == blob
    assert [row["value"] for row in back.history] == [step * 0.5 for step in range(1, 301)]


def test_reader_rejects_what_is_not_a_wandb_log(tmp_path: Path, experiment: Path) -> None:
    (tmp_path / "empty-run").mkdir()
    with pytest.raises(WandbLogError, match="no run-<id>.wandb"):
        read_run(tmp_path / "empty-run")
    fake = tmp_path / "offline-run-x"
    fake.mkdir()
    (fake / "run-x.wandb").write_text('{"not": "a log"}')
    with pytest.raises(WandbLogError, match="not a W&B run log"):
        read_run(fake)


def test_reader_detects_corruption_and_tolerates_a_cut_tail(tmp_path: Path, experiment: Path) -> None:
    source = next(d for d in find_runs(experiment) if read_run(d).name == "trial_00000")
    [log] = source.glob("run-*.wandb")
    data = log.read_bytes()
    corrupt = tmp_path / "offline-run-corrupt"
    corrupt.mkdir()
    (corrupt / log.name).write_bytes(data[:200] + bytes([data[200] ^ 0xFF]) + data[201:])
    with pytest.raises(WandbLogError, match="checksum"):
        read_run(corrupt)
    cut = tmp_path / "offline-run-cut"
    cut.mkdir()
    (cut / log.name).write_bytes(data[: len(data) - 5])  # a run killed while writing its last record
    partial = read_run(cut)
    assert partial.group == GROUP and not partial.finished


# ---------------------------------------------------------------------------------------------
# choosing the mode


@pytest.fixture
def no_wandb_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in WANDB_ENV:
        monkeypatch.delenv(name, raising=False)
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    return netrc


@pytest.mark.parametrize(
    ("requested", "env", "expected"),
    [
        ("off", {"WANDB_API_KEY": FAKE_KEY, "WANDB_MODE": "online"}, "off"),
        ("offline", {"WANDB_API_KEY": FAKE_KEY}, "offline"),
        ("online", {}, "online"),
        (None, {"WANDB_MODE": "disabled", "WANDB_API_KEY": FAKE_KEY}, "off"),
        (None, {"WANDB_MODE": "dryrun"}, "offline"),
        (None, {"WANDB_MODE": "offline", "WANDB_API_KEY": FAKE_KEY}, "offline"),
        (None, {"WANDB_MODE": "online"}, "online"),
        (None, {"WANDB_API_KEY": FAKE_KEY}, "online"),
        (None, {}, "offline"),
    ],
)
def test_mode_resolution(no_wandb_env: Path, monkeypatch: pytest.MonkeyPatch, requested, env, expected) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert resolve_wandb_mode(requested) == expected


def test_netrc_entry_for_the_server_counts_as_a_key(no_wandb_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_wandb_env.write_text(f"machine api.wandb.ai\n  login user\n  password {'k' * 40}\n")
    no_wandb_env.chmod(0o600)
    assert resolve_wandb_mode(None) == "online"
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.internal")  # the entry is for another host
    assert resolve_wandb_mode(None) == "offline"


def test_bad_modes_are_user_errors(no_wandb_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match="off, offline, online"):
        resolve_wandb_mode("cloud")
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(UserError, match="WANDB_MODE"):
        resolve_wandb_mode(None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_falls_back_to_offline_fast(no_wandb_env, monkeypatch, capsys) -> None:
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    started = time.perf_counter()
    assert check_online_or_fallback("online") == "offline"
    assert time.perf_counter() - started < 3.5
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "unreachable" in out and FAKE_KEY not in out


@pytest.mark.slow  # seconds: a subprocess, a training or a W&B run (tests/conftest.py: tiers)
def test_silent_server_cannot_hang_the_search(no_wandb_env, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        started = time.perf_counter()
        assert check_online_or_fallback("online", f"http://127.0.0.1:{listener.getsockname()[1]}") == "offline"
        assert time.perf_counter() - started < 4.0


def test_answering_server_keeps_online(no_wandb_env, monkeypatch, capsys) -> None:
    class Answer(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
        assert check_online_or_fallback("online", f"http://127.0.0.1:{server.server_port}") == "online"
    finally:
        server.shutdown()
        server.server_close()
    assert capsys.readouterr().out == ""
    assert check_online_or_fallback("offline") == "offline" and check_online_or_fallback("off") == "off"


def test_online_without_a_key_falls_back_to_offline(no_wandb_env, capsys) -> None:
    assert check_online_or_fallback("online") == "offline"
    assert "no W&B API key" in capsys.readouterr().out


def test_off_logs_nothing(tmp_path: Path) -> None:
    logger = open_trial_logger("off", PROJECT, GROUP, "t", PARAMS, tmp_path / "w")
    assert isinstance(logger, NullLogger)
    logger.log_metrics(epoch_metrics(1), epoch=1)
    logger.log_image("val_samples", sample_grid(), epoch=1)
    logger.finish({"end_reason": "finished"})
    log_search_run("off", PROJECT, GROUP, tmp_path / "w", [], None, None)
    assert not (tmp_path / "w").exists()


def test_wandb_failure_never_stops_a_trial(no_wandb_env, monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{free_port()}")
    logger = open_trial_logger("online", PROJECT, GROUP, "t", PARAMS, tmp_path / "w")  # no key: wandb refuses
    assert isinstance(logger, NullLogger)
    assert "could not start" in capsys.readouterr().out
