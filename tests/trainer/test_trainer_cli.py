"""The trainer's command lines, run as users run them: flags, clean errors, train -> evaluate, predict."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import PairedFolder
from safetensors import safe_open
from safetensors.torch import save_file
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from trainer import evaluate as evaluate_cli
from trainer import predict as predict_cli
from trainer import train as train_cli
from trainer.checkpoint import BEST, LAST, RunState, load_torch, save_torch
from trainer.config import GeneratorConfig, TrainConfig
from trainer.data import png_bytes
from trainer.export import export_generator, load_generator
from trainer.memory import available_bytes, generator_bytes
from trainer.models import UNetGenerator, init_weights
from trainer.translation import match_channels

MakeFolder = Callable[..., PairedFolder]
TINY_FLAGS = ["--size", "32", "--epochs", "2", "--ngf", "8", "--ndf", "8", "--batch_size", "8"]
TINY_FLAGS += ["--max_train_images", "64", "--precision", "fp32", "--device", "cpu"]


def run_cli(module: str, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", module, *map(str, args)]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300, env=os.environ.copy())


def assert_one_line_error(stderr: str, *expected: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    for text in expected:
        assert text in lines[0], (text, lines[0])


# ---------------------------------------------------------------------------------------------
# flags


def test_every_config_field_is_a_flag_in_both_spellings() -> None:
    options = {option for action in train_cli.build_parser()._actions for option in action.option_strings}
    for field in dataclasses.fields(TrainConfig):
        assert f"--{field.name}" in options
        assert f"--{field.name.replace('_', '-')}" in options


def test_defaults_come_from_the_config() -> None:
    cfg, out, resume = train_cli.parse_args([])
    assert cfg == TrainConfig() and out == Path("runs/glyphs-256px") and not resume


def test_flags_set_config_fields() -> None:
    argv = ["--lambda-l1", "10", "--lr_G", "1e-3", "--no-flip", "--lr_policy", "cosine", "--channels-last", "off"]
    cfg, out, _ = train_cli.parse_args([*argv, "--data", "/data/facades", "--out", "x", "--resume"])
    expected = TrainConfig(data="/data/facades", lambda_l1=10.0, lr_G=1e-3, flip=False, lr_policy="cosine")
    assert cfg == expected.replace(channels_last="off") and out == Path("x")
    assert train_cli.parse_args(["--data", "/data/facades/", "--size", "64"])[1] == Path("runs/facades-64px")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--batch_size", "many"], "--batch_size/--batch-size: invalid int value"),
        (["--lr_policy", "step"], "invalid choice: 'step'"),
        (["--dropout", "1.5"], "dropout must be in [0, 1)"),
        (["--unknown"], "unrecognized arguments: --unknown"),
    ],
)
def test_bad_flags_are_one_line_errors(argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(argv)
    assert exit_info.value.code == 2
    assert_one_line_error(capsys.readouterr().err, expected)


# ---------------------------------------------------------------------------------------------
# bad input: exit 2, one line naming the file or field, and no checkpoint written


def missing_folder(tmp_path: Path, paired_folder: MakeFolder) -> tuple[Path, list[str]]:
    return tmp_path / "nowhere", ["nowhere", "data folder not found"]


def unpaired_names(tmp_path: Path, paired_folder: MakeFolder) -> tuple[Path, list[str]]:
    root = paired_folder(count=6).root
    shutil.copy(root / "A" / "img001.png", root / "A" / "extra.png")
    return root, ["extra.png", "needs a B image with the same name"]


def odd_width(tmp_path: Path, paired_folder: MakeFolder) -> tuple[Path, list[str]]:
    root = paired_folder(count=6, layout="side_by_side").root
    iio.imwrite(root / "img003.png", np.zeros((32, 63, 3), np.uint8))
    return root, ["img003.png", "width 63 is odd", "must be even"]


def corrupt_image(tmp_path: Path, paired_folder: MakeFolder) -> tuple[Path, list[str]]:
    root = paired_folder(count=6).root
    (root / "B" / "img004.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    return root, ["img004.png", "cannot be read as an image", "replace or remove it"]


@pytest.mark.slow  # trains for seconds (tests/conftest.py: tiers)
@pytest.mark.parametrize("make_bad_input", [missing_folder, unpaired_names, odd_width, corrupt_image])
def test_bad_data_is_refused_cleanly(
    make_bad_input: Callable[..., tuple[Path, list[str]]], paired_folder: MakeFolder, tmp_path: Path
) -> None:
    data, expected = make_bad_input(tmp_path, paired_folder)
    out = tmp_path / "run"
    result = run_cli("trainer.train", "--data", data, *TINY_FLAGS, "--out", out, cwd=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, *expected)
    assert not out.exists()  # the data is checked before anything is written


@pytest.mark.slow  # trains for seconds (tests/conftest.py: tiers)
def test_size_must_be_a_power_of_two(paired_folder: MakeFolder, tmp_path: Path) -> None:
    data, out = paired_folder(count=6).root, tmp_path / "run"
    result = run_cli("trainer.train", "--data", data, *TINY_FLAGS, "--size", "48", "--out", out, cwd=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "size must be a power of 2", "(got 48)")
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# train -> evaluate


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, glyphs_root: Path) -> tuple[Path, str]:
    """A 2-epoch glyph run made by the training CLI: its folder and what it printed."""
    workdir = tmp_path_factory.mktemp("cli")
    result = run_cli("trainer.train", "--data", "builtin:glyphs", *TINY_FLAGS, "--out", "run", cwd=workdir)
    assert result.returncode == 0, result.stderr
    return workdir / "run", result.stdout


@pytest.mark.slow  # trains for seconds (tests/conftest.py: tiers)
def test_train_reports_every_epoch_and_the_best_against_identity(tiny_run: tuple[Path, str]) -> None:
    run_dir, stdout = tiny_run
    for text in ("epoch 1/2", "epoch 2/2", "G_GAN", "G_L1", "D_real", "D_fake", "val_ssim", "val_psnr", "val_mae"):
        assert text in stdout
    assert "lr_G 2.00e-04" in stdout and "lr_G 1.00e-04" in stdout
    assert "identity (output = input)" in stdout and "SSIM" in stdout and "MAE" in stdout
    assert f"{Path(run_dir.name) / BEST} (epoch 2)" in stdout  # --out was given as "run"
    assert load_torch(run_dir / LAST)["epoch"] == 2


def test_train_refuses_to_overwrite_a_run(tiny_run: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, _ = tiny_run
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(["--data", "builtin:glyphs", *TINY_FLAGS, "--out", str(run_dir)])
    assert exit_info.value.code == 2
    assert_one_line_error(capsys.readouterr().err, str(run_dir / LAST), "--resume", "another --out")


def test_resume_of_a_finished_run_only_reports(tiny_run: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, _ = tiny_run
    before = (run_dir / LAST).stat().st_mtime_ns
    train_cli.main(["--data", "builtin:glyphs", *TINY_FLAGS, "--out", str(run_dir), "--resume"])
    assert "best epoch" in capsys.readouterr().out
    assert (run_dir / LAST).stat().st_mtime_ns == before


@pytest.mark.slow  # trains for seconds (tests/conftest.py: tiers)
def test_evaluate_prints_the_table_and_writes_the_grid(tiny_run: tuple[Path, str]) -> None:
    run_dir, _ = tiny_run
    result = run_cli("trainer.evaluate", "--checkpoint", run_dir / BEST, "--split", "test", cwd=run_dir)
    assert result.returncode == 0, result.stderr
    for text in ("on test", "SSIM", "PSNR", "MAE", "identity (output = input)", "at the images' own size (128x128"):
        assert text in result.stdout
    grid = iio.imread(run_dir / "test_samples.png")
    assert grid.shape == (8 * 32 + 7 * 2, 3 * 32 + 2 * 2, 3)  # 8 rows of input | output | target


@pytest.mark.slow  # trains for seconds (tests/conftest.py: tiers)
def test_evaluate_checkpoint_uses_the_runs_split(tiny_run: tuple[Path, str]) -> None:
    run_dir, _ = tiny_run
    result = evaluate_cli.evaluate_checkpoint(run_dir / BEST, split="val", device="cpu")
    history = load_torch(run_dir / BEST)["history"]
    # fp32 run: the val SSIM of the best epoch is what the loop recorded for it
    assert result.metrics["val_ssim"] == pytest.approx(history[result.epoch - 1]["val_ssim"], abs=1e-6)
    assert result.baseline is not None and set(result.baseline) == {"val_ssim", "val_psnr", "val_mae"}
    assert [t.shape for t in result.samples] == [(8, 1, 32, 32)] * 3


@pytest.mark.slow  # trains for seconds (tests/conftest.py: tiers)
def test_evaluate_reads_and_writes_nothing_beside_the_checkpoint(tiny_run: tuple[Path, str], tmp_path: Path) -> None:
    """A read-only command: a checkpoint copied alone (no split.json) is scored on the split its
    seed gives, checked against the checkpoint's split hash, and its folder is left as it was."""
    run_dir, _ = tiny_run
    shutil.copy(run_dir / BEST, tmp_path / BEST)
    result = evaluate_cli.evaluate_checkpoint(tmp_path / BEST, split="val", device="cpu")
    assert result.metrics["val_ssim"] > 0
    assert [p.name for p in tmp_path.iterdir()] == [BEST]


