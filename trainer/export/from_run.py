"""The model card of a trained state, from its evaluation: what every export holds, whether a search
exported its best trial (orchestrator.results adds the trial, its kind and the references) or a
user exports one `trainer.train` run (`python -m trainer.export`)."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

import torch

from trainer.checkpoint import RunState
from trainer.data import PairedData
from trainer.evaluation import Evaluation, evaluate_generator
from trainer.loop import baseline_metrics, evaluate
from trainer.models import UNetGenerator

# Names only (read from the installed metadata): the trainer never imports Ray, Optuna or W&B.
VERSIONED_PACKAGES = ("torch", "torchvision", "ray", "optuna", "wandb", "scikit-image", "onnx", "onnxruntime")
METRICS_NOTE = (
    "SSIM (7x7 uniform window, K1 0.01, K2 0.03, sample covariance), PSNR and MAE on images "
    "scaled to [-1, 1] (data_range 2); means over test images; G in eval mode. test_native: the same at each "
    "target's own size, on the outputs as trainer.predict writes them (resized back, at the input's bit depth)"
)


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def evaluated_card(
    state: RunState, data: PairedData, G: UNetGenerator, name: str
) -> tuple[dict[str, Any], Evaluation, tuple[torch.Tensor, torch.Tensor]]:
    """(card, test evaluation, (inputs, targets) for the export's samples.png) of G, the state's
    scored generator on `data` (the state's own split, on G's device)."""
    cfg = state.train_config()
    device = next(G.parameters()).device
    test = evaluate_generator(G, data, cfg, "test", state.epoch)
    val_metrics = evaluate(G, data.splits["val"], cfg.val_batch_size, prefix="val")
    baseline_val, baseline_name = baseline_metrics(data, "val", device, cfg.val_batch_size)
    card = {
        "name": name,
        "epoch": state.epoch,
        "train_config": cfg.to_dict(),
        "val": val_metrics,
        f"{baseline_name}_val": baseline_val,
        **test.card_metrics(),  # test, identity_test, test_native, ...: the names the card and summary share
        "direction": cfg.direction,
        "intensity": data.intensity_record(),
        "test_images": test.pairs,
        "data": {
            "source": cfg.data,
            "split_hash": data.split_hash,
            "splits": {s: len(names) for s, names in data.split_names.items()},
        },
        "metrics_note": METRICS_NOTE,
        "versions": library_versions(),
    }
    inputs, _, targets = test.samples
    return card, test, (inputs, targets)
