"""Paired data: folder discovery, the train/val/test split, decoding once into memory, augmentation.

Two folder layouts are detected automatically:
  (a) pix2pix convention: each file holds A in its left half and B in its right half;
  (b) `A/` and `B/` folders whose files match by name (the extension may differ), holding images,
      or NIfTI volumes (one name = one subject; an optional `mask/` folder marks the foreground).
Either layout may sit inside `train/ val/ test/` sub-folders, which are then used as the split;
otherwise a seeded 70/15/15 split is made once and saved as split.json in the run directory.
Volumes are split by subject, never by slice, and then sliced (trainer.data.volumes).

Images are decoded and resized once and kept in memory in the data's own units (uint8 or int32 for
image files, float32 for volumes); each side's intensity mapping (trainer.data.intensity, fitted on
the training split) turns them into [-1, 1] floats batch by batch on the training device, where
they are augmented.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import png
import tifffile
import torch
import torch.nn.functional as F
from PIL import Image

from trainer.builtin import BUILTIN_PREFIX, builtin_root
from trainer.config import TrainConfig
from trainer.data.intensity import IntensityMap, fit_map
from trainer.data.limits import IMAGE_PIXELS
from trainer.data.volumes import (
    VOLUME_SUFFIXES,
    foreground_fractions,
    planes,
    read_subject,
    slice_stack,
    to_square,
    volume_stem,
)
from trainer.errors import UserError
from trainer.files import write_json

# ITU-R BT.601 luma, the weights PIL's convert("L") uses, which built the grayscale training inputs:
# trainer.predict turns a colour input into a 1-channel model's input with them (so does the model card's recipe).
LUMA = (0.299, 0.587, 0.114)
TIFF_SUFFIXES = {".tif", ".tiff"}  # read with tifffile, everything else with Pillow
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"} | TIFF_SUFFIXES
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = {"train": 0.70, "val": 0.15}  # test takes the rest
JITTER_SCALE = 286 / 256  # reference random jitter: resize up by this much, crop back
SPLIT_FILE = "split.json"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MASK_DIR = "mask"
TWELVE_BIT = 4096  # 16-bit files of 12-bit CT / X-ray exports hold values below this


@dataclass(frozen=True)
class ReadOptions:
    """How data is read beyond size and split: the TrainConfig fields of the same names (which hold
    the defaults)."""

    intensity: str
    window_a: tuple[float, float]
    window_b: tuple[float, float]
    slice_axis: str
    min_foreground: float
    foreground_threshold: float
    direction: str

    @classmethod
    def of(cls, cfg: TrainConfig) -> ReadOptions:
        return cls(
            cfg.intensity,
            cfg.window_a,
            cfg.window_b,
            cfg.slice_axis,
            cfg.min_foreground,
            cfg.foreground_threshold,
            cfg.direction,
        )


@dataclass(frozen=True)
class PairFiles:
    """One training pair on disk: two files, or one A|B file (b is None); volumes may have a mask."""

    name: str
    a: Path
    b: Path | None
    mask: Path | None = None

    @property
    def is_volume(self) -> bool:
        return volume_stem(self.a) is not None


@dataclass
class PairedImages:
    """Decoded pairs of one split, (N, C, H, W) tensors in the data's own units; `batch` maps them to
    [-1, 1] with each side's intensity mapping (by default 0..max_value, the dtype mapping)."""

    a: torch.Tensor
    b: torch.Tensor
    names: list[str]
    max_value: int  # 255 or 65535 for image files; 0 for volumes, whose values have no type range
    a_map: IntensityMap | None = None
    b_map: IntensityMap | None = None

    def __post_init__(self) -> None:
        if self.max_value:
            self.a_map = self.a_map or IntensityMap("dtype", 0.0, float(self.max_value))
            self.b_map = self.b_map or IntensityMap("dtype", 0.0, float(self.max_value))

    def __len__(self) -> int:
        return len(self.names)

    def to(self, device: torch.device) -> PairedImages:
        return PairedImages(self.a.to(device), self.b.to(device), self.names, self.max_value, self.a_map, self.b_map)

    def with_maps(self, a_map: IntensityMap, b_map: IntensityMap) -> PairedImages:
        return PairedImages(self.a, self.b, self.names, self.max_value, a_map, b_map)

    def swapped(self) -> PairedImages:
        """B as the input and A as the target (direction BtoA)."""
        return PairedImages(self.b, self.a, self.names, self.max_value, self.b_map, self.a_map)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = index.to(self.a.device)
        return self.a_map.to_unit(self.a[index]), self.b_map.to_unit(self.b[index])


