"""The search end to end: real local Ray, real Optuna, real training on built-in glyphs at 32 px."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime
import optuna
import pytest
import torch
import yaml
from search_cli import ROOT, TINY, search_command, search_env, search_exit_code
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from orchestrator import search
from orchestrator.spec import DEFAULT_SPEC, load_spec, parse_duration, save_spec
from orchestrator.tuner import resolve_epochs
from trainer.checkpoint import BEST_GENERATOR, LAST, RunState, load_torch
from trainer.data import PairedImages, load_paired_data
from trainer.export import CARD, ONNX, SAMPLES, WEIGHTS, load_generator


def run_search(tmp_path: Path, *extra: str) -> int:
    return search_exit_code(["--config", str(TINY), "--storage-path", str(tmp_path), "--wandb", "off", *extra])


@pytest.fixture(scope="module")
def finished_search(ray_session, tmp_path_factory) -> Path:
    storage = tmp_path_factory.mktemp("experiments")
    assert run_search(storage, "--name", "tiny") == 0
    return storage / "tiny"


def test_every_trial_is_accounted_for_and_in_the_space(finished_search: Path) -> None:
    summary = json.loads((finished_search / "summary.json").read_text())
    spec = load_spec(TINY)
    assert len(summary["trials"]) == spec.search.num_samples
    for trial in summary["trials"]:
        for name, param in spec.space.items():
            assert param.contains(trial["params"][name]), (name, trial["params"][name])
        assert trial["status"] in ("finished", "stopped_asha", "stopped_plateau")
        assert len(trial["history"]) == trial["epochs"]


def test_later_trials_run_in_the_worker_processes_of_ended_ones(finished_search: Path) -> None:
    """Tune's reuse_actors: 4 trials, 2 at a time, in 2 processes (no torch import per trial)."""
    pids = {json.loads(p.read_text().splitlines()[0])["pid"] for p in finished_search.glob("run_trial_*/result.json")}
    assert len(pids) == load_spec(TINY).search.max_concurrent, pids


def test_early_stopping_ends_some_trials_before_the_last_epoch(finished_search: Path) -> None:
    summary = json.loads((finished_search / "summary.json").read_text())
    stopped = [t for t in summary["trials"] if t["status"] in ("stopped_asha", "stopped_plateau")]
    assert stopped, [t["status"] for t in summary["trials"]]
    assert all(t["epochs"] < 3 or t["status"] == "stopped_plateau" for t in stopped)


def test_ended_trials_keep_only_the_best_generators(finished_search: Path) -> None:
    summary = json.loads((finished_search / "summary.json").read_text())
    spec = load_spec(TINY)
    trial_dirs = sorted(finished_search.glob("run_trial_*"))
    assert len(trial_dirs) == spec.search.num_samples
    references = {r["trial_id"] for r in summary["references"].values()}  # scored on test after the search
    searched = sorted(
        (t for t in summary["trials"] if t["trial_id"] not in references), key=lambda t: -t["best_val_ssim"]
    )
    keeps = references | {t["trial_id"] for t in searched[: spec.search.keep_generators]}
    assert len(keeps) < len(trial_dirs)  # the tiny spec has a trial to drop
    for trial_dir in trial_dirs:
        trial = next(t for t in summary["trials"] if trial_dir.name.startswith(f"run_trial_{t['trial_id']}"))
        # One Tune checkpoint, its latest, without the full state (D, optimizers) once the trial ended.
        assert [p.name for p in trial_dir.glob("checkpoint_*")] == [f"checkpoint_{trial['epochs'] - 1:06d}"]
        assert not list(trial_dir.rglob(LAST))
        kept = list(trial_dir.glob(f"checkpoint_*/{BEST_GENERATOR}"))
        assert len(kept) == (trial["trial_id"] in keeps), trial_dir.name
        for path in kept:
            state = load_torch(path)
            assert state["epoch"] == trial["best_epoch"] and "opt_G" not in state and "D" not in state
        # The trainer's own run folder was scratch space: no second copy of the checkpoints.
        assert not [p for p in trial_dir.rglob("*.pt") if not p.parent.name.startswith("checkpoint_")]


