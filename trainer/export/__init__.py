"""A trained generator as a self-contained folder: what `trainer.predict`, onnxruntime, a model hub
and a person load.

    model.safetensors         generator weights; its metadata holds the generator config and value range
    config.json               what rebuilds the network and maps intensities (generator config, the full
                              training config, value range, intensity mapping)
    README.md                 the model card for people and hubs (trainer.export.card), from the same
                              numbers as model_card.json
    generator.pt              {"generator_config": ..., "state_dict": ...}, loads with weights_only=True
    generator.torchscript.pt  traced TorchScript module
    generator.onnx            ONNX, opset ONNX_OPSET, input "input" and output "output" (N, C, size, size)
                              in [-1, 1] with a dynamic batch axis, weights inside the file (external data
                              only above 2 GB, then listed), metadata properties saying how to feed it
    model_card.json           architecture, hyperparameters, metrics, data and provenance; "files" lists
                              every file of the folder, so a copy of the listed files is complete
    samples.png               test samples: input | output | target

The folder is written under a temporary name and renamed into place, so a reader never sees half
an export.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import json
import shutil
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_save

from trainer.checkpoint import checked_generator, checkpoint_entries, load_torch, save_torch
from trainer.config import GeneratorConfig
from trainer.errors import UserError
from trainer.export.card import render_model_card
from trainer.files import (
    json_safe,
    nearest_existing,
    temp_dir_beside,
    write_atomic_bytes,
    write_atomic_text,
    write_json,
)
from trainer.models import UNetGenerator
from trainer.visualize import save_grid

SAFETENSORS = "model.safetensors"
CONFIG = "config.json"
README = "README.md"
WEIGHTS = "generator.pt"
TORCHSCRIPT = "generator.torchscript.pt"
ONNX = "generator.onnx"
ONNX_DATA = ONNX + ".data"  # weights beside the graph, only for models over ONNX's 2 GB protobuf limit
CARD = "model_card.json"
SAMPLES = "samples.png"
ONNX_TOLERANCE = 1e-4
ONNX_OPSET = 18  # pinned: the exporter's default moves between torch releases; 18 runs on onnxruntime >= 1.14
ONNX_INPUT, ONNX_OUTPUT = "input", "output"
PROTOBUF_LIMIT = 2 * 1024**3
WEIGHT_COPIES = 4  # generator.pt, model.safetensors, the TorchScript and the ONNX file each hold the weights
EXPORT_EXTRA_BYTES = 16 * 2**20  # the sample grid, the card and the README, with room to spare
ARCHITECTURE = "pix2pix U-Net generator"
VALUE_RANGE = (-1.0, 1.0)
# How pixels become the network's values and back (trainer.data reads, trainer.predict writes) for
# images read by their dtype; a card whose data was mapped otherwise (percentile, window, minmax:
# trainer.data.intensity) gets that mapping in config.json and the ONNX metadata instead.
DEFAULT_INTENSITY_MAPPING = {
    "name": "dtype",
    "forward": "x / max_value * 2 - 1, max_value = 255 for 8-bit and 65535 for 16-bit images, per file",
    "inverse": "(y + 1) / 2 * max_value, rounded and clipped",
}


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
    check_free_space(folder, G)
    tmp = temp_dir_beside(folder)
    try:
        config = model_config(gcfg, card)
        state = {k: v.contiguous() for k, v in G.state_dict().items()}
        save_torch(tmp / WEIGHTS, {"generator_config": dataclasses.asdict(gcfg), "state_dict": state})
        write_atomic_bytes(tmp / SAFETENSORS, safetensors_bytes(state, safetensors_metadata(config)))
        example = torch.zeros(2, gcfg.in_channels, gcfg.size, gcfg.size)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, yet still widely deployed
            traced = io.BytesIO()
            torch.jit.save(torch.jit.trace(G, example), traced)  # in memory first, as save_torch does
            write_atomic_bytes(tmp / TORCHSCRIPT, traced.getvalue())
        onnx_diff = export_onnx(G, tmp / ONNX, example, onnx_metadata(config))
        if samples is not None:
            inputs, targets = samples
            with torch.no_grad():
                outputs = G(inputs.float())
            save_grid(tmp / SAMPLES, inputs, outputs, targets)
        card = {**card, "generator_config": dataclasses.asdict(gcfg), "onnx_max_abs_diff": onnx_diff}
        card = json_safe({**card, "files": sorted([p.name for p in tmp.iterdir()] + [CONFIG, README, CARD])})
        write_json(tmp / CONFIG, config)
        write_atomic_text(tmp / README, render_model_card(card, config))
        write_json(tmp / CARD, card)
        replace_folder(tmp, folder)
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        raise UserError(f"{folder}: the disk filled up during the export; free space and run it again") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return card


def check_free_space(folder: Path, G: UNetGenerator) -> None:
    """Refuse an export the disk cannot hold before writing any of it."""
    weights = sum(t.numel() * t.element_size() for t in G.state_dict().values())
    need = WEIGHT_COPIES * weights + EXPORT_EXTRA_BYTES
    existing = nearest_existing(folder)
    free = shutil.disk_usage(existing).free
    if free < need:
        raise UserError(
            f"{folder}: the export needs about {need / 2**20:.0f} MiB but {existing} has {free / 2**20:.0f} MiB free; "
            "free space and run it again"
        )


def model_config(gcfg: GeneratorConfig, card: dict[str, Any]) -> dict[str, Any]:
    """config.json: everything that rebuilds the network and maps pixels to its values and back. The
    training config is copied whole, so settings added to TrainConfig reach the export unchanged."""
    return json_safe(
        {
            "architecture": ARCHITECTURE,
            "generator_config": dataclasses.asdict(gcfg),
            "in_channels": gcfg.in_channels,
            "out_channels": gcfg.out_channels,
            "size": gcfg.size,
            "layout": "NCHW",
            "value_range": list(VALUE_RANGE),
            "direction": card.get("direction", "AtoB"),
            "intensity_mapping": intensity_mapping(card),
            "train_config": card.get("train_config", {}),
            "onnx": {"file": ONNX, "opset": ONNX_OPSET, "input": ONNX_INPUT, "output": ONNX_OUTPUT},
        }
    )


def intensity_mapping(card: dict[str, Any]) -> dict[str, Any]:
    """The card's intensity record (per side A/B, trainer.data.intensity) as input and output mappings."""
    intensity, direction = card.get("intensity"), card.get("direction", "AtoB")
    if not intensity:
        return DEFAULT_INTENSITY_MAPPING
    sides = {"input": intensity[direction[0]], "output": intensity[direction[-1]]}
    if all(side["mode"] == "dtype" for side in sides.values()):
        return DEFAULT_INTENSITY_MAPPING
    return {
        "name": "linear",
        **sides,
        "forward": "(x - input.low) / (input.high - input.low) * 2 - 1, clipped to [-1, 1]",
        "inverse": "(y + 1) / 2 * (output.high - output.low) + output.low, in the data's own units (HU for CT)",
    }


