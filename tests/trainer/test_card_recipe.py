"""The model card's onnxruntime recipe gives what `trainer.predict` writes, in a Python without torch."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from trainer.config import GeneratorConfig
from trainer.export import README, export_generator
from trainer.export.card import RECIPE_BOUND
from trainer.models import UNetGenerator, init_weights
from trainer.predict import translate_folder

# Runs the README's code on input.png as a user would, then proves torch never loaded.
RUN_RECIPE = """
import sys
exec(open("recipe.py").read())
assert "torch" not in sys.modules, "the recipe imported torch"
"""


@pytest.mark.slow  # trains, or runs a subprocess, for seconds (tests/conftest.py: tiers)
@pytest.mark.parametrize("in_channels", [1, 3])
def test_the_cards_recipe_writes_predicts_png(in_channels: int, tmp_path: Path) -> None:
    torch.manual_seed(in_channels)
    G = UNetGenerator(GeneratorConfig(in_channels=in_channels, out_channels=3, size=32, ngf=8))
    init_weights(G)
    model = tmp_path / "model"
    export_generator(G, model, {"name": "recipe test"})
    (recipe,) = re.findall(r"```python\n(.*?)```", (model / README).read_text(), re.S)
    rng = np.random.default_rng(0)
    # smaller and larger than the model's 32 px (both resize paths), gray and colour (channel matching)
    inputs = {"down": (45, 71, 3), "up": (20, 24, 1), "mixed": (17, 50, 3), "same": (32, 32, 1)}
    (tmp_path / "in").mkdir()
    for name, (h, w, c) in inputs.items():
        smooth = rng.integers(0, 256, (h // 4 + 2, w // 4 + 2, c)).repeat(4, 0).repeat(4, 1)[:h, :w]
        iio.imwrite(
            tmp_path / "in" / f"{name}.png", smooth.astype(np.uint8).squeeze(2) if c == 1 else smooth.astype(np.uint8)
        )
    translate_folder(model, tmp_path / "in", tmp_path / "predicted", device="cpu")

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the project is not importable there
    for name in inputs:
        work = tmp_path / f"run-{name}"
        shutil.copytree(model, work)
        shutil.copy(tmp_path / "in" / f"{name}.png", work / "input.png")
        (work / "recipe.py").write_text(recipe)
        done = subprocess.run([sys.executable, "-c", RUN_RECIPE], cwd=work, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        got = iio.imread(work / "output.png").astype(int)
        want = iio.imread(tmp_path / "predicted" / f"{name}.png").astype(int)
        assert got.shape == want.shape == (*inputs[name][:2], 3), name  # at the input's size
        diff = np.abs(got - want)
        print(name, diff.max(), (diff > 0).mean())
        assert diff.max() <= RECIPE_BOUND, name
        assert (diff > 0).mean() < 0.01, name  # rounding differences, not a different pipeline