def test_optuna_study_agrees_with_the_export_and_the_trials(finished_search: Path) -> None:
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{finished_search / 'optuna.db'}")
    summary = json.loads((finished_search / "summary.json").read_text())
    l1_only = summary["references"]["l1_only"]["trial_id"]  # no point of the space: not in the study
    trials = {t["trial_id"]: t for t in summary["trials"] if t["trial_id"] != l1_only}
    assert sorted(t.user_attrs["trial_id"] for t in study.trials) == sorted(trials)
    best_in_study = max(trials.values(), key=lambda t: t["best_val_ssim"])
    assert study.best_trial.user_attrs["trial_id"] == best_in_study["trial_id"]
    card = json.loads((finished_search / "best" / CARD).read_text())
    if card["kind"] != "l1_only":  # the export, unless the reference outside the study won it
        assert study.best_trial.user_attrs["trial_id"] == card["trial_id"]
        assert study.best_trial.value == pytest.approx(card["val"]["val_ssim"], abs=1e-5)
    store = optuna.artifacts.FileSystemArtifactStore(str(finished_search / "optuna_artifacts"))
    for trial in study.trials:  # stopped trials too: a value, every epoch, and how they ended
        record = trials[trial.user_attrs["trial_id"]]
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert trial.value == pytest.approx(record["best_val_ssim"])
        assert trial.intermediate_values == pytest.approx({int(h["epoch"]): h["val_ssim"] for h in record["history"]})
        assert trial.user_attrs["end_reason"] == record["status"]
        assert trial.datetime_start < trial.datetime_complete
        (panel,) = optuna.artifacts.get_all_artifact_meta(trial, storage=study._storage)
        with store.open_reader(panel.artifact_id) as reader:
            assert reader.read(8) == b"\x89PNG\r\n\x1a\n"
    starts = [t.datetime_start for t in study.trials]
    assert starts == sorted(starts), "trials are not numbered in launch order"


def test_export_is_the_best_epoch_of_the_best_trial(finished_search: Path) -> None:
    summary = json.loads((finished_search / "summary.json").read_text())
    best_trial = max(summary["trials"], key=lambda t: t["best_val_ssim"])  # the references compete too
    card = json.loads((finished_search / "best" / CARD).read_text())
    assert card["trial_id"] == best_trial["trial_id"]
    kinds = {r["trial_id"]: kind for kind, r in summary["references"].items()}
    assert card["kind"] == summary["best"]["kind"] == kinds.get(best_trial["trial_id"], "searched")
    assert card["epoch"] == best_trial["best_epoch"]
    assert card["val"]["val_ssim"] == pytest.approx(best_trial["best_val_ssim"], abs=1e-5)
    for name in ("lambda_l1", "dropout", "lr_G", "lr_D"):
        assert card["hyperparameters"][name] == pytest.approx(best_trial["params"][name])
    assert {"torch", "ray", "optuna"} <= set(card["versions"])
    assert (finished_search / "best" / SAMPLES).stat().st_size > 0
    assert (finished_search / "report.html").is_file()


