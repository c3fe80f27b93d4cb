"""`python -m trainer.predict`: translate images or NIfTI volumes with an exported generator.

Needs only the export folder (trainer.export), not the run or its data: its model card names the
direction, the intensity mapping of each side and the slice plane (model.safetensors or generator.pt
alone also load, and then mean AtoB with each file's own dtype range). Each image is brought to the
model's channels and size, translated, and written back at its own size and bit depth as PNG.
Each volume is sliced the way training sliced it, translated in batches, stacked, mapped back to
the data's units (HU for CT) and written as float32 NIfTI with the input's affine and header.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from trainer.cli import OneLineErrorParser
from trainer.config import Device
from trainer.data import IMAGE_SUFFIXES, png_bytes, read_image
from trainer.data.limits import IMAGE_PIXELS, VOLUME_VOXELS
from trainer.data.volumes import (
    read_volume,
    volume_stem,
)
from trainer.errors import UserError, exits_cleanly_on_user_error
from trainer.export import load_generator
from trainer.files import check_output_folder, write_atomic_bytes
from trainer.loop import pick_device
from trainer.models import UNetGenerator
from trainer.translation import Preprocessing, nifti_bytes, to_image, to_model_input, translate_ras


def input_files(path: Path) -> tuple[list[Path], bool]:
    """The files to translate and whether they are volumes: one NIfTI file, or a folder of images or volumes."""
    if path.is_file():
        if volume_stem(path) is None:
            raise UserError(f"{path}: not a NIfTI volume (.nii or .nii.gz); give a volume or a folder")
        return [path], True
    if not path.is_dir():
        raise UserError(f"{path}: input folder not found; give a folder of images or volumes to translate")
    volumes = sorted(p for p in path.iterdir() if p.is_file() and volume_stem(p) is not None)
    images = input_images(path) if not volumes else []
    if volumes and any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir()):
        raise UserError(f"{path}: mixes NIfTI volumes and 2D images; translate each kind from its own folder")
    return (volumes, True) if volumes else (images, False)


def input_images(folder: Path) -> list[Path]:
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise UserError(f"{folder}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))}, .nii, .nii.gz)")
    stems: dict[str, Path] = {}
    for path in images:
        if path.stem in stems:  # both would be written to the same <stem>.png
            raise UserError(f"{path}: same name as {stems[path.stem].name}; rename one so the outputs do not collide")
        stems[path.stem] = path
    return images


def readable_inputs(paths: list[Path], volumes: bool, keep_going: bool) -> tuple[list[Path], int]:
    """The inputs that decode, each read once before anything is written, so that an unreadable file
    cannot stop a run half-way with part of the outputs written (decoding costs little beside the
    generator). One unreadable file stops the run, unless keep_going: then each is listed and skipped.
    Returns the readable inputs and how many were skipped."""
    read, limit = (read_volume, VOLUME_VOXELS) if volumes else (read_image, IMAGE_PIXELS)
    limit.value()  # a bad PIX2PIX_MAX_* value is the user's setting, not every input's fault: stop here
    readable, problems = [], []
    for path in paths:
        try:
            read(path)
        except UserError as err:
            problems.append(str(err))
        else:
            readable.append(path)
    if problems and not keep_going:
        more = f" ({len(problems) - 1} more inputs unreadable)" if len(problems) > 1 else ""
        raise UserError(f"{problems[0]}{more}; nothing was written (--keep-going skips unreadable inputs)")
    for problem in problems:
        print(f"warning: {problem}; skipped (--keep-going)", file=sys.stderr)
    if not readable:
        raise UserError(f"{paths[0].parent}: none of the {len(paths)} inputs can be read (listed above)")
    return readable, len(problems)


def write_output(path: Path, data: bytes) -> None:
    """Atomic (temp file, then rename): a crash leaves no half-written output."""
    try:
        write_atomic_bytes(path, data)
    except OSError as err:  # the folder was checked first; this is a full disk or a change since
        raise UserError(
            f"{path}: cannot be written ({err.strerror or err}); free space or choose another --output"
        ) from None


@torch.no_grad()
def translate_batch(
    G: UNetGenerator, paths: list[Path], output: Path, device: torch.device, prep: Preprocessing
) -> None:
    images = [read_image(path) for path in paths]
    batch = torch.cat([to_model_input(image, max_value, G, prep.input_map) for image, max_value in images])
    outputs = G(batch.to(device))
    for path, (image, max_value), y in zip(paths, images, outputs):
        pixels = to_image(y, *image.shape[:2], max_value, prep.output_map)
        write_output(output / f"{path.stem}.png", png_bytes(pixels))


def translate_volume_file(
    G: UNetGenerator, path: Path, output: Path, device: torch.device, prep: Preprocessing, batch_size: int
) -> None:
    volume = read_volume(path)

    def translate(x: torch.Tensor) -> torch.Tensor:
        return G(x.to(device))

    ras = translate_ras(
        volume.to_ras(), translate, G.cfg.size, prep.input_map, prep.output_map, prep.slice_axis, batch_size
    )
    write_output(output / path.name, nifti_bytes(volume.from_ras(ras), volume, path.name))


def translate_folder(
    model: Path, input_dir: Path, output_dir: Path, batch_size: int = 16, device: str = "auto", keep_going: bool = False
) -> tuple[int, int]:
    """Translate every image or volume of input_dir (or the one volume it names) into output_dir;
    returns how many files were written and how many unreadable inputs were skipped (keep_going).
    Every input, the model and the output folder are checked before the first file is written."""
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1 (got {batch_size})")
    paths, volumes = input_files(input_dir)
    if output_dir.resolve() in (input_dir.resolve(), input_dir.resolve().parent if input_dir.is_file() else None):
        raise UserError(f"{output_dir}: holds the input; choose another --output so no input is overwritten")
    check_output_folder(output_dir, "--output")
    G, card = load_generator(model)
    try:
        prep = Preprocessing.from_card(card)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as err:  # a hand-edited card
        raise UserError(
            f"{model}: its model card's direction or intensity cannot be read ({type(err).__name__}: {err}); "
            "export the model anew"
        ) from None
    except UserError as err:  # an intensity mapping no training writes (an infinite or empty window)
        raise UserError(f"{model}: its model card's {err}; export the model anew") from None
    if volumes and prep.input_map is None:
        raise UserError(f"{model}: its model card has no intensity mapping; volumes need a model trained on volumes")
    paths, skipped = readable_inputs(paths, volumes, keep_going)
    torch_device = pick_device(device)
    G = G.to(torch_device)
    output_dir.mkdir(parents=True, exist_ok=True)
    columns = (TextColumn("translating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns) as progress:
        task = progress.add_task("translate", total=len(paths))
        step = 1 if volumes else batch_size
        for start in range(0, len(paths), step):
            batch = paths[start : start + step]
            if volumes:
                translate_volume_file(G, batch[0], output_dir, torch_device, prep, batch_size)
            else:
                translate_batch(G, batch, output_dir, torch_device, prep)
            progress.advance(task, len(batch))
    return len(paths), skipped


def build_parser() -> OneLineErrorParser:
    parser = OneLineErrorParser(
        prog="python -m trainer.predict",
        description="Translate a folder of images, a NIfTI volume or a folder of volumes with an exported "
        "generator; outputs are PNGs or float32 NIfTI volumes named like the inputs.",
    )
    parser.add_argument(
        "--model",
        type=Path,
        required=True,
        help="an export folder, or its model.safetensors or generator.pt alone (volumes need the folder)",
    )
    parser.add_argument("--input", type=Path, required=True, help="a folder of images or volumes, or one volume")
    parser.add_argument("--output", type=Path, required=True, help="folder for the translated files")
    parser.add_argument("--batch_size", "--batch-size", type=int, default=16, help="images (slices) per forward pass")
    parser.add_argument("--device", choices=get_args(Device), default="auto", help="where to run (default: auto)")
    parser.add_argument(
        "--keep-going",
        "--keep_going",
        action="store_true",
        help="list and skip unreadable inputs (default: stop before writing anything when one is unreadable)",
    )
    return parser


@exits_cleanly_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    count, skipped = translate_folder(
        args.model, args.input, args.output, args.batch_size, args.device, args.keep_going
    )
    note = f"; skipped {skipped} unreadable input{'s' if skipped != 1 else ''} (listed above)" if skipped else ""
    print(f"wrote {count} file{'s' if count != 1 else ''} to {args.output}{note}")


if __name__ == "__main__":
    main()
