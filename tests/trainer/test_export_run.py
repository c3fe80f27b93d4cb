"""`python -m trainer.export`: one `trainer.train` run becomes the same export folder a search writes,
and trainer.predict translates with it: images, and volumes back into HU."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import nibabel as nib
import numpy as np
import pytest
from test_trainer_cli import TINY_FLAGS, assert_one_line_error, run_cli
from test_volumes import HU_WINDOW, write_subjects

from trainer import predict as predict_cli
from trainer.checkpoint import BEST
from trainer.config import TrainConfig
from trainer.data import SPLIT_FILE
from trainer.export import CARD, CONFIG, ONNX, README, SAFETENSORS
from trainer.export.__main__ import export_run
from trainer.loop import train


@pytest.mark.slow  # trains, or runs a subprocess, for seconds (tests/conftest.py: tiers)
def test_a_trained_run_exports_and_predicts_from_the_command_line(tmp_path: Path, glyphs_root: Path) -> None:
    run, model = tmp_path / "run", tmp_path / "model"
    done = run_cli("trainer.train", "--data", "builtin:glyphs", *TINY_FLAGS, "--out", run, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    done = run_cli("trainer.export", "--run", run, "--out", model, "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"python -m trainer.predict --model {model}" in done.stdout
    card = json.loads((model / CARD).read_text())
    assert {SAFETENSORS, CONFIG, README, ONNX, "generator.pt", "samples.png"} <= set(card["files"])
    assert sorted(card["files"]) == sorted(p.name for p in model.iterdir())
    assert card["run"] == "run" and card["test"]["test_ssim"] is not None and card["identity_test"]
    assert card["data"]["split_hash"] == json.loads((run / SPLIT_FILE).read_text())["hash"]

    images = tmp_path / "images"
    images.mkdir()
    iio.imwrite(images / "a.png", np.random.default_rng(0).integers(0, 256, (40, 28), dtype=np.uint8))
    done = run_cli("trainer.predict", "--model", model, "--input", images, "--output", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert iio.imread(tmp_path / "out" / "a.png").shape[:2] == (40, 28)


@pytest.mark.slow  # seconds: a subprocess, a training or a W&B run (tests/conftest.py: tiers)
def test_a_volume_run_exports_and_translates_back_into_hu(tmp_path: Path) -> None:
    root = write_subjects(tmp_path / "data", count=8, masks=True)
    run = tmp_path / "run"
    cfg = TrainConfig(
        data=str(root), size=32, batch_size=8, ngf=8, ndf=8, epochs=1, device="cpu", precision="fp32", **HU_WINDOW
    )
    for _ in train(cfg, run):
        pass
    card = export_run(run, tmp_path / "model", device="cpu")
    assert card["intensity"]["B"] == {"mode": "window", "low": -1000.0, "high": 2000.0}
    assert card["test"]["test_mae"] is not None
    subject = json.loads((run / SPLIT_FILE).read_text())["splits"]["test"][0]
    source = root / "A" / f"{subject}.nii.gz"
    predict_cli.main(["--model", str(tmp_path / "model"), "--input", str(source), "--output", str(tmp_path / "out")])
    written, original = nib.load(tmp_path / "out" / source.name), nib.load(source)
    np.testing.assert_array_equal(written.affine, original.affine)
    values = written.get_fdata()
    assert -1000.0 - 1e-3 <= values.min() and values.max() <= 2000.0 + 1e-3  # HU, inside the window


@pytest.mark.slow  # trains, or runs a subprocess, for seconds (tests/conftest.py: tiers)
def test_bad_runs_and_folders_stop_with_one_line_and_change_nothing(tmp_path: Path) -> None:
    done = run_cli("trainer.export", "--run", tmp_path / "nope", "--out", tmp_path / "model", cwd=tmp_path)
    assert done.returncode == 2
    assert_one_line_error(done.stderr, "no best.pt", "trainer.train")
    run = tmp_path / "run"
    run.mkdir()
    (run / BEST).write_bytes(b"")  # never read: the --out check comes first
    keep = tmp_path / "photos"
    keep.mkdir()
    (keep / "mine.jpg").write_bytes(b"precious")
    done = run_cli("trainer.export", "--run", run, "--out", keep, cwd=tmp_path)
    assert done.returncode == 2
    assert_one_line_error(done.stderr, "no export folder")
    assert (keep / "mine.jpg").read_bytes() == b"precious"