def safetensors_metadata(config: dict[str, Any]) -> dict[str, str]:
    """safetensors metadata is str -> str: the config's fields as JSON, so the file alone rebuilds G."""
    return {"format": "pt", **{k: json.dumps(v) for k, v in config.items() if k != "onnx"}}


def safetensors_bytes(state: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """The safetensors file, with its header's metadata in sorted key order: safetensors keeps metadata
    in a Rust HashMap, whose order differs from one map to the next, so the same model would give
    other bytes on every export. The header is JSON padded with spaces to 8 bytes (the format's rule);
    its tensor offsets count from the end of the header, so the data after it stays as written."""
    raw = safetensors_save(state, metadata=metadata)
    size = struct.unpack_from("<Q", raw)[0]
    header = json.loads(raw[8 : 8 + size])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + raw[8 + size :]


def onnx_metadata(config: dict[str, Any]) -> dict[str, str]:
    """ONNX metadata properties: what a caller must feed (range, channels, size) and how pixels map."""
    keys = (
        "architecture", "value_range", "in_channels", "out_channels", "size", "layout",
        "direction", "intensity_mapping",
    )  # fmt: skip
    return {k: config[k] if isinstance(config[k], str) else json.dumps(config[k]) for k in keys}


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


def export_onnx(G: UNetGenerator, path: Path, example: torch.Tensor, metadata: dict[str, str]) -> float:
    """Export with a dynamic batch dimension, run it under onnxruntime, return the max |ONNX - PyTorch|.

    The weights stay inside the file unless they pass protobuf's 2 GB limit (then `ONNX_DATA` holds them)."""
    import onnx
    import onnxruntime

    external = sum(t.numel() * t.element_size() for t in G.state_dict().values()) >= PROTOBUF_LIMIT
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates each of its passes
        torch.onnx.export(
            G,
            (example,),
            str(path),
            input_names=[ONNX_INPUT],
            output_names=[ONNX_OUTPUT],
            opset_version=ONNX_OPSET,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            external_data=external,
            verbose=False,
        )
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, metadata)
    model.doc_string = f"{ARCHITECTURE}: {ONNX_INPUT} and {ONNX_OUTPUT} are (N, C, size, size) in [-1, 1]"
    if external:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=ONNX_DATA)
    else:
        onnx.save(model, str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probe = torch.rand(3, *example.shape[1:]) * 2 - 1
    with torch.no_grad():
        expected = G(probe).numpy()
    got = session.run([ONNX_OUTPUT], {ONNX_INPUT: probe.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    if diff > ONNX_TOLERANCE:
        raise RuntimeError(f"{path}: ONNX output differs from PyTorch by {diff:.2e} (> {ONNX_TOLERANCE})")
    return diff


def read_card(path: Path) -> dict[str, Any]:
    """An export's model_card.json ({} when there is none); a truncated or foreign one is a UserError."""
    if not path.is_file():
        return {}
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # ValueError: bad JSON or bad UTF-8
        raise UserError(f"{path}: not readable JSON ({err}); copy the export folder again or export it anew") from None
    if not isinstance(card, dict):
        raise UserError(f"{path}: holds a JSON {type(card).__name__}, not an object; use the card this trainer wrote")
    return card


def _read_safetensors(path: Path) -> tuple[Any, dict[str, torch.Tensor]]:
    """The generator config in the file's metadata and its tensors."""
    try:
        with safe_open(str(path), framework="pt") as weights:
            gcfg = json.loads((weights.metadata() or {}).get("generator_config", "null"))
            state = {k: weights.get_tensor(k) for k in weights.keys()}
    except Exception as err:  # truncated file, foreign header, bad JSON in the metadata
        raise UserError(
            f"{path}: not a readable safetensors file ({type(err).__name__}: {err}); use a file this trainer wrote"
        ) from None
    if gcfg is None:
        raise UserError(f"{path}: no generator_config in its metadata; use a model.safetensors this trainer wrote")
    return gcfg, state


def load_generator(path: Path) -> tuple[UNetGenerator, dict[str, Any]]:
    """The exported generator (eval mode, CPU) and its model card ({} when there is none).

    `path` is an export folder (model.safetensors preferred, else generator.pt) or one of the two
    weight files itself: either carries the generator config, so a file copied alone still loads."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    card = read_card(folder / CARD)
    if path.is_dir():
        path = next((path / name for name in (SAFETENSORS, WEIGHTS) if (path / name).is_file()), path / CARD)
    if path.suffix == ".safetensors" and path.is_file():
        gcfg, state = _read_safetensors(path)
    elif path.suffix == ".pt" and path.is_file():
        gcfg, state = checkpoint_entries(load_torch(path), path, "generator_config", "state_dict")
    else:
        raise UserError(
            f"{path}: not an exported model (no {SAFETENSORS} or {WEIGHTS}); point to an experiment's best/ folder"
        )
    return checked_generator(gcfg, state, path), card