@dataclass
class PairedData:
    source: str
    splits: dict[str, PairedImages]  # a = the model's input, b = its target (after `direction`)
    split_names: dict[str, list[str]]  # image pairs, or subjects for volumes
    maps: dict[str, IntensityMap]  # "A" and "B": each folder's mapping, whatever the direction
    # Each split's pairs on disk (subjects for volumes), for the metrics at the data's own size:
    # whole volumes, or images at their own size (trainer.evaluate).
    files: dict[str, list[PairFiles]]
    direction: str = "AtoB"

    @property
    def is_volumes(self) -> bool:
        return any(p.is_volume for pairs in self.files.values() for p in pairs)

    @property
    def input_side(self) -> str:
        return self.direction[0]

    @property
    def target_side(self) -> str:
        return self.direction[-1]

    def intensity_record(self) -> dict[str, dict[str, float | str]]:
        """What checkpoints and model cards hold, and `trainer.predict` applies and inverts."""
        return {side: m.to_dict() for side, m in self.maps.items()}

    @property
    def in_channels(self) -> int:
        return self.splits["train"].a.shape[1]

    @property
    def out_channels(self) -> int:
        return self.splits["train"].b.shape[1]

    @property
    def has_identity_baseline(self) -> bool:
        """Output = input is a meaningful baseline only when A and B have the same shape and units
        (image pixels; volumes only under one shared window, e.g. CBCT -> CT in HU)."""
        same_units = not self.is_volumes or self.maps["A"] == self.maps["B"]
        return self.in_channels == self.out_channels and same_units

    @property
    def split_hash(self) -> str:
        return split_hash(self.split_names)


def split_hash(split_names: dict[str, list[str]]) -> str:
    canonical = json.dumps({s: split_names[s] for s in SPLITS}, sort_keys=True).encode()
    return hashlib.sha256(canonical).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# discovery


def resolve_root(data: str) -> Path:
    if data.startswith(BUILTIN_PREFIX):
        return builtin_root(data[len(BUILTIN_PREFIX) :])
    root = Path(data).expanduser()
    if not root.is_dir():
        raise UserError(
            f"{root}: data folder not found; give a folder of A|B images, a folder with A/ and B/, "
            f"or a built-in set such as {BUILTIN_PREFIX}glyphs"
        )
    return root


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _named_files(folder: Path) -> dict[str, Path]:
    """name -> file for the images and NIfTI volumes of an A/, B/ or mask/ folder."""
    files = {}
    for path in sorted(folder.iterdir()):
        name = volume_stem(path) or (path.stem if path.suffix.lower() in IMAGE_SUFFIXES else None)
        if path.is_file() and name is not None:
            if name in files:
                raise UserError(f"{path}: same name as {files[name].name}; one name must be one pair (one subject)")
            files[name] = path
    return files


def discover_pairs(folder: Path) -> list[PairFiles]:
    """The pairs in one folder, in layout (b) when it has A/ and B/, else layout (a)."""
    a_dir, b_dir = folder / "A", folder / "B"
    if a_dir.is_dir() or b_dir.is_dir():
        if not (a_dir.is_dir() and b_dir.is_dir()):
            missing = b_dir if a_dir.is_dir() else a_dir
            raise UserError(f"{missing}: folder missing; the A/B layout needs both A/ and B/ with matching file names")
        a_files, b_files = _named_files(a_dir), _named_files(b_dir)
        for side, files, other in (("A", a_files, b_files), ("B", b_files, a_files)):
            unmatched = sorted(set(files) - set(other))
            if unmatched:
                more = f" (and {len(unmatched) - 1} more)" if len(unmatched) > 1 else ""
                other_dir = folder / ("B" if side == "A" else "A")
                raise UserError(
                    f"{files[unmatched[0]]}: no file of the same name in {other_dir}{more}; "
                    "every A image needs a B image with the same name"
                )
        masks = _mask_files(folder, a_files)
        pairs = [PairFiles(stem, a_files[stem], b_files[stem], masks.get(stem)) for stem in sorted(a_files)]
        if len({p.is_volume for p in pairs} | {volume_stem(p.b) is not None for p in pairs}) > 1:
            raise UserError(f"{folder}: mixes NIfTI volumes and 2D images; keep one kind per data set")
    else:
        pairs = [PairFiles(p.stem, p, None) for p in _image_files(folder)]
    if not pairs:
        raise UserError(
            f"{folder}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES) + list(VOLUME_SUFFIXES))}); "
            "use A|B images side by side, or A/ and B/ folders"
        )
    return pairs