def test_the_search_runs_the_papers_settings_first_then_without_the_discriminator(finished_search: Path) -> None:
    summary = json.loads((finished_search / "summary.json").read_text())
    paper = {"lambda_l1": 100.0, "dropout": 0.5, "lr_G": 2e-4, "lr_D": 2e-4}  # Isola et al. 2017
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{finished_search / 'optuna.db'}")
    assert study.trials[0].params == paper  # Optuna's first trial, enqueued
    references = summary["references"]
    trials = {t["trial_id"]: t for t in summary["trials"]}
    assert trials[references["paper"]["trial_id"]]["params"] == paper == references["paper"]["params"]
    l1_only = trials[references["l1_only"]["trial_id"]]
    assert l1_only["params"] == {**paper, "gan_weight": 0.0}
    assert all("G_GAN" not in row and row["G_L1"] is not None for row in l1_only["history"]), "it trained without D"
    cfg = load_spec(TINY).trial_config({})
    test = load_paired_data(cfg.data, cfg.size, cfg.split_seed).splits["test"]
    for reference in references.values():
        trial = trials[reference["trial_id"]]
        assert reference["val"]["val_ssim"] == pytest.approx(trial["best_val_ssim"])
        # its best epoch scored on test, recomputed with scikit-image from the generator it kept
        (kept,) = finished_search.glob(f"run_trial_{reference['trial_id']}*/checkpoint_*/{BEST_GENERATOR}")
        state = RunState.load(kept)
        assert state.epoch == reference["best_epoch"]
        ssim, psnr, mae = skimage_scores(state.generator(), test)
        assert reference["test"]["test_ssim"] == pytest.approx(ssim, abs=1e-3)
        assert reference["test"]["test_mae"] == pytest.approx(mae, abs=1e-3)
    card = json.loads((finished_search / "best" / CARD).read_text())
    assert card["references"] == references
    assert summary["best"]["baseline_val"] == {"name": "identity", **card["identity_val"]}
    assert summary["best"]["baseline_test"] == {"name": "identity", **card["identity_test"]}
    body = (finished_search / "best" / "README.md").read_text()
    assert "L1 only (paper's settings, no discriminator)" in body
    assert f"{references['l1_only']['val']['val_ssim']:.4f}" in body
    assert f"{references['l1_only']['test']['test_ssim']:.4f}" in body
    assert card["kind_label"] in body
    report = (finished_search / "report.html").read_text()
    section = report[report.index("Best trial against the references") :]
    section = section[: section.index("</table>")]
    assert all(r["trial_id"] in section for r in references.values()) and summary["best"]["trial_id"] in section


def test_readme_model_card_holds_the_numbers_of_model_card_json(finished_search: Path) -> None:
    best = finished_search / "best"
    card = json.loads((best / CARD).read_text())
    _, front, body = (best / "README.md").read_text().split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "pytorch" and "pix2pix" in meta["tags"]
    (result,) = meta["model-index"][0]["results"]
    assert result["dataset"]["name"] == card["data"]["source"]
    assert {m["type"]: m["value"] for m in result["metrics"]} == {
        k: card["test"][f"test_{k}"] for k in ("ssim", "psnr", "mae")
    }
    for section in ("## Data", "## Test metrics", "## Hyperparameters", "## How to run it", "## Limitations"):
        assert section in body
    assert card["data"]["split_hash"] in body and "trainer.predict" in body and "onnxruntime" in body
    assert f"{card['identity_test']['test_ssim']:.4f}" in body  # the baseline beside the model
    # 128 px glyph files, a 32 px model: the card also scores the images at their own size
    assert card["test_native_sizes"] == [[128, 128]]
    for key in ("test_native", "identity_test_native"):
        assert f"{card[key]['test_ssim']:.4f}" in body
    summary = json.loads((finished_search / "summary.json").read_text())
    assert summary["best"]["test_native"] == card["test_native"]
    beaten = card["test_native"]["test_ssim"] > card["identity_test_native"]["test_ssim"]
    assert (summary["best"]["native_note"] is None) == beaten
    assert json.loads((best / "config.json").read_text())["train_config"] == card["train_config"]


