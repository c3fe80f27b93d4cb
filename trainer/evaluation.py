"""Scoring a generator on a split of its data: SSIM / PSNR / MAE against the baseline at the model's
size, at the images' own size (as trainer.predict delivers them) and, for volumes, per subject on
whole volumes in the data's units inside the foreground mask, the way SynthRAD scores synthetic CT.

The library behind `python -m trainer.evaluate`, the export's model card and the search's scoring of
the best trial (orchestrator.results). The baseline is output = input where A and B share units, else
output = the mean training target (the mean-image baseline).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from trainer.checkpoint import RunState
from trainer.config import TrainConfig
from trainer.data import SPLITS, PairedData, PairedImages, read_pair, side_size
from trainer.data.volumes import read_subject
from trainer.errors import UserError
from trainer.export.card import describe_sizes
from trainer.loop import baseline_metrics, evaluate, mean_image, pick_device, translate
from trainer.metrics import per_image_metrics, volume_metrics
from trainer.models import UNetGenerator
from trainer.names import IDENTITY, MEAN_IMAGE, METRIC_NAMES
from trainer.translation import to_image, to_unit, translate_ras

GRID_SAMPLES = 8


@dataclass
class VolumeScores:
    """Whole-volume metrics of one split, per subject, in the data's own units inside the foreground."""

    split: str
    value_range: tuple[float, float]  # the target mapping's low .. high: PSNR's and SSIM's data range
    baseline_name: str
    model: dict[str, dict[str, float]] = field(default_factory=dict)  # subject -> mae, psnr, ssim
    baseline: dict[str, dict[str, float]] = field(default_factory=dict)

    @staticmethod
    def mean(scores: dict[str, dict[str, float]]) -> dict[str, float]:
        return {name: float(np.mean([s[name] for s in scores.values()])) for name in METRIC_NAMES}

    def to_card(self) -> dict:
        return {
            "split": self.split,
            "note": "per subject, whole volumes in the data's own units (HU for CT) inside the foreground mask: "
            "MAE of the values; PSNR and SSIM (scikit-image, 7x7x7) on volumes clipped to value_range, "
            "its width the data range (as SynthRAD scores synthetic CT)",
            "value_range": list(self.value_range),
            "baseline": self.baseline_name,
            "subjects": {name: {"model": self.model[name], "baseline": self.baseline[name]} for name in self.model},
            "mean": {"model": self.mean(self.model), "baseline": self.mean(self.baseline)},
        }


@dataclass
class NativeScores:
    """2D metrics of one split at each target's own size: the model's outputs as trainer.predict
    writes them (resized back and stored at the input's bit depth) against the target files."""

    metrics: dict[str, float]  # <split>_ssim, <split>_psnr, <split>_mae
    baseline: dict[str, float]  # identity (the input at the target's size) or the mean image, resized back
    sizes: list[tuple[int, int]]  # the targets' sizes (height, width), each once

    def describe_sizes(self) -> str:
        return describe_sizes(self.sizes)


@dataclass
class Evaluation:
    split: str
    epoch: int  # epochs the checkpoint had trained
    metrics: dict[str, float]  # <split>_ssim, <split>_psnr, <split>_mae
    baseline: dict[str, float]  # identity, or mean image where A and B differ in channels or units
    baseline_name: str
    samples: tuple[torch.Tensor, ...]  # inputs, outputs, targets (CPU, [-1, 1])
    pairs: int
    volumes: VolumeScores | None  # volume data only
    native: NativeScores | None  # images that are not size x size only

    def card_metrics(self) -> dict:
        """The model card's metrics of this split (model_card.json and README.md read these names)."""
        split, native = self.split, self.native
        identity = self.baseline_name == IDENTITY
        return {
            split: self.metrics,
            f"identity_{split}": self.baseline if identity else None,
            f"mean_image_{split}": None if identity else self.baseline,
            f"{split}_native": native.metrics if native else None,
            f"identity_{split}_native": native.baseline if native and identity else None,
            f"mean_image_{split}_native": native.baseline if native and not identity else None,
            f"{split}_native_sizes": [list(size) for size in native.sizes] if native else None,
            f"{split}_volumes": self.volumes.to_card() if self.volumes else None,
        }


@torch.no_grad()
def evaluate_volumes(
    G: UNetGenerator, data: PairedData, cfg: TrainConfig, split: str, device: torch.device
) -> VolumeScores:
    """Translate each subject of a split whole (as trainer.predict does) and score it in the data's units."""
    in_map, out_map = data.maps[data.input_side], data.maps[data.target_side]
    mean = mean_image(data.splits["train"]).to(device)
    name = IDENTITY if data.has_identity_baseline else MEAN_IMAGE
    scores = VolumeScores(split, (out_map.low, out_map.high), name)

    def model(x: torch.Tensor) -> torch.Tensor:
        return translate(G, x)

    def mean_output(x: torch.Tensor) -> torch.Tensor:
        return mean.expand(len(x), -1, -1, -1)

    for pair in data.files[split]:
        subject = read_subject(pair.name, pair.a, pair.b, pair.mask, cfg.foreground_threshold)
        source, target = (subject.a, subject.b) if data.direction == "AtoB" else (subject.b, subject.a)
        output = translate_ras(source, model, cfg.size, in_map, out_map, cfg.slice_axis, cfg.val_batch_size)
        scores.model[pair.name] = volume_metrics(output, target, subject.foreground, scores.value_range)
        if name == MEAN_IMAGE:
            source = translate_ras(source, mean_output, cfg.size, in_map, out_map, cfg.slice_axis, cfg.val_batch_size)
        scores.baseline[pair.name] = volume_metrics(source, target, subject.foreground, scores.value_range)
    return scores