def _mask_files(folder: Path, a_files: dict[str, Path]) -> dict[str, Path]:
    """The optional mask/ folder of a volume set: a mask for every subject, or none at all."""
    mask_dir = folder / MASK_DIR
    if not mask_dir.is_dir():
        return {}
    masks = _named_files(mask_dir)
    missing = sorted(set(a_files) - set(masks))
    if missing:
        raise UserError(
            f"{mask_dir}: has no mask named {missing[0]} (for {a_files[missing[0]].name}); "
            "give every subject a mask or remove mask/"
        )
    return masks


def seeded_split(names: list[str], seed: int) -> dict[str, list[str]]:
    """Deterministic 70/15/15 split of sorted names; val and test get at least one item each."""
    if len(names) < 3:
        raise UserError(f"need at least 3 image pairs for a train/val/test split (found {len(names)})")
    order = sorted(names)
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(order) * SPLIT_FRACTIONS["val"]))
    n_train = min(len(order) - 2 * n_val, max(1, round(len(order) * SPLIT_FRACTIONS["train"])))
    return {
        "train": sorted(order[:n_train]),
        "val": sorted(order[n_train : n_train + n_val]),
        "test": sorted(order[n_train + n_val :]),
    }


def find_splits(root: Path, split_seed: int, run_dir: Path | None) -> dict[str, list[PairFiles]]:
    """Files of each split: from train/val/test sub-folders, from a saved split.json, or a new split."""
    if any((root / s).is_dir() for s in SPLITS):
        missing = [s for s in SPLITS if not (root / s).is_dir()]
        if missing:
            raise UserError(
                f"{root}: has split sub-folders but lacks {', '.join(missing)}/; add it or remove the split folders"
            )
        return {s: discover_pairs(root / s) for s in SPLITS}

    pairs = {p.name: p for p in discover_pairs(root)}
    saved = run_dir / SPLIT_FILE if run_dir is not None else None
    if saved is not None and saved.exists():
        names = json.loads(saved.read_text())["splits"]
        lost = sorted(n for s in SPLITS for n in names[s] if n not in pairs)
        if lost:
            raise UserError(
                f"{saved}: names {', '.join(lost[:3])} are no longer in {root}; restore them or start a new run"
            )
    else:
        names = seeded_split(list(pairs), split_seed)
    return {s: [pairs[n] for n in names[s]] for s in SPLITS}


def save_split(run_dir: Path, source: str, split_names: dict[str, list[str]]) -> None:
    record = {"source": source, "hash": split_hash(split_names), "splits": split_names}
    write_json(run_dir / SPLIT_FILE, record)


# ---------------------------------------------------------------------------------------------
# decoding


def _is_16_bit_colour_png(path: Path) -> bool:
    """The PNG header says 16 bits per sample and colour (RGB or RGBA): the one case Pillow decodes to 8 bits."""
    with open(path, "rb") as f:
        header = f.read(26)  # signature (8), IHDR length and tag (8), width, height (8), bit depth, colour type
    return header[:8] == PNG_SIGNATURE and header[24] == 16 and header[25] in (2, 6)


def _check_header(path: Path, shape: tuple[int, ...]) -> None:
    """Refuse, from the shape a header declares, what decoding would waste memory on."""
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 2, 3, 4)):
        raise UserError(f"{path}: shape {tuple(shape)} is not a grayscale or RGB image")
    IMAGE_PIXELS.check(path, (shape[1], shape[0]))


def _read_16_bit_colour_png(path: Path) -> np.ndarray:
    width, height, rows, info = png.Reader(filename=str(path)).asDirect()  # reads the header; rows decode lazily
    _check_header(path, (height, width, info["planes"]))
    return np.vstack([np.asarray(row, np.uint16) for row in rows]).reshape(height, width, info["planes"])


