"""A trained generator as a self-contained folder: what `trainer.predict` and other tools load.

    generator.pt              {"generator_config": ..., "state_dict": ...}, loads with weights_only=True
    generator.torchscript.pt  traced TorchScript module
    generator.onnx            ONNX with a dynamic batch dimension (checked against PyTorch on export)
    model_card.json           architecture, hyperparameters, metrics, data and provenance
    samples.png               test samples: input | output | target

The folder is written under a temporary name and renamed into place, so a reader never sees half
an export.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.checkpoint import json_safe, load_torch, temp_dir_beside, write_json
from trainer.config import GeneratorConfig
from trainer.errors import UserError
from trainer.models import UNetGenerator
from trainer.visualize import save_grid

WEIGHTS = "generator.pt"
TORCHSCRIPT = "generator.torchscript.pt"
ONNX = "generator.onnx"
CARD = "model_card.json"
SAMPLES = "samples.png"
ONNX_TOLERANCE = 1e-4


def export_generator(
    G: UNetGenerator,
    folder: Path,
    card: dict[str, Any],
    samples: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Write the export folder atomically; returns the card as written (with export checks added)."""
    folder = Path(folder)
    G = G.float().cpu().eval().to(memory_format=torch.contiguous_format)
    gcfg = G.cfg
    tmp = temp_dir_beside(folder)
    try:
        state = {k: v.contiguous() for k, v in G.state_dict().items()}
        torch.save({"generator_config": dataclasses.asdict(gcfg), "state_dict": state}, tmp / WEIGHTS)
        example = torch.zeros(2, gcfg.in_channels, gcfg.size, gcfg.size)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, yet still widely deployed
            torch.jit.trace(G, example).save(str(tmp / TORCHSCRIPT))
        onnx_diff = export_onnx(G, tmp / ONNX, example)
        card = {
            **card,
            "generator_config": dataclasses.asdict(gcfg),
            "onnx_max_abs_diff": onnx_diff,
            "files": [WEIGHTS, TORCHSCRIPT, ONNX, SAMPLES if samples is not None else None],
        }
        card["files"] = [f for f in card["files"] if f]
        if samples is not None:
            inputs, targets = samples
            with torch.no_grad():
                outputs = G(inputs.float())
            save_grid(tmp / SAMPLES, inputs, outputs, targets)
        card = json_safe(card)
        write_json(tmp / CARD, card)
        replace_folder(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return card


def replace_folder(src: Path, dst: Path) -> None:
    """Move src to dst; an older dst is moved aside first and removed only after the swap."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}-old")
        shutil.rmtree(old, ignore_errors=True)
        dst.rename(old)
    src.rename(dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_onnx(G: UNetGenerator, path: Path, example: torch.Tensor) -> float:
    """Export with a dynamic batch dimension, run it under onnxruntime, return the max |ONNX - PyTorch|."""
    import onnxruntime

    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates each of its passes
        torch.onnx.export(G, (example,), str(path), dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probe = torch.rand(3, *example.shape[1:]) * 2 - 1
    with torch.no_grad():
        expected = G(probe).numpy()
    got = session.run(None, {session.get_inputs()[0].name: probe.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    if diff > ONNX_TOLERANCE:
        raise RuntimeError(f"{path}: ONNX output differs from PyTorch by {diff:.2e} (> {ONNX_TOLERANCE})")
    return diff


def generator_from_checkpoint(state: dict[str, Any]) -> UNetGenerator:
    """The generator of a training checkpoint (last.pt / best.pt contents), in eval mode on the CPU."""
    G = UNetGenerator(GeneratorConfig(**state["generator_config"]))
    G.load_state_dict(state["G"])
    return G.eval()


def load_generator(folder: Path) -> tuple[UNetGenerator, dict[str, Any]]:
    """The exported generator (eval mode, CPU) and its model card."""
    folder = Path(folder)
    card_path = folder / CARD
    if not card_path.is_file():
        raise UserError(f"{folder}: not an exported model (no {CARD}); point to an experiment's best/ folder")
    card = json.loads(card_path.read_text())
    saved = load_torch(folder / WEIGHTS)
    G = UNetGenerator(GeneratorConfig(**saved["generator_config"]))
    G.load_state_dict(saved["state_dict"])
    return G.eval(), card