@pytest.mark.slow  # trains for seconds (tests/conftest.py: tiers)
def test_native_size_metrics_equal_skimage_on_the_images_predict_writes(
    tiny_run: tuple[Path, str], glyphs_root: Path, tmp_path: Path
) -> None:
    """Glyphs are 128 px files and the model works at 32 px: the native scores are those of
    trainer.predict's PNGs against the target files, computed here with scikit-image alone
    (7x7 window, K1 0.01, K2 0.03, sample covariance, data range 2 on [-1, 1]; trainer.metrics)."""
    run_dir, _ = tiny_run
    result = evaluate_cli.evaluate_checkpoint(run_dir / BEST, split="test", device="cpu")
    assert result.native is not None and result.native.sizes == [(128, 128)]
    G = RunState.load(run_dir / BEST).generator()
    weights = tmp_path / "generator.pt"
    torch.save({"generator_config": dataclasses.asdict(G.cfg), "state_dict": G.state_dict()}, weights)
    inputs, targets = glyphs_root / "test" / "A", glyphs_root / "test" / "B"
    predict_cli.translate_folder(weights, inputs, tmp_path / "out", device="cpu")

    def unit(path: Path) -> np.ndarray:
        return iio.imread(path).astype(np.float64) / 255 * 2 - 1

    scores: dict[str, list[tuple[float, float, float]]] = {"model": [], "identity": []}
    for path in sorted(inputs.iterdir()):
        target = unit(targets / path.name)
        for kind, output in (("model", unit(tmp_path / "out" / f"{path.stem}.png")), ("identity", unit(path))):
            ssim = structural_similarity(target, output, data_range=2.0)
            scores[kind].append(
                (ssim, peak_signal_noise_ratio(target, output, data_range=2.0), np.abs(target - output).mean())
            )
    assert len(scores["model"]) == result.pairs
    for kind, metrics in (("model", result.native.metrics), ("identity", result.native.baseline)):
        ssim, psnr, mae = np.mean(scores[kind], axis=0)
        assert metrics["test_ssim"] == pytest.approx(ssim, abs=1e-3), kind
        assert metrics["test_psnr"] == pytest.approx(psnr, abs=1e-3), kind
        assert metrics["test_mae"] == pytest.approx(mae, abs=1e-3), kind
    assert result.native.metrics != pytest.approx(result.metrics, abs=1e-3)  # not the 32 px scores again