def _read_tiff(path: Path) -> np.ndarray:
    """The first series (what imageio reads), all of its pages counted before any is decoded."""
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        _check_header(path, series.shape)
        return series.asarray()


def _read_with_pillow(path: Path) -> np.ndarray:
    # Pillow's own bomb check (a warning above 89 M pixels, an error above 179 M) would speak before
    # ours and ignore PIX2PIX_MAX_IMAGE_PIXELS; ours reads the same header first, so it replaces it.
    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with iio.imopen(path, "r", plugin="pillow") as file:
            _check_header(path, file.properties().shape)
            return file.read()
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def png_bytes(image: np.ndarray) -> bytes:
    """(H, W, 1|3) uint8 or uint16 -> PNG bytes (pypng: Pillow cannot store 16-bit RGB)."""
    height, width, channels = image.shape
    writer = png.Writer(width, height, greyscale=channels == 1, bitdepth=8 if image.dtype == np.uint8 else 16)
    buffer = io.BytesIO()
    writer.write(buffer, image.reshape(height, width * channels))
    return buffer.getvalue()


def read_image(path: Path) -> tuple[np.ndarray, int]:
    """(H, W, C) array and its max value (255 or 65535). Alpha is dropped. Each reader checks the
    shape in the file's header against the pixel limit (trainer.data.limits) before decoding."""
    try:
        if _is_16_bit_colour_png(path):
            image = _read_16_bit_colour_png(path)
        elif path.suffix.lower() in TIFF_SUFFIXES:
            image = _read_tiff(path)
        else:
            image = _read_with_pillow(path)
    except UserError:
        raise
    except Exception as err:  # the decoders raise many types for unreadable files
        raise UserError(f"{path}: cannot be read as an image ({type(err).__name__}); replace or remove it") from None
    if image.dtype == np.uint8:
        max_value = 255
    elif image.dtype == np.uint16:
        max_value = 65535
    else:
        raise UserError(f"{path}: pixel type {image.dtype} is not supported; save it as 8-bit or 16-bit PNG/TIFF")
    if image.ndim == 2:
        image = image[:, :, None]
    channels = 1 if image.shape[2] in (1, 2) else 3  # drop alpha (LA -> L, RGBA -> RGB)
    return image[:, :, :channels], max_value


Decoded = tuple[np.ndarray, int]  # (H, W, C) pixels and their max value


