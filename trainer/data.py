"""Paired images: folder discovery, the train/val/test split, decoding once into memory, augmentation.

Two folder layouts are detected automatically:
  (a) pix2pix convention: each file holds A in its left half and B in its right half;
  (b) `A/` and `B/` folders whose files match by name (the extension may differ).
Either layout may sit inside `train/ val/ test/` sub-folders, which are then used as the split;
otherwise a seeded 70/15/15 split is made once and saved as split.json in the run directory.

Images are decoded and resized once, kept in memory as integers (uint8, or int32 for 16-bit data),
and converted to [-1, 1] floats and augmented batch by batch on the training device.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import png
import torch
import torch.nn.functional as F

from trainer.builtin import BUILTIN_PREFIX, builtin_root
from trainer.checkpoint import write_json
from trainer.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = {"train": 0.70, "val": 0.15}  # test takes the rest
JITTER_SCALE = 286 / 256  # reference random jitter: resize up by this much, crop back
SPLIT_FILE = "split.json"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class PairFiles:
    """One training pair on disk: two files, or one A|B file (b is None)."""

    name: str
    a: Path
    b: Path | None


@dataclass
class PairedImages:
    """Decoded pairs of one split, (N, C, H, W) integer tensors scaled by max_value."""

    a: torch.Tensor
    b: torch.Tensor
    names: list[str]
    max_value: int

    def __len__(self) -> int:
        return len(self.names)

    def to(self, device: torch.device) -> PairedImages:
        return PairedImages(self.a.to(device), self.b.to(device), self.names, self.max_value)

    def as_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Integer pixels -> float32 in [-1, 1]."""
        return x.float() * (2.0 / self.max_value) - 1.0

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = index.to(self.a.device)
        return self.as_unit(self.a[index]), self.as_unit(self.b[index])


@dataclass
class PairedData:
    source: str
    splits: dict[str, PairedImages]
    split_names: dict[str, list[str]]

    @property
    def in_channels(self) -> int:
        return self.splits["train"].a.shape[1]

    @property
    def out_channels(self) -> int:
        return self.splits["train"].b.shape[1]

    @property
    def has_identity_baseline(self) -> bool:
        """Output = input is a meaningful baseline only when A and B have the same shape."""
        return self.in_channels == self.out_channels

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


def discover_pairs(folder: Path) -> list[PairFiles]:
    """The pairs in one folder, in layout (b) when it has A/ and B/, else layout (a)."""
    a_dir, b_dir = folder / "A", folder / "B"
    if a_dir.is_dir() or b_dir.is_dir():
        if not (a_dir.is_dir() and b_dir.is_dir()):
            missing = b_dir if a_dir.is_dir() else a_dir
            raise UserError(f"{missing}: folder missing; the A/B layout needs both A/ and B/ with matching file names")
        a_files = {p.stem: p for p in _image_files(a_dir)}
        b_files = {p.stem: p for p in _image_files(b_dir)}
        for side, files, other in (("A", a_files, b_files), ("B", b_files, a_files)):
            unmatched = sorted(set(files) - set(other))
            if unmatched:
                more = f" (and {len(unmatched) - 1} more)" if len(unmatched) > 1 else ""
                other_dir = folder / ("B" if side == "A" else "A")
                raise UserError(
                    f"{files[unmatched[0]]}: no file of the same name in {other_dir}{more}; "
                    "every A image needs a B image with the same name"
                )
        pairs = [PairFiles(stem, a_files[stem], b_files[stem]) for stem in sorted(a_files)]
    else:
        pairs = [PairFiles(p.stem, p, None) for p in _image_files(folder)]
    if not pairs:
        raise UserError(
            f"{folder}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))}); "
            "use A|B images side by side, or A/ and B/ folders"
        )
    return pairs


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


def _read_16_bit_colour_png(path: Path) -> np.ndarray:
    width, height, rows, info = png.Reader(filename=str(path)).asDirect()
    return np.vstack([np.asarray(row, np.uint16) for row in rows]).reshape(height, width, info["planes"])


def png_bytes(image: np.ndarray) -> bytes:
    """(H, W, 1|3) uint8 or uint16 -> PNG bytes (pypng: Pillow cannot store 16-bit RGB)."""
    height, width, channels = image.shape
    writer = png.Writer(width, height, greyscale=channels == 1, bitdepth=8 if image.dtype == np.uint8 else 16)
    buffer = io.BytesIO()
    writer.write(buffer, image.reshape(height, width * channels))
    return buffer.getvalue()


def read_image(path: Path) -> tuple[np.ndarray, int]:
    """(H, W, C) array and its max value (255 or 65535). Alpha is dropped."""
    try:
        image = _read_16_bit_colour_png(path) if _is_16_bit_colour_png(path) else iio.imread(path)
    except Exception as err:  # imageio raises many types for unreadable files
        raise UserError(f"{path}: cannot be read as an image ({type(err).__name__}); replace or remove it") from None
    if image.dtype == np.uint8:
        max_value = 255
    elif image.dtype == np.uint16:
        max_value = 65535
    else:
        raise UserError(f"{path}: pixel type {image.dtype} is not supported; save it as 8-bit or 16-bit PNG/TIFF")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4):
        raise UserError(f"{path}: shape {image.shape} is not a grayscale or RGB image")
    channels = 1 if image.shape[2] in (1, 2) else 3  # drop alpha (LA -> L, RGBA -> RGB)
    return image[:, :, :channels], max_value


Decoded = tuple[np.ndarray, int]  # (H, W, C) pixels and their max value


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


def _unify_channels(splits: dict[str, PairedImages]) -> None:
    """Make every split use the largest channel count seen (a gray file in an RGB set becomes RGB)."""
    for side in ("a", "b"):
        channels = max(getattr(s, side).shape[1] for s in splits.values())
        for s in splits.values():
            x = getattr(s, side)
            if x.shape[1] < channels:
                setattr(s, side, x.expand(-1, channels, -1, -1).contiguous())


def load_paired_data(
    data: str,
    size: int,
    split_seed: int = 0,
    run_dir: Path | None = None,
    jitter: bool = False,
    max_train_images: int = 0,
) -> PairedData:
    """Decode every split once. With a run_dir, the split is saved there (and reused when present)."""
    root = resolve_root(data)
    files = find_splits(root, split_seed, run_dir)
    if max_train_images:
        files["train"] = files["train"][:max_train_images]
    split_names = {s: [p.name for p in files[s]] for s in SPLITS}
    train_size = round(size * JITTER_SCALE) if jitter else size
    splits = {s: decode_split(files[s], train_size if s == "train" else size) for s in SPLITS}
    if len({s.max_value for s in splits.values()}) > 1:  # 8-bit and 16-bit files mixed across splits
        splits = {s: _rescale(x, 65535) for s, x in splits.items()}
    _unify_channels(splits)
    if run_dir is not None:
        save_split(run_dir, data, split_names)
    return PairedData(data, splits, split_names)


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