def test_evaluate_refuses_a_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        evaluate_cli.main(["--checkpoint", str(tmp_path / "best.pt")])
    assert exit_info.value.code == 2
    assert_one_line_error(capsys.readouterr().err, "best.pt: checkpoint not found")


@pytest.mark.slow  # seconds: a subprocess, a training or a W&B run (tests/conftest.py: tiers)
def test_a_diverging_run_exits_1_with_one_line(
    glyphs_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(["--data", "builtin:glyphs", *TINY_FLAGS, "--lambda_l1", "1e300", "--out", str(tmp_path)])
    assert exit_info.value.code == 1
    assert_one_line_error(capsys.readouterr().err, "NaN or infinite", "lower lr_G/lr_D")


# ---------------------------------------------------------------------------------------------
# predict


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny gray -> RGB generator exported as trainer.export writes it (weights, TorchScript, ONNX)."""
    torch.manual_seed(0)
    G = UNetGenerator(GeneratorConfig(in_channels=1, out_channels=3, size=32, ngf=8))
    init_weights(G)
    folder = tmp_path_factory.mktemp("export") / "best"
    card = export_generator(G, folder, {"name": "tiny test generator"})
    assert card["onnx_max_abs_diff"] < 1e-4
    return folder


@pytest.mark.slow  # trains for seconds (tests/conftest.py: tiers)
def test_export_is_readable_like_any_new_file(export_dir: Path) -> None:
    """Atomic writes go through private temp files; the export must not stay private (shared storage)."""
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(export_dir.stat().st_mode) == 0o777 & ~umask
    for path in export_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path.name


# onnxruntime alone: no torch in the process, only the files the card lists, and the README's own code.
ONNX_ALONE = """
import subprocess, sys
import numpy as np
import onnxruntime
session = onnxruntime.InferenceSession("generator.onnx", providers=["CPUExecutionProvider"])
assert [i.name for i in session.get_inputs()] == ["input"] and [o.name for o in session.get_outputs()] == ["output"]
assert isinstance(session.get_inputs()[0].shape[0], str), session.get_inputs()[0].shape  # a dynamic batch axis
meta = session.get_modelmeta().custom_metadata_map
x = np.load("x.npy")
np.save("y.npy", np.concatenate([session.run(["output"], {"input": x[:1]})[0], session.run(None, {"input": x[1:]})[0]]))
exec(open("readme_snippet.py").read())
assert "torch" not in sys.modules
print(meta["value_range"], meta["in_channels"], meta["size"])
"""


def test_onnx_runs_in_onnxruntime_alone_from_the_listed_files(export_dir: Path, tmp_path: Path) -> None:
    card = json.loads((export_dir / "model_card.json").read_text())
    assert sorted(card["files"]) == sorted(p.name for p in export_dir.iterdir())
    for name in card["files"]:  # a copy of the listed files is the whole model
        shutil.copy(export_dir / name, tmp_path / name)
    rng = np.random.default_rng(0)
    x = (rng.random((4, 1, 32, 32), dtype=np.float32) * 2 - 1).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    gray = rng.integers(0, 256, (32, 32), dtype=np.uint8)  # at the model's size: the snippet's resize keeps it
    iio.imwrite(tmp_path / "input.png", gray)
    readme = (tmp_path / "README.md").read_text()
    (snippet,) = re.findall(r"```python\n(.*?)```", readme, re.S)
    (tmp_path / "readme_snippet.py").write_text(snippet)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", ONNX_ALONE], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[-1.0,", "1.0]", "1", "32"]
    G, _ = load_generator(export_dir)
    with torch.no_grad():
        expected = G(torch.from_numpy(x)).numpy()
        from_image = G(torch.from_numpy(gray.astype(np.float32) / 255 * 2 - 1)[None, None])[0]
    assert np.abs(np.load(tmp_path / "y.npy") - expected).max() < 1e-4
    expected_png = ((from_image + 1) / 2 * 255).round().permute(1, 2, 0).numpy()
    np.testing.assert_allclose(iio.imread(tmp_path / "output.png"), expected_png, atol=1)


def test_onnx_is_pinned_and_says_what_to_feed(export_dir: Path) -> None:
    import onnx

    model = onnx.load(str(export_dir / "generator.onnx"), load_external_data=False)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [18]
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta.pop("layout") == "NCHW" and meta.pop("architecture") and meta.pop("direction") == "AtoB"
    meta = {k: json.loads(v) for k, v in meta.items()}
    assert meta["value_range"] == [-1.0, 1.0] and meta["in_channels"] == 1 and meta["out_channels"] == 3
    assert meta["size"] == 32 and "max_value" in meta["intensity_mapping"]["forward"]


def test_safetensors_alone_rebuilds_the_generator(export_dir: Path, tmp_path: Path) -> None:
    with safe_open(str(export_dir / "model.safetensors"), framework="pt") as weights:
        meta = weights.metadata()
    config = json.loads((export_dir / "config.json").read_text())
    assert json.loads(meta["generator_config"]) == config["generator_config"]
    assert json.loads(meta["value_range"]) == config["value_range"] == [-1.0, 1.0]
    shutil.copy(export_dir / "model.safetensors", tmp_path / "model.safetensors")
    G, card = load_generator(tmp_path / "model.safetensors")
    reference = load_torch(export_dir / "generator.pt")["state_dict"]
    assert card == {} and all(torch.equal(G.state_dict()[k], v) for k, v in reference.items())
    (tmp_path / "pt").mkdir()  # a folder with only the torch weights loads too
    shutil.copy(export_dir / "generator.pt", tmp_path / "pt" / "generator.pt")
    G, _ = load_generator(tmp_path / "pt")
    assert all(torch.equal(G.state_dict()[k], v) for k, v in reference.items())


def png_header(path: Path) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from a PNG's IHDR chunk."""
    return struct.unpack(">IIBB", path.read_bytes()[16:26])


@pytest.mark.slow  # trains for seconds (tests/conftest.py: tiers)
def test_predict_translates_a_folder(export_dir: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    inputs = tmp_path / "in"
    inputs.mkdir()
    rgb_at_model_size = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    iio.imwrite(inputs / "exact.png", rgb_at_model_size)
    iio.imwrite(inputs / "gray.png", rng.integers(0, 256, (50, 70), dtype=np.uint8))
    iio.imwrite(inputs / "deep_gray.tif", rng.integers(0, 65536, (40, 24), dtype=np.uint16))
    iio.imwrite(inputs / "deep_rgb.tiff", rng.integers(0, 65536, (33, 47, 3), dtype=np.uint16))
    (inputs / "notes.txt").write_text("not an image, ignored")

    result = run_cli(
        "trainer.predict",
        "--model",
        export_dir,
        "--input",
        inputs,
        "--output",
        "out",
        "--batch_size",
        "3",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["deep_gray.png", "deep_rgb.png", "exact.png", "gray.png"]
    # every output is RGB (the model's 3 channels) at its input's size and bit depth
    assert png_header(out / "exact.png") == (32, 32, 8, 2)
    assert png_header(out / "gray.png") == (70, 50, 8, 2)
    assert png_header(out / "deep_gray.png") == (24, 40, 16, 2)
    assert png_header(out / "deep_rgb.png") == (47, 33, 16, 2)

    # an input at the model's size goes through unresized: RGB -> luma, G, [-1, 1] -> 8 bit
    G = UNetGenerator(GeneratorConfig(1, 3, 32, ngf=8))
    G.load_state_dict(load_torch(export_dir / "generator.pt")["state_dict"])
    luma = rgb_at_model_size.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255
    with torch.no_grad():
        y = G.eval()(torch.from_numpy(luma * 2 - 1)[None, None])[0]
    expected = ((y + 1) / 2 * 255).round().permute(1, 2, 0).numpy()
    np.testing.assert_allclose(iio.imread(out / "exact.png"), expected, atol=1)


def test_predict_converts_channels_both_ways() -> None:
    gray = torch.rand(1, 1, 4, 4)
    assert torch.equal(match_channels(gray, 3), gray.expand(-1, 3, -1, -1))
    rgb = torch.rand(1, 3, 4, 4)
    expected = 0.299 * rgb[:, :1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:]
    torch.testing.assert_close(match_channels(rgb, 1), expected)


def test_png_writer_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for image in (
        rng.integers(0, 256, (5, 7, 1), dtype=np.uint8),
        rng.integers(0, 256, (5, 7, 3), dtype=np.uint8),
        rng.integers(0, 65536, (5, 7, 1), dtype=np.uint16),
    ):
        (tmp_path / "x.png").write_bytes(png_bytes(image))
        np.testing.assert_array_equal(iio.imread(tmp_path / "x.png").reshape(image.shape), image)


def missing_input(folder: Path) -> Path:
    return folder / "missing"


def empty_input(folder: Path) -> Path:
    return folder


def unreadable_input(folder: Path) -> Path:
    iio.imwrite(folder / "good.png", np.zeros((8, 8), np.uint8))
    (folder / "bad.png").write_bytes(b"junk")
    return folder


@pytest.mark.parametrize(
    ("make_input", "expected"),
    [
        (missing_input, "input folder not found"),
        (empty_input, "no images found"),
        (unreadable_input, "bad.png: cannot be read as an image"),
    ],
)
def test_predict_errors_are_one_line(
    make_input: Callable[[Path], Path],
    expected: str,
    export_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    argv = ["--model", str(export_dir), "--input", str(make_input(inputs)), "--output", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        predict_cli.main(argv)
    assert exit_info.value.code == 2
    assert_one_line_error(capsys.readouterr().err, expected)
    assert not (tmp_path / "out").exists()


def test_predict_needs_an_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    iio.imwrite(inputs / "x.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(SystemExit):
        predict_cli.main(["--model", str(tmp_path), "--input", str(inputs), "--output", str(tmp_path / "out")])
    assert_one_line_error(capsys.readouterr().err, "not an exported model")


# ---------------------------------------------------------------------------------------------
# predict and evaluate given broken, crafted or misplaced files: one line, exit 2, nothing written


def rewrite_safetensors(model: Path, state: dict[str, torch.Tensor] | None = None, **changes: object) -> None:
    """Write the export's model.safetensors again, with other weights or generator_config values."""
    path = model / "model.safetensors"
    with safe_open(str(path), framework="pt") as weights:
        meta = weights.metadata()
        tensors = {k: weights.get_tensor(k) for k in weights.keys()}
    gcfg = {**json.loads(meta["generator_config"]), **changes}
    save_file(
        state if state is not None else tensors, str(path), metadata={**meta, "generator_config": json.dumps(gcfg)}
    )


def truncated_card(model: Path) -> str:
    card = (model / "model_card.json").read_text()
    (model / "model_card.json").write_text(card[: len(card) // 2])
    return "model_card.json: not readable JSON"


def card_of_a_list(model: Path) -> str:
    (model / "model_card.json").write_text("[]")
    return "model_card.json: holds a JSON list, not an object"


def truncated_weights(model: Path) -> str:
    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[: len(data) // 2])
    return "model.safetensors: not a readable safetensors file"


def weights_of_another_width(model: Path) -> str:
    rewrite_safetensors(model, UNetGenerator(GeneratorConfig(1, 3, 32, ngf=16)).state_dict())
    return "model.safetensors: weights do not fit its generator_config (38 tensors differ, e.g. model.model.0.weight"


def crafted_width(model: Path) -> str:
    rewrite_safetensors(model, ngf=2048)  # would allocate 64 GiB
    return "model.safetensors: generator_config: ngf must be between 1 and 512 (got 2048)"


def crafted_channels(model: Path) -> str:
    rewrite_safetensors(model, in_channels=100000)
    return "model.safetensors: generator_config: in_channels must be 1 or 3 (got 100000)"


def crafted_key(model: Path) -> str:
    rewrite_safetensors(model, activation="os.system")
    return "model.safetensors: generator_config: unknown generator_config key(s) activation"


def torch_weights_without_config(model: Path) -> str:
    (model / "model.safetensors").unlink()
    state = load_torch(model / "generator.pt")
    torch.save({"state_dict": state["state_dict"]}, model / "generator.pt")
    return "generator.pt: has no 'generator_config'"


@pytest.mark.parametrize(
    "spoil",
    [
        truncated_card,
        card_of_a_list,
        truncated_weights,
        weights_of_another_width,
        crafted_width,
        crafted_channels,
        crafted_key,
        torch_weights_without_config,
    ],
)
def test_predict_refuses_a_spoiled_export_before_writing(
    spoil: Callable[[Path], str], export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "best"
    shutil.copytree(export_dir, model)
    expected = spoil(model)
    inputs = tmp_path / "in"
    inputs.mkdir()
    iio.imwrite(inputs / "x.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(SystemExit) as exit_info:
        predict_cli.main(["--model", str(model), "--input", str(inputs), "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert_one_line_error(capsys.readouterr().err, str(model), expected)
    assert not (tmp_path / "out").exists()


def test_predict_refuses_a_generator_bigger_than_the_memory_here(
    export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config within every bound can still need more memory than the machine has: it is measured
    on the meta device before anything is allocated."""
    need, have = generator_bytes(GeneratorConfig(1, 3, 2048, ngf=512)), available_bytes()
    if have is None or need <= have:
        pytest.skip(f"this machine has {have} bytes available, more than the {need} the generator needs")
    model = tmp_path / "best"
    shutil.copytree(export_dir, model)
    rewrite_safetensors(model, size=2048, ngf=512)
    inputs = tmp_path / "in"
    inputs.mkdir()
    iio.imwrite(inputs / "x.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(SystemExit):
        predict_cli.main(["--model", str(model), "--input", str(inputs), "--output", str(tmp_path / "out")])
    expected = f"needs about {need / 2**30:.1f} GiB, more than the"
    assert_one_line_error(
        capsys.readouterr().err, "model.safetensors: its generator_config (ngf 512, 2048 px)", expected
    )


def test_predict_refuses_an_output_it_cannot_write(
    export_dir: Path, tmp_path: Path, read_only_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    iio.imwrite(inputs / "x.png", np.zeros((8, 8), np.uint8))
    taken = tmp_path / "taken"
    taken.write_text("a file")
    for output, expected in (
        (taken, f"{taken} is not a folder"),
        (taken / "sub", f"{taken} is not a folder"),
        (read_only_folder / "out", f"{read_only_folder} is not writable"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            predict_cli.main(["--model", str(export_dir), "--input", str(inputs), "--output", str(output)])
        assert exit_info.value.code == 2
        assert_one_line_error(capsys.readouterr().err, f"--output {output}: ", expected)
    assert taken.read_text() == "a file" and not any(read_only_folder.iterdir())


def twenty_images_one_truncated(folder: Path) -> Path:
    """20 gray images, the 18th cut short: more than one batch of 16 reads before it."""
    rng = np.random.default_rng(0)
    for i in range(20):
        iio.imwrite(folder / f"img{i:02d}.png", rng.integers(0, 256, (40, 40), dtype=np.uint8))
    bad = folder / "img17.png"
    bad.write_bytes(bad.read_bytes()[:60])
    return bad


def test_one_unreadable_input_among_twenty_stops_before_anything_is_written(
    export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    bad = twenty_images_one_truncated(inputs)
    with pytest.raises(SystemExit) as exit_info:
        predict_cli.main(["--model", str(export_dir), "--input", str(inputs), "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert_one_line_error(capsys.readouterr().err, f"{bad}: cannot be read as an image", "nothing was written")
    assert not (tmp_path / "out").exists()


def test_keep_going_lists_and_skips_unreadable_inputs(
    export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    bad = twenty_images_one_truncated(inputs)
    out = tmp_path / "out"
    predict_cli.main(["--model", str(export_dir), "--input", str(inputs), "--output", str(out), "--keep-going"])
    captured = capsys.readouterr()
    assert captured.err.strip() == f"warning: {bad}: cannot be read as an image (OSError); replace or remove it; " + (
        "skipped (--keep-going)"
    )
    assert captured.out.strip().endswith(f"wrote 19 files to {out}; skipped 1 unreadable input (listed above)")
    written = sorted(p.name for p in out.iterdir())  # no temp file left beside them
    assert written == [f"img{i:02d}.png" for i in range(20) if i != 17]


def test_evaluate_refuses_a_grid_it_cannot_write(
    tiny_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, _ = tiny_run
    taken = tmp_path / "taken"
    taken.write_text("a file")
    with pytest.raises(SystemExit) as exit_info:
        evaluate_cli.main(["--checkpoint", str(run_dir / BEST), "--grid", str(taken / "grid.png"), "--device", "cpu"])
    assert exit_info.value.code == 2
    assert_one_line_error(capsys.readouterr().err, f"--grid {taken / 'grid.png'}: {taken} is not a folder")


def checkpoint_of_width_2048(state: dict) -> str:
    state["generator_config"] = {**state["generator_config"], "ngf": 2048}
    return "generator_config: ngf must be between 1 and 512 (got 2048)"


def checkpoint_of_other_weights(state: dict) -> str:
    state["G"] = UNetGenerator(GeneratorConfig(**{**state["generator_config"], "ngf": 16})).state_dict()
    return "weights do not fit its generator_config"


def checkpoint_without_split(state: dict) -> str:
    del state["split_hash"]
    return "has no 'split_hash'"


@pytest.mark.slow  # trains for seconds (tests/conftest.py: tiers)
@pytest.mark.parametrize("spoil", [checkpoint_of_width_2048, checkpoint_of_other_weights, checkpoint_without_split])
def test_evaluate_refuses_a_spoiled_checkpoint(
    spoil: Callable[[dict], str], tiny_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, _ = tiny_run
    state = load_torch(run_dir / BEST)
    expected = spoil(state)
    save_torch(tmp_path / BEST, state)
    shutil.copy(run_dir / "split.json", tmp_path / "split.json")
    with pytest.raises(SystemExit) as exit_info:
        evaluate_cli.main(["--checkpoint", str(tmp_path / BEST), "--device", "cpu"])
    assert exit_info.value.code == 2
    assert_one_line_error(capsys.readouterr().err, f"{tmp_path / BEST}: ", expected)
    assert not (tmp_path / "test_samples.png").exists()