def side_size(pair: PairFiles, side: str) -> tuple[int, int]:
    """(height, width) of side A or B of an image pair, from the file header: nothing is decoded."""
    path = pair.a if side == "A" or pair.b is None else pair.b
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Exception as err:  # Pillow raises many types for unreadable files
        raise UserError(f"{path}: cannot be read as an image ({type(err).__name__}); replace or remove it") from None
    return (height, width // 2) if pair.b is None else (height, width)


def read_pair(pair: PairFiles) -> tuple[Decoded, Decoded]:
    """A and B with their own max values: an 8-bit B beside a 16-bit A keeps its own scale."""
    a, max_a = read_image(pair.a)
    if pair.b is None:
        width = a.shape[1]
        if width % 2:
            raise UserError(
                f"{pair.a}: width {width} is odd; an A|B image holds A in the left half and B in the right, "
                "so its width must be even"
            )
        return (a[:, : width // 2], max_a), (a[:, width // 2 :], max_a)
    return (a, max_a), read_image(pair.b)


def _resize(image: np.ndarray, max_value: int, size: int, channels: int, out_max: int) -> torch.Tensor:
    x = torch.from_numpy(image.astype(np.float32) / max_value).permute(2, 0, 1)[None]
    if x.shape[1] < channels:
        x = x.expand(-1, channels, -1, -1)
    if x.shape[2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x[0].clamp(0, 1) * out_max).round()


def decode_split(pairs: list[PairFiles], size: int) -> PairedImages:
    raw = [read_pair(p) for p in pairs]
    channels_a = max(a.shape[2] for (a, _), _ in raw)
    channels_b = max(b.shape[2] for _, (b, _) in raw)
    max_value = max(max(max_a, max_b) for (_, max_a), (_, max_b) in raw)
    dtype = torch.uint8 if max_value == 255 else torch.int32
    a = torch.stack([_resize(a, max_a, size, channels_a, max_value) for (a, max_a), _ in raw]).to(dtype)
    b = torch.stack([_resize(b, max_b, size, channels_b, max_value) for _, (b, max_b) in raw]).to(dtype)
    return PairedImages(a, b, [p.name for p in pairs], max_value)


def decode_volume_split(subjects: list[PairFiles], size: int, options: ReadOptions) -> PairedImages:
    """The foreground slices of each subject (float32, the volumes' own units), named subject:planeNNN."""
    a_parts, b_parts, names = [], [], []
    for pair in subjects:
        subject = read_subject(pair.name, pair.a, pair.b, pair.mask, options.foreground_threshold)
        for plane in planes(options.slice_axis):
            keep = np.flatnonzero(foreground_fractions(subject.foreground, plane) >= options.min_foreground)
            # Padding takes each volume's minimum, its background (air), so the square adds no edges.
            a_parts.append(to_square(slice_stack(subject.a, plane)[keep], size, subject.a.min()))
            b_parts.append(to_square(slice_stack(subject.b, plane)[keep], size, subject.b.min()))
            names += [f"{pair.name}:{plane}{k:03d}" for k in keep]
    if not names:
        raise UserError(
            f"{subjects[0].a.parent}: no {options.slice_axis} slice of {', '.join(p.name for p in subjects)} has "
            f"min_foreground {options.min_foreground} of foreground; lower --min_foreground or --foreground_threshold"
        )
    return PairedImages(torch.cat(a_parts), torch.cat(b_parts), names, 0)


def _unify_channels(splits: dict[str, PairedImages]) -> None:
    """Make every split use the largest channel count seen (a gray file in an RGB set becomes RGB)."""
    for side in ("a", "b"):
        channels = max(getattr(s, side).shape[1] for s in splits.values())
        for s in splits.values():
            x = getattr(s, side)
            if x.shape[1] < channels:
                setattr(s, side, x.expand(-1, channels, -1, -1).contiguous())


def intensity_maps(train: PairedImages, options: ReadOptions, volumes: bool) -> dict[str, IntensityMap]:
    """Each side's mapping to [-1, 1]; percentile and minmax see the training split only."""
    mode = options.intensity
    if mode == "auto":
        mode = "percentile" if volumes else "dtype"
    if mode == "dtype" and volumes:
        raise UserError("intensity dtype: NIfTI volumes have no fixed value range; use percentile, window or minmax")
    maps = {}
    for side, values, window in (("A", train.a, options.window_a), ("B", train.b, options.window_b)):
        if mode == "dtype":
            maps[side] = IntensityMap("dtype", 0.0, float(train.max_value))
        elif mode == "window" and window != (0.0, 0.0):
            maps[side] = IntensityMap("window", *window)
        else:  # a side without a window of its own (e.g. MR beside CT in HU) falls back to percentile
            maps[side] = fit_map("percentile" if mode == "window" else mode, values, side)
    return maps


def warn_12_bit(root: Path, train: PairedImages, maps: dict[str, IntensityMap]) -> None:
    """12-bit CT / X-ray exports stored as 16-bit files use a sixteenth of the dtype mapping's range."""
    for side, values in (("A", train.a), ("B", train.b)):
        if maps[side].mode == "dtype" and train.max_value == 65535 and int(values.max()) < TWELVE_BIT:
            print(
                f"warning: {root}: 16-bit {side} images hold values below {TWELVE_BIT} only (12-bit data?), so the "
                f"network sees a sixteenth of its range; use --intensity percentile, or --intensity window "
                f"--window_low_{side.lower()} 0 --window_high_{side.lower()} 4095",
                file=sys.stderr,
            )


def load_paired_data(
    data: str,
    size: int,
    split_seed: int = 0,
    run_dir: Path | None = None,
    jitter: bool = False,
    max_train_images: int = 0,
    options: ReadOptions | None = None,
    save_split_file: bool = True,
) -> PairedData:
    """Decode every split once. With a run_dir, the split is reused from there when present, and
    saved there unless `save_split_file` is False (a read-only command such as trainer.evaluate).

    `options` (intensity, volumes, direction) default to TrainConfig's defaults."""
    options = options if options is not None else ReadOptions.of(TrainConfig())
    root = resolve_root(data)
    files = find_splits(root, split_seed, run_dir)
    volumes = any(p.is_volume for pairs in files.values() for p in pairs)
    if volumes and not all(p.is_volume for pairs in files.values() for p in pairs):
        raise UserError(f"{root}: splits mix NIfTI volumes and 2D images; keep one kind per data set")
    if max_train_images and not volumes:
        files["train"] = files["train"][:max_train_images]
    split_names = {s: [p.name for p in files[s]] for s in SPLITS}
    train_size = round(size * JITTER_SCALE) if jitter else size
    sizes = {s: train_size if s == "train" else size for s in SPLITS}
    if volumes:
        splits = {s: decode_volume_split(files[s], sizes[s], options) for s in SPLITS}
        if max_train_images and len(splits["train"]) > max_train_images:
            splits["train"] = _evenly_spaced(splits["train"], max_train_images)
    else:
        splits = {s: decode_split(files[s], sizes[s]) for s in SPLITS}
        if len({s.max_value for s in splits.values()}) > 1:  # 8-bit and 16-bit files mixed across splits
            splits = {s: _rescale(x, 65535) for s, x in splits.items()}
    maps = intensity_maps(splits["train"], options, volumes)
    if not volumes:
        warn_12_bit(root, splits["train"], maps)
    splits = {s: x.with_maps(maps["A"], maps["B"]) for s, x in splits.items()}
    if options.direction == "BtoA":
        splits = {s: x.swapped() for s, x in splits.items()}
    _unify_channels(splits)
    if run_dir is not None and save_split_file:
        save_split(run_dir, data, split_names)
    return PairedData(data, splits, split_names, maps, files, options.direction)


def _evenly_spaced(images: PairedImages, count: int) -> PairedImages:
    """`count` slices spread over the whole training split, so every subject keeps some."""
    index = torch.linspace(0, len(images) - 1, count).round().long()
    names = [images.names[i] for i in index.tolist()]
    return PairedImages(images.a[index], images.b[index], names, images.max_value, images.a_map, images.b_map)


def _rescale(images: PairedImages, max_value: int) -> PairedImages:
    factor = max_value // images.max_value  # 65535 / 255 = 257 exactly
    return PairedImages(images.a.to(torch.int32) * factor, images.b.to(torch.int32) * factor, images.names, max_value)


# ---------------------------------------------------------------------------------------------
# augmentation (on the device, same transform for A and B)


def augment(
    a: torch.Tensor, b: torch.Tensor, size: int, flip: bool, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crop to `size` (when the images are larger, i.e. jitter) and random horizontal flip.

    The random draws come from a CPU generator so that runs are reproducible on any device.
    """
    n, _, h, w = a.shape
    if h > size or w > size:
        tops = torch.randint(0, h - size + 1, (n,), generator=generator).tolist()
        lefts = torch.randint(0, w - size + 1, (n,), generator=generator).tolist()
        a = torch.stack([x[:, t : t + size, l : l + size] for x, t, l in zip(a, tops, lefts)])
        b = torch.stack([x[:, t : t + size, l : l + size] for x, t, l in zip(b, tops, lefts)])
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(a.device).view(n, 1, 1, 1)
        a = torch.where(mask, a.flip(3), a)
        b = torch.where(mask, b.flip(3), b)
    return a, b


def load_run_data(cfg: TrainConfig, run_dir: Path | None, save_split_file: bool = True) -> PairedData:
    """The data of a run as its config describes it (split reused from run_dir, else saved there)."""
    return load_paired_data(
        cfg.data,
        cfg.size,
        cfg.split_seed,
        run_dir,
        cfg.jitter,
        cfg.max_train_images,
        ReadOptions.of(cfg),
        save_split_file,
    )


def count_train_pairs(cfg: TrainConfig) -> int:
    """How many training pairs a run of `cfg` trains on an epoch. For 2D images the file listing
    says it (no decoding); a volume's slices are only known once it is read, so volumes are loaded."""
    files = find_splits(resolve_root(cfg.data), cfg.split_seed, None)
    if any(p.is_volume for pairs in files.values() for p in pairs):
        return len(load_run_data(cfg, None, save_split_file=False).splits["train"])
    count = len(files["train"])
    return min(count, cfg.max_train_images) if cfg.max_train_images else count
