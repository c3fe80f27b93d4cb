"""Finding the pairs: folder layouts, split sub-folders, the seeded train/val/test split.

Two folder layouts are detected automatically:
  (a) pix2pix convention: each file holds A in its left half and B in its right half;
  (b) `A/` and `B/` folders whose files match by name (the extension may differ), holding images,
      or NIfTI volumes (one name = one subject; an optional `mask/` folder marks the foreground).
Either layout may sit inside `train/ val/ test/` sub-folders, which are then used as the split;
otherwise a seeded 70/15/15 split is made once and saved as split.json in the run directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from trainer.builtin import BUILTIN_PREFIX, builtin_root
from trainer.data.remote import fetch_root, is_uri
from trainer.data.volumes import VOLUME_SUFFIXES, volume_stem
from trainer.errors import UserError
from trainer.files import write_json

TIFF_SUFFIXES = {".tif", ".tiff"}  # read with tifffile, everything else with Pillow
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"} | TIFF_SUFFIXES
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = {"train": 0.70, "val": 0.15}  # test takes the rest
SPLIT_FILE = "split.json"
MASK_DIR = "mask"


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

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(p for p in (self.a, self.b, self.mask) if p is not None)


def split_hash(split_names: dict[str, list[str]]) -> str:
    canonical = json.dumps({s: split_names[s] for s in SPLITS}, sort_keys=True).encode()
    return hashlib.sha256(canonical).hexdigest()[:16]


def resolve_root(data: str) -> Path:
    """The local folder of `data`: a folder, a built-in set (built on first use) or a pyarrow.fs URI
    (fetched once per node into the cache, trainer.data.remote)."""
    if data.startswith(BUILTIN_PREFIX):
        return builtin_root(data[len(BUILTIN_PREFIX) :])
    if is_uri(data):
        return fetch_root(data)
    root = Path(data).expanduser()
    if not root.is_dir():
        raise UserError(
            f"{root}: data folder not found; give a folder of A|B images, a folder with A/ and B/, "
            f"or a built-in set such as {BUILTIN_PREFIX}glyphs"
        )
    return root


def _listed_files(folder: Path) -> list[Path]:
    """The files of a folder (links to files included), sorted by name. scandir knows each entry's
    type without a stat, and names sort much faster than Paths: a set of 20,000 pairs is listed in
    a fraction of a second."""
    with os.scandir(folder) as entries:
        names = sorted(entry.name for entry in entries if entry.is_file())
    return [folder / name for name in names]


def _image_files(folder: Path) -> list[Path]:
    return [p for p in _listed_files(folder) if p.suffix.lower() in IMAGE_SUFFIXES]


def _named_files(folder: Path) -> dict[str, Path]:
    """name -> file for the images and NIfTI volumes of an A/, B/ or mask/ folder."""
    files = {}
    for path in _listed_files(folder):
        name = volume_stem(path) or (path.stem if path.suffix.lower() in IMAGE_SUFFIXES else None)
        if name is not None:
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
