"""An export is a function of the model: the same weights and card give the same model.safetensors bytes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from trainer.config import GeneratorConfig
from trainer.export import SAFETENSORS, export_generator
from trainer.models import UNetGenerator, init_weights


@pytest.mark.slow  # trains, or runs a subprocess, for seconds (tests/conftest.py: tiers)
def test_the_same_weights_export_to_identical_safetensors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    G = UNetGenerator(GeneratorConfig(in_channels=1, out_channels=3, size=32, ngf=8))
    init_weights(G)
    card = {"name": "tiny", "direction": "AtoB", "train_config": {"size": 32, "lambda_l1": 100.0}}
    # safetensors keeps metadata in a Rust HashMap, whose order differs between maps even in one process
    files = [export_generator(G, tmp_path / f"e{i}", card) and (tmp_path / f"e{i}" / SAFETENSORS) for i in range(2)]
    first = files[0].read_bytes()
    assert all(f.read_bytes() == first for f in files[1:])
    with safe_open(str(files[0]), framework="pt") as weights:  # still a file safetensors reads
        assert set(weights.keys()) == set(G.state_dict())
        assert weights.metadata()["format"] == "pt"