def test_exported_weights_load_safely_and_onnx_matches(finished_search: Path) -> None:
    best = finished_search / "best"
    saved = torch.load(best / WEIGHTS, map_location="cpu", weights_only=True)
    assert set(saved) == {"generator_config", "state_dict"}
    G, card = load_generator(best)
    size, channels = card["generator_config"]["size"], card["generator_config"]["in_channels"]
    x = torch.rand(5, channels, size, size) * 2 - 1
    with torch.no_grad():
        expected = G(x).numpy()
    session = onnxruntime.InferenceSession(str(best / ONNX), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(got - expected).max() < 1e-4
    scripted = torch.jit.load(str(best / "generator.torchscript.pt"))
    with torch.no_grad():
        assert torch.allclose(scripted(x), torch.from_numpy(expected), atol=1e-5)


def skimage_scores(G: torch.nn.Module, images: PairedImages) -> tuple[float, float, float]:
    """Mean SSIM, PSNR and MAE of G's outputs over `images`, one image at a time, by scikit-image."""
    ssim, psnr, mae = [], [], []
    for i in range(len(images)):
        a, b = images.batch(torch.tensor([i]))
        with torch.no_grad():
            out = G(a)[0].permute(1, 2, 0).double().numpy()
        target = b[0].permute(1, 2, 0).double().numpy()
        ssim.append(structural_similarity(target, out, data_range=2.0, channel_axis=2))
        psnr.append(peak_signal_noise_ratio(target, out, data_range=2.0))
        mae.append(np.abs(target - out).mean())
    return float(np.mean(ssim)), float(np.mean(psnr)), float(np.mean(mae))


def test_card_test_metrics_equal_an_independent_skimage_recomputation(finished_search: Path) -> None:
    G, card = load_generator(finished_search / "best")
    cfg = card["train_config"]
    test = load_paired_data(cfg["data"], cfg["size"], cfg["split_seed"]).splits["test"]
    assert len(test) == card["test_images"]
    ssim, psnr, mae = skimage_scores(G, test)
    assert card["test"]["test_ssim"] == pytest.approx(ssim, abs=1e-3)
    assert card["test"]["test_psnr"] == pytest.approx(psnr, abs=1e-3)
    assert card["test"]["test_mae"] == pytest.approx(mae, abs=1e-3)
    assert card["identity_test"]["test_ssim"] < 1.0  # glyph pairs differ: the baseline is finite


def test_a_diverging_trial_fails_with_its_reason_and_the_search_goes_on(ray_session, tmp_path: Path) -> None:
    spec = tmp_path / "diverge.yaml"
    text = (
        TINY.read_text()
        .replace(
            "lambda_l1: {type: float, low: 10.0, high: 500.0, log: true}",
            "lambda_l1: {type: categorical, choices: [1.0e+39, 100.0]}",  # 1e39 * L1 overflows float32
        )
        .replace("startup_trials: 2", "startup_trials: 4")  # the paper's lambda 100 first, then 3 random draws
        .replace("seed: 0", "seed: 0\n  l1_reference: false")
    )
    spec.write_text(text)
    code = search.main(
        ["--config", str(spec), "--storage-path", str(tmp_path), "--name", "nan", "--wandb", "off", "--epochs", "1"]
    )
    summary = json.loads((tmp_path / "nan" / "summary.json").read_text())
    statuses = {t["params"]["lambda_l1"]: t["status"] for t in summary["trials"]}
    assert len(summary["trials"]) == 4 and summary["references"].keys() == {"paper"}
    failed = [t for t in summary["trials"] if t["status"] == "failed"]
    assert failed and all(t["params"]["lambda_l1"] == 1e39 for t in failed), statuses
    assert all("NaN or infinite" in t["reason"] for t in failed)
    assert any(t["status"] == "finished" for t in summary["trials"]), statuses
    assert code == 0 and summary["best"]["params"]["lambda_l1"] == 100.0
    study = optuna.load_study(study_name="nan", storage=f"sqlite:///{tmp_path / 'nan' / 'optuna.db'}")
    states = {t.user_attrs["trial_id"]: (t.state, t.user_attrs["end_reason"]) for t in study.trials}
    assert states == {
        t["trial_id"]: (
            optuna.trial.TrialState.FAIL if t["status"] == "failed" else optuna.trial.TrialState.COMPLETE,
            t["status"],
        )
        for t in summary["trials"]
    }


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--epochs", "4"], "--epochs cannot change on --resume (the search started with 3, not 4)"),
        (["--grace-period", "2"], "--grace-period cannot change on --resume (the search started with 1, not 2)"),
        (
            ["--config", "OTHER"],
            "train.max_train_images cannot change on --resume (the search started with 128, not 64)",
        ),
    ],
)
def test_resume_refuses_a_change_that_shapes_the_trials(tmp_path: Path, capsys, flags: list, expected: str) -> None:
    save_spec(load_spec(TINY), tmp_path / "tiny-x")
    other = tmp_path / "other.yaml"
    other.write_text(TINY.read_text().replace("max_train_images: 128", "max_train_images: 64"))  # a key with no flag
    flags = [str(other) if f == "OTHER" else f for f in flags]
    with pytest.raises(SystemExit) as exit_:
        search.main(["--storage-path", str(tmp_path), "--name", "tiny-x", "--resume", *flags])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err and "spec.yaml" in err, err