@torch.no_grad()
def evaluate_native(G: UNetGenerator, data: PairedData, split: str, size: int, batch_size: int) -> NativeScores | None:
    """Score a split's images at their own size, as a user of trainer.predict sees them: each input
    file read and resized to the model's size as predict does, translated (fp32, eval mode), written
    back at the target's size and the input's bit depth (predict's own code), and compared with the
    target file at its size. The baseline goes the same way: identity is the input file at the
    target's size, the mean image is resized back like an output.

    None when every target is size x size already (the 2D metrics are then the native ones) and for
    volumes, whose native grid evaluate_volumes scores whole."""
    if data.is_volumes:
        return None
    in_map, out_map = data.maps[data.input_side], data.maps[data.target_side]
    files = data.files[split]
    sizes = sorted({side_size(pair, data.target_side) for pair in files})
    if sizes == [(size, size)]:
        return None
    identity = data.has_identity_baseline
    mean = None if identity else mean_image(data.splits["train"])
    scores: dict[str, dict[str, list[torch.Tensor]]] = {"model": {}, "baseline": {}}
    device = next(G.parameters()).device
    for start in range(0, len(files), batch_size):
        chunk = [read_pair(pair) for pair in files[start : start + batch_size]]  # a batch at a time in memory
        if data.direction == "BtoA":
            chunk = [(b, a) for a, b in chunk]
        x = torch.cat([to_unit(a, max_a, data.in_channels, in_map, size, size) for (a, max_a), _ in chunk])
        outputs = translate(G, x.to(device)).cpu()
        for ((a, max_a), (b, max_b)), output in zip(chunk, outputs):
            h, w = b.shape[:2]
            target = to_unit(b, max_b, data.out_channels, out_map, h, w)
            # the PNG predict writes for this input, read back like any image of the data
            delivered = to_unit(to_image(output, h, w, max_a, out_map), max_a, data.out_channels, out_map, h, w)
            if identity:
                baseline = to_unit(a, max_a, data.out_channels, in_map, h, w)
            else:
                baseline = to_unit(to_image(mean, h, w, max_a, out_map), max_a, data.out_channels, out_map, h, w)
            for kind, values in (("model", delivered), ("baseline", baseline)):
                for name, value in per_image_metrics(values, target).items():
                    scores[kind].setdefault(name, []).append(value)

    def means(kind: str) -> dict[str, float]:
        return {f"{split}_{name}": torch.cat(values).mean().item() for name, values in scores[kind].items()}

    return NativeScores(means("model"), means("baseline"), sizes)


def first_samples(G: UNetGenerator, images: PairedImages) -> tuple[torch.Tensor, ...]:
    a, b = images.batch(torch.arange(min(GRID_SAMPLES, len(images))))
    return a, translate(G, a).cpu(), b


def evaluate_generator(G: UNetGenerator, data: PairedData, cfg: TrainConfig, split: str, epoch: int) -> Evaluation:
    """Every score of G on one split of its data: 2D metrics at the model's size against the baseline,
    at the images' own size where that differs, whole volumes for volume data; and sample triples.
    What `trainer.evaluate` prints and the export's model card holds (orchestrator.results)."""
    device = next(G.parameters()).device
    images = data.splits[split]
    batch_size = cfg.val_batch_size
    metrics = evaluate(G, images, batch_size, prefix=split)
    baseline, baseline_name = baseline_metrics(data, split, device, batch_size)
    samples = first_samples(G, images)
    volumes = evaluate_volumes(G, data, cfg, split, device) if data.is_volumes else None
    native = evaluate_native(G, data, split, cfg.size, batch_size)
    return Evaluation(split, epoch, metrics, baseline, baseline_name, samples, len(images), volumes, native)


def evaluate_checkpoint(checkpoint: Path, split: str = "test", device: str = "auto") -> Evaluation:
    """Metrics of a checkpoint's generator on one split of its run, the identity baseline, and samples.

    Always in fp32, whatever precision the run trained in, so the numbers do not depend on the hardware.
    """
    if split not in SPLITS:
        raise UserError(f"split {split!r} does not exist; choose one of {', '.join(SPLITS)}")
    checkpoint = Path(checkpoint)
    state = RunState.load(checkpoint)
    data = state.load_data(checkpoint.parent)  # refuses data that no longer gives the run's split
    G = state.generator().to(pick_device(device))
    return evaluate_generator(G, data, state.train_config(), split, state.epoch)
