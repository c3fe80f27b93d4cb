"""`python -m trainer.predict`: translate a folder of images with an exported generator.

Needs only the export folder (trainer.export), or its model.safetensors or generator.pt alone, not the
run or its data. Each image is brought to the model's channels and size, translated, and written back
at its own size and bit depth as PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import get_args

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from trainer.checkpoint import write_atomic_bytes
from trainer.config import Device
from trainer.data import IMAGE_SUFFIXES, png_bytes, read_image
from trainer.errors import UserError, exits_cleanly_on_user_error
from trainer.export import load_generator
from trainer.loop import pick_device
from trainer.models import UNetGenerator
from trainer.train import OneLineErrorParser

# ITU-R BT.601 luma, the weights PIL's convert("L") uses, which built the grayscale training inputs.
LUMA = (0.299, 0.587, 0.114)


def input_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise UserError(f"{folder}: input folder not found; give a folder of images to translate")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise UserError(f"{folder}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    stems: dict[str, Path] = {}
    for path in images:
        if path.stem in stems:  # both would be written to the same <stem>.png
            raise UserError(f"{path}: same name as {stems[path.stem].name}; rename one so the outputs do not collide")
        stems[path.stem] = path
    return images


def resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The resize the training data went through (bilinear with antialiasing), for (N, C, H, W)."""
    if x.shape[2:] == (height, width):
        return x
    return F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)


def match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(1, C, H, W) in [0, 1] -> the model's channel count: gray is repeated, colour becomes luma."""
    if x.shape[1] == channels:
        return x
    if channels == 3:
        return x.expand(-1, 3, -1, -1)
    return (x * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)


def to_model_input(image: np.ndarray, max_value: int, G: UNetGenerator) -> torch.Tensor:
    """(H, W, C) integers -> (1, in_channels, size, size) in [-1, 1]."""
    x = torch.from_numpy(image.astype(np.float32) / max_value).permute(2, 0, 1)[None]
    x = match_channels(x, G.cfg.in_channels)
    return resize(x, G.cfg.size, G.cfg.size).clamp(0, 1) * 2 - 1


def to_image(y: torch.Tensor, height: int, width: int, max_value: int) -> np.ndarray:
    """(C, size, size) in [-1, 1] -> (H, W, C) uint8 or uint16 at the original size."""
    y = resize(y[None].float().cpu(), height, width)[0]
    pixels = ((y.clamp(-1, 1) + 1) / 2 * max_value).round().permute(1, 2, 0).numpy()
    return pixels.astype(np.uint8 if max_value == 255 else np.uint16)


@torch.no_grad()
def translate_batch(G: UNetGenerator, paths: list[Path], output: Path, device: torch.device) -> None:
    images = [read_image(path) for path in paths]
    batch = torch.cat([to_model_input(image, max_value, G) for image, max_value in images]).to(device)
    outputs = G(batch)
    for path, (image, max_value), y in zip(paths, images, outputs):
        write_atomic_bytes(output / f"{path.stem}.png", png_bytes(to_image(y, *image.shape[:2], max_value)))


def translate_folder(model: Path, input_dir: Path, output_dir: Path, batch_size: int = 16, device: str = "auto") -> int:
    """Translate every image in input_dir into output_dir; returns how many were written."""
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1 (got {batch_size})")
    paths = input_images(input_dir)
    if output_dir.resolve() == input_dir.resolve():
        raise UserError(f"{output_dir}: is the input folder; choose another --output so no input is overwritten")
    G, _card = load_generator(model)
    torch_device = pick_device(device)
    G = G.to(torch_device)
    output_dir.mkdir(parents=True, exist_ok=True)
    columns = (TextColumn("translating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns) as progress:
        task = progress.add_task("translate", total=len(paths))
        for start in range(0, len(paths), batch_size):
            batch = paths[start : start + batch_size]
            translate_batch(G, batch, output_dir, torch_device)
            progress.advance(task, len(batch))
    return len(paths)


def build_parser() -> OneLineErrorParser:
    parser = OneLineErrorParser(
        prog="python -m trainer.predict",
        description="Translate a folder of images with an exported generator; outputs are PNGs named like the inputs.",
    )
    parser.add_argument(
        "--model", type=Path, required=True, help="an export folder, or its model.safetensors or generator.pt alone"
    )
    parser.add_argument("--input", type=Path, required=True, help="folder of images to translate")
    parser.add_argument("--output", type=Path, required=True, help="folder for the translated PNGs")
    parser.add_argument("--batch_size", "--batch-size", type=int, default=16, help="images per forward pass")
    parser.add_argument("--device", choices=get_args(Device), default="auto", help="where to run (default: auto)")
    return parser


@exits_cleanly_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    count = translate_folder(args.model, args.input, args.output, args.batch_size, args.device)
    print(f"wrote {count} images to {args.output}")


if __name__ == "__main__":
    main()