def test_time_budget_ends_running_trials_and_the_best_so_far_is_exported(ray_session, tmp_path: Path) -> None:
    # Trials of 500 epochs that neither ASHA nor the plateau rule may stop: only the budget ends them.
    flags = ["--epochs", "500", "--num-samples", "2", "--grace-period", "500", "--stop-patience", "0"]
    spec = tmp_path / "candidates_only.yaml"  # both trials candidates for the export, no L1-only reference
    spec.write_text(TINY.read_text().replace("seed: 0", "seed: 0\n  l1_reference: false"))
    started = time.time()
    command = ["--config", str(spec), "--storage-path", str(tmp_path), "--wandb", "off", "--name", "budget", *flags]
    assert search.main([*command, "--time-budget", "25s"]) == 0
    wall = time.time() - started
    experiment = tmp_path / "budget"
    summary = json.loads((experiment / "summary.json").read_text())
    assert [t["status"] for t in summary["trials"]] == ["stopped_budget"] * 2, summary["trials"]
    assert all("time budget (25 s)" in t["reason"] and t["epochs"] < 500 for t in summary["trials"])
    card = json.loads((experiment / "best" / CARD).read_text())
    best = max((t for t in summary["trials"] if t["epochs"]), key=lambda t: t["best_val_ssim"])
    assert card["trial_id"] == best["trial_id"] and card["epoch"] == best["best_epoch"]
    # The budget can end a trial between its last result and Tune registering that result's checkpoint:
    # the summary, the study and the card all name the saved best epoch, the one exported.
    study = optuna.load_study(study_name="budget", storage=f"sqlite:///{experiment / 'optuna.db'}")
    assert study.best_trial.user_attrs["trial_id"] == card["trial_id"]
    assert study.best_trial.user_attrs["best_epoch"] == card["epoch"]
    assert not list(experiment.rglob(LAST))  # budget-ended trials are trimmed like finished ones
    assert wall < 25 + 60, f"{wall:.0f} s for a 25 s budget"  # Ray is already up; export and report remain


def test_resume_without_name_picks_the_latest_search_of_this_spec_only(tmp_path: Path) -> None:
    for name in ("tiny-20261125-101500", "tiny-gpu-20261126-090000", "tiny-notes"):
        (tmp_path / name).mkdir()
    args = search.parse_args(["--config", str(TINY), "--resume"])
    assert search.experiment_name(args, str(tmp_path)) == "tiny-20261125-101500"


def test_a_search_with_epochs_auto_runs_and_ends_trials_on_the_resolved_number(ray_session, tmp_path: Path) -> None:
    spec = yaml.safe_load(TINY.read_text())
    spec["train"]["epochs"] = "auto"  # 128 training glyphs an epoch: 256 images take 2 epochs
    spec["search"].update(num_samples=2, min_train_images=256, stop_patience=0)
    config = tmp_path / "auto.yaml"
    config.write_text(yaml.safe_dump(spec))
    assert search.main(["--config", str(config), "--storage-path", str(tmp_path), "--wandb", "off", "--name", "a"]) == 0
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["epochs_note"].startswith("2 epochs (auto: 128 of 128 training pairs")
    assert summary["fixed"]["epochs"] == 2
    for trial in summary["trials"]:  # ASHA's max_t is 2: a trial that ran 2 epochs finished, none ran more
        assert trial["epochs"] <= 2 and (trial["status"] == "finished") == (trial["epochs"] == 2), trial


def test_epochs_auto_gives_each_trial_min_train_images_and_at_least_the_grace_period() -> None:
    spec = load_spec(DEFAULT_SPEC)  # glyphs: max_train_images 768, batch 16, min_train_images 6144
    assert spec.epochs_auto and spec.search.min_train_images == 6144
    with pytest.raises(RuntimeError, match="auto"):
        spec.trial_config({})  # no trial may start on an unresolved number
    resolved = resolve_epochs(spec)  # loads the glyph training split as a trial does
    assert resolved.trial_config({}).epochs == 8 and resolved.auto_train_images == 768  # as long as before auto
    assert resolved.describe_epochs().startswith("8 epochs (auto: 768 of 768 training pairs an epoch")
    # 235 pairs: 14 steps of 16 = 224 pairs an epoch, 6144 / 224 = 27.4 -> 28 epochs (3.5x the steps of 8 epochs)
    assert spec.with_epochs_for(235).trial_config({}).epochs == 28
    assert spec.with_epochs_for(100_000).trial_config({}).epochs == spec.search.grace_period
    explicit = spec.with_overrides({"epochs": 5}, {})
    assert not explicit.epochs_auto and resolve_epochs(explicit) == explicit
    assert explicit.trial_config({}).epochs == 5 and explicit.describe_epochs() == "5 epochs"
    # and back from the command line, as the spec writes it
    back = search.spec_from_args(search.parse_args(["--epochs", "auto"]), explicit)
    assert back.epochs_auto and back.with_epochs_for(235).trial_config({}).epochs == 28


