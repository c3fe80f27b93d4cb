"""A real search with W&B on: offline runs on disk, read back from W&B's own files, and no key leaks.

The search runs as a subprocess with a (fake) API key in its environment and a W&B server address
that refuses connections, so it exercises the default mode choice (a key -> online), the quick
fallback to offline, and what the workers write with a key in their environment.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from search_cli import ROOT, search_command, search_env

from orchestrator.tracking.offline import find_runs, read_records, read_run

FAKE_KEY = "fakekey-" + "0123456789abcdef" * 3  # wandb's key format: 40+ characters after the dash


@pytest.fixture(scope="module")
def search_with_wandb(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, Path]:
    storage = tmp_path_factory.mktemp("experiments")
    home = tmp_path_factory.mktemp("home")
    env = search_env(
        WANDB_API_KEY=FAKE_KEY,
        WANDB_BASE_URL="http://127.0.0.1:9",  # discard port: nothing listens, the probe fails at once
        HOME=str(home),  # where wandb would stage artifacts (~/.local/share/wandb): it must stay empty
        WANDB_CACHE_DIR=str(home / "cache"),
    )
    for name in ("WANDB_MODE", "WANDB_DATA_DIR", "XDG_DATA_HOME"):
        env.pop(name, None)
    done = subprocess.run(
        search_command(storage, "logged", "--num-samples", "2", "--epochs", "3"),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return storage / "logged", done, home


def test_unreachable_server_falls_back_to_offline_and_says_how_to_sync(search_with_wandb) -> None:
    experiment, done, _ = search_with_wandb
    summary = json.loads((experiment / "summary.json").read_text())
    assert summary["wandb"]["mode"] == "offline"
    assert summary["wandb"]["sync_command"] == "wandb sync wandb"  # run from the folder, wherever it is
    assert f"cd {experiment} && wandb sync wandb" in done.stdout


def test_one_offline_run_per_trial_and_one_for_the_search_in_one_group(search_with_wandb) -> None:
    experiment, _, _ = search_with_wandb
    summary = json.loads((experiment / "summary.json").read_text())
    runs = [read_run(path) for path in find_runs(experiment)]
    assert sorted(r.job_type for r in runs) == ["search", "trial", "trial"]
    assert {r.group for r in runs} == {"logged"}
    trials = {t["trial_id"]: t for t in summary["trials"]}
    for run in (r for r in runs if r.job_type == "trial"):
        trial = trials[run.name]
        assert run.finished
        for name, value in trial["params"].items():
            assert run.config[name] == pytest.approx(value)
        assert run.config["size"] == 32 and run.config["data"] == "builtin:glyphs"
        assert run.summary["best_val_ssim"] == pytest.approx(trial["best_val_ssim"])
        # the run table's val_ssim is the trial's best epoch (a defined metric), not its last
        assert run.summary["val_ssim"] == {"max": pytest.approx(trial["best_val_ssim"])}
        assert run.summary["val_mae"] == {"min": pytest.approx(min(h["val_mae"] for h in trial["history"]))}
        metrics = {
            r.metric.name: r.metric for r in read_records(next(run.run_dir.glob("*.wandb"))) if r.HasField("metric")
        }
        assert metrics["val_ssim"].step_metric == metrics["val_mae"].step_metric == "epoch"
        assert run.summary["end_reason"] == trial["status"]
        assert [row["val_ssim"] for row in run.history] == pytest.approx([h["val_ssim"] for h in trial["history"]])
        assert all(row["G_L1"] > 0 for row in run.history)
        # image_every 1: one sample panel per epoch, none lost to the checkpoint retention
        panels = [row for row in run.history if "val_samples" in row]
        assert [row["epoch"] for row in panels] == [row["epoch"] for row in run.history]
        assert len(run.image_files) == len(run.history)


def test_every_sample_panel_reached_wandb(search_with_wandb) -> None:
    _, done, _ = search_with_wandb
    assert "gone before W&B looked" not in done.stdout + done.stderr


def test_search_run_holds_the_trials_table_and_the_model_artifact(search_with_wandb) -> None:
    experiment, _, _ = search_with_wandb
    search_run = next(read_run(p) for p in find_runs(experiment) if read_run(p).job_type == "search")
    assert search_run.table_files
    assert any(a.type == "model" for a in search_run.artifacts), search_run.artifacts
    assert search_run.summary["num_trials"] == 2
    assert set(search_run.config["space"]) == {"lambda_l1", "dropout", "lr_G", "lr_D"}
    assert search_run.config["search"]["num_samples"] == 2 and search_run.config["train"]["epochs"] == 3


def test_a_moved_experiment_still_resolves_every_run_artifact_and_path(search_with_wandb, tmp_path: Path) -> None:
    """`wandb sync` after moving the folder: every file a run or an artifact names must still be there."""
    experiment, _, _ = search_with_wandb
    copy = tmp_path / "elsewhere" / experiment.name
    shutil.copytree(experiment, copy, symlinks=True)
    away = experiment.rename(experiment.with_name(experiment.name + "-gone"))
    try:
        runs = find_runs(copy)
        assert len(runs) == 3
        for run_dir in runs:
            run = read_run(run_dir)
            media = [
                v for row in [*run.history, run.summary] for v in row.values() if isinstance(v, dict) and "path" in v
            ]
            assert media and all((run_dir / "files" / m["path"]).is_file() for m in media)
            for record in read_records(next(run_dir.glob("*.wandb"))):
                for entry in record.artifact.manifest.contents if record.HasField("artifact") else []:
                    # relative to the folder, where `wandb sync wandb` runs: the files travel with it
                    assert not entry.ref and entry.local_path and not Path(entry.local_path).is_absolute(), entry
                    local = copy / entry.local_path
                    assert local.resolve().is_relative_to(copy.resolve()), entry.local_path
                    digest = base64.b64encode(hashlib.md5(local.read_bytes()).digest()).decode()
                    assert digest == entry.digest, entry.path
        for name in ("summary.json", "report.html", "best/model_card.json", "best/config.json", "best/README.md"):
            text = (copy / name).read_text()
            assert str(experiment) not in text and str(experiment.parent) not in text, name
            assert sys.prefix not in text, f"{name} names this machine's Python ({sys.prefix})"
    finally:
        away.rename(experiment)


def test_wandb_staged_nothing_outside_the_experiment(search_with_wandb) -> None:
    _, _, home = search_with_wandb
    data = home / ".local" / "share" / "wandb"
    assert not data.exists() or not [p for p in data.rglob("*") if p.is_file()], list(data.rglob("*"))


def test_the_api_key_appears_nowhere_under_the_experiment(search_with_wandb) -> None:
    experiment, done, _ = search_with_wandb
    assert FAKE_KEY not in done.stdout + done.stderr
    for path in experiment.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert FAKE_KEY.encode() not in path.read_bytes(), path


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_report_embeds_its_images_and_names_every_trial(search_with_wandb) -> None:
    experiment, _, _ = search_with_wandb
    parser = _Collector()
    parser.feed((experiment / "report.html").read_text())
    assert parser.images and all(src.startswith("data:image/png;base64,") for src in parser.images)
    text = " ".join(parser.text)
    for trial in json.loads((experiment / "summary.json").read_text())["trials"]:
        assert trial["trial_id"] in text


def test_the_terminal_holds_our_lines_and_ray_logs_to_the_experiment(search_with_wandb) -> None:
    experiment, done, _ = search_with_wandb
    output = done.stdout + done.stderr
    for foreign in ("Token authentication", "tensorboard", "Started a local Ray instance", "wandb: "):
        assert foreign.lower() not in output.lower(), foreign
    assert "Started a local Ray instance" in (experiment / "ray.log").read_text()
    assert not list(experiment.rglob("events.out.tfevents*")), "Tune still writes TensorBoard files"
