"""Infinite and NaN numbers pass every `>= 0` check and then turn losses into NaN or outputs into
zeros: each is refused up front, in one line naming the field, wherever a number comes in."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from cli_checks import one_line_exit_2
from search_cli import TINY

from orchestrator import search
from orchestrator.spec import load_spec
from trainer import predict as predict_cli
from trainer import train as train_cli
from trainer.config import GeneratorConfig
from trainer.errors import UserError
from trainer.export import CARD, export_generator
from trainer.models import UNetGenerator, init_weights


def spec_with(tmp_path: Path, section: str, key: str, value: str) -> Path:
    """The tiny spec with one key of one section set to a YAML value."""
    lines = TINY.read_text().splitlines()
    at = lines.index(f"{section}:") + 1
    lines.insert(at, f"  {key}: {value}")
    path = tmp_path / "spec.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("section", "key", "value", "named"),
    [
        ("train", "gan_weight", ".inf", "gan_weight must be a finite number (got inf)"),
        ("train", "beta1", ".nan", "beta1 must be a finite number (got nan)"),
        ("train", "window_low_b", "-.inf", "window_low_b must be a finite number (got -inf)"),
        ("search", "gpus_per_trial", ".inf", "search.gpus_per_trial must be a finite number (got inf)"),
        ("search", "time_budget", ".inf", "search.time_budget must be a finite number (got inf)"),
        ("space", "beta2", "{type: float, low: 0.9, high: .inf}", "space.beta2.high must be a number (got inf)"),
        ("space", "ema_decay", "{type: categorical, choices: [0.0, .nan]}", "ema_decay must be a finite number"),
    ],
)
def test_a_spec_with_an_infinite_value_is_refused_naming_the_key(
    tmp_path: Path, section: str, key: str, value: str, named: str
) -> None:
    with pytest.raises(UserError) as err:
        load_spec(spec_with(tmp_path, section, key, value))
    assert named in str(err.value) and len(str(err.value).splitlines()) == 1


@pytest.mark.parametrize("value", ["inf", "nan"])
def test_a_search_flag_with_an_infinite_value_is_refused_before_anything_is_written(
    tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--config", str(TINY), "--storage-path", str(tmp_path), "--name", "x", "--cpus-per-trial", value]
    err = one_line_exit_2(search.main, argv, capsys)
    assert f"search.cpus_per_trial must be a finite number (got {value})" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--gan_weight", "inf"], "gan_weight"),
        (["--lambda_l1", "inf"], "lambda_l1"),
        (["--intensity", "window", "--window_high_b", "2000", "--window_low_b=-inf"], "window_low_b"),
    ],
)
def test_a_trainer_flag_with_an_infinite_value_is_refused_before_training(
    tmp_path: Path, flags: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    tiny = ["--size", "32", "--ngf", "8", "--ndf", "8", "--epochs", "1", "--max_train_images", "16"]  # if accepted
    err = one_line_exit_2(train_cli.main, ["--data", "builtin:glyphs", *tiny, "--out", str(out), *flags], capsys)
    assert f"command line: {named} must be a finite number" in err
    assert not out.exists()


@pytest.mark.slow  # seconds: a subprocess, a training or a W&B run (tests/conftest.py: tiers)
def test_predict_refuses_a_model_card_with_an_infinite_window(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    G = UNetGenerator(GeneratorConfig(in_channels=1, out_channels=1, size=32, ngf=8))
    init_weights(G)
    model = tmp_path / "best"
    export_generator(G, model, {"name": "tiny"})
    card = json.loads((model / CARD).read_text())
    window = {"mode": "window", "low": -1000.0, "high": 2000.0}
    card.update(direction="AtoB", intensity={"A": window, "B": {**window, "high": float("inf")}})
    (model / CARD).write_text(json.dumps(card))  # Python writes Infinity, and reads it back
    inputs, output = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    iio.imwrite(inputs / "x.png", np.full((32, 32), 128, np.uint8))

    argv = ["--model", str(model), "--input", str(inputs), "--output", str(output)]
    err = one_line_exit_2(predict_cli.main, argv, capsys)
    assert f"{model}: its model card's intensity window: low -1000.0 and high inf must be finite numbers" in err
    assert not output.exists()