def test_time_budget_reads_durations() -> None:
    assert [parse_duration(v, "x") for v in (600, "90s", "10m", "1.5h", "0")] == [600, 90, 600, 5400, 0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("space:\n  dropout: {type: float, low: 0.6, high: 0.1}\n", "space.dropout: low must be < high"),
        ("space:\n  lr_G: {type: float, low: 0.0, high: 0.1, log: true}\n", "log-scaled range needs low > 0"),
        ("space:\n  lamda_l1: {type: float, low: 1, high: 2}\n", "lamda_l1 is not a trainer parameter"),
        ("space:\n  dropout: {type: uniform, low: 0, high: 1}\n", "space.dropout.type must be one of"),
        ("search:\n  num_samples: many\n", "search.num_samples must be an integer"),
        ("search:\n  samples: 3\n", "unknown key(s) search.samples"),
        ("search:\n  time_budget: ten minutes\n", "search.time_budget must be a duration such as"),
        ("search:\n  keep_full_state: 1\n", "search.keep_full_state must be true or false"),
        ("search:\n  keep_generators: 0\n", "search.keep_generators must be >= 1"),
        ("space:\n  epochs: {type: int, low: 2, high: 8}\n", "space.epochs: epochs cannot be searched"),
        ("train:\n  size: 48\n", "size must be a power of 2"),
        ("train:\n  epochs: 2.5\n", "epochs must be an integer"),
        ("train:\n  epochs: automatic\n", "train.epochs must be an integer or auto"),
        ("search:\n  min_train_images: 0\n", "search.min_train_images must be >= 1"),
        ("space:\n  lr_D: {type: float, low: 3.0e-4, high: 1.0e-3}\n", "space.lr_D excludes 0.0002, the paper's"),
        ("spaces: {}\n", "unknown section(s) spaces"),
        ("space: [\n", "not valid YAML"),
        ("train:\n  dropout: 0.1\nspace:\n  dropout: {type: float, low: 0, high: 0.5}\n", "in both train and space"),
    ],
)
def test_bad_spec_is_one_line_naming_file_and_key(tmp_path: Path, capsys, text: str, expected: str) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(text)
    with pytest.raises(SystemExit) as exit_:
        search.main(["--config", str(spec), "--storage-path", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(spec) in err and expected in err, err


def test_bad_spec_from_the_command_line_has_no_traceback(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("space:\n  dropout: {type: float, low: 0.6, high: 0.1}\n")
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.search", "--config", str(spec)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=search_env(),
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_remote_storage_uri_gets_the_export_next_to_tunes_results(tmp_path: Path, monkeypatch, capsys) -> None:
    """A storage URI (file:// here, s3:// on a cluster): our outputs are made locally, then uploaded."""
    store = tmp_path / "store"
    done = subprocess.run(
        search_command(f"file://{store}", "remote", "--num-samples", "2", "--epochs", "1", "--wandb", "off"),
        cwd=tmp_path,
        env=search_env(),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert list(store.glob("remote/run_trial_*")), "Tune's results are not on the storage path"
    for name in ("best/model_card.json", "best/generator.pt", "summary.json", "report.html", "optuna.db"):
        assert (store / "remote" / name).is_file(), name
    assert (tmp_path / "experiments" / "remote" / "summary.json").is_file()  # the local copy
    # The same name again without --resume (in this process): refused before Ray starts, as for a local folder.
    monkeypatch.chdir(tmp_path)
    assert run_search(f"file://{store}", "--name", "remote") == 2
    assert "already exists; pass --resume" in capsys.readouterr().err
