"""Paired data: find the pairs and split them (trainer.data.discover), decode each split once per node
into the shared decoded cache (trainer.data.decode, trainer.data.cache), and serve [-1, 1] batches.

Decoded splits are kept in the data's own units in a compact type (uint8 or uint16 for image files;
the stored integer type, float16 or float32 for volumes), memory-mapped read-only from the cache, so
the trials of a node share one copy in the page cache and a set larger than memory trains: a batch
gathers its rows from the map. Each side's intensity mapping (trainer.data.intensity, fitted on the
training split) turns a batch into [-1, 1] floats on the training device, where it is augmented.
Volumes are split by subject, never by slice, and then sliced (trainer.data.volumes).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainer.config import TrainConfig
from trainer.data.cache import cached
from trainer.data.decode import (
    LUMA,
    PNG_SIGNATURE,
    DecodedSplit,
    ReadOptions,
    decode_images,
    decode_volumes,
    png_bytes,
    read_image,
    read_pair,
    side_size,
)
from trainer.data.discover import (
    IMAGE_SUFFIXES,
    SPLIT_FILE,
    SPLITS,
    PairFiles,
    find_splits,
    resolve_root,
    save_split,
    seeded_split,
    split_hash,
)
from trainer.data.intensity import IntensityMap, SideStats, fit_map
from trainer.errors import UserError

__all__ = [
    "IMAGE_SUFFIXES",
    "LUMA",
    "PNG_SIGNATURE",
    "SPLITS",
    "SPLIT_FILE",
    "PairFiles",
    "PairedData",
    "PairedImages",
    "ReadOptions",
    "augment",
    "count_train_pairs",
    "find_splits",
    "load_paired_data",
    "load_run_data",
    "png_bytes",
    "read_image",
    "read_pair",
    "resolve_root",
    "seeded_split",
    "side_size",
]

JITTER_SCALE = 286 / 256  # reference random jitter: resize up by this much, crop back
TWELVE_BIT = 4096  # 16-bit files of 12-bit CT / X-ray exports hold values below this
# A CUDA device keeps a split in its own memory (no copy per batch) when it takes at most this
# share of the free device memory; a larger split stays mapped on the host and batches move.
DEVICE_RESIDENT_SHARE = 0.5


@dataclass(frozen=True)
class PairedImages:
    """Decoded pairs of one split, (N, C, H, W) in stored units: numpy arrays (a read-only map of the
    decoded cache, or memory) or tensors. `batch` gathers rows and maps them to [-1, 1] with each
    side's intensity mapping (by default 0..max_value, the dtype mapping)."""

    a: np.ndarray | torch.Tensor
    b: np.ndarray | torch.Tensor
    names: list[str]
    max_value: int  # of the data's units: 255 or 65535 for image files; 0 for volumes (no type range)
    a_map: IntensityMap | None = None
    b_map: IntensityMap | None = None
    scale: int = 1  # stored -> the data's units: 257 for an 8-bit split in a set with 16-bit files
    channels: tuple[int, int] = (0, 0)  # of A and B in a batch (a gray split in an RGB set grows); 0: stored
    device: torch.device = torch.device("cpu")  # where batches are made

    def __post_init__(self) -> None:
        if self.max_value:
            default = IntensityMap("dtype", 0.0, float(self.max_value))
            object.__setattr__(self, "a_map", self.a_map or default)
            object.__setattr__(self, "b_map", self.b_map or default)
        object.__setattr__(
            self, "channels", (max(self.channels[0], self.a.shape[1]), max(self.channels[1], self.b.shape[1]))
        )

    def __len__(self) -> int:
        return len(self.names)

    @property
    def nbytes(self) -> int:
        return self.a.nbytes + self.b.nbytes

    @property
    def target_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of a target image in a batch."""
        return (self.channels[1], *self.b.shape[2:])

    def to(self, device: torch.device) -> PairedImages:
        """Batches made on `device`; on CUDA the split moves there when it fits, else rows move per batch."""
        if device.type != "cuda" or self.nbytes > DEVICE_RESIDENT_SHARE * torch.cuda.mem_get_info(device)[0]:
            return dataclasses.replace(self, device=device)
        return dataclasses.replace(self, a=_tensor(self.a).to(device), b=_tensor(self.b).to(device), device=device)

    def with_maps(self, a_map: IntensityMap, b_map: IntensityMap) -> PairedImages:
        return dataclasses.replace(self, a_map=a_map, b_map=b_map)

    def with_channels(self, channels: tuple[int, int]) -> PairedImages:
        return dataclasses.replace(self, channels=channels)

    def swapped(self) -> PairedImages:
        """B as the input and A as the target (direction BtoA)."""
        return dataclasses.replace(
            self, a=self.b, b=self.a, a_map=self.b_map, b_map=self.a_map, channels=self.channels[::-1]
        )

    def select(self, rows: np.ndarray) -> PairedImages:
        """These rows only, copied into memory."""
        names = [self.names[i] for i in rows.tolist()]
        return dataclasses.replace(self, a=self.a[rows], b=self.b[rows], names=names)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows `index` of A and B in [-1, 1], on the device."""
        a, b = self.units(index)
        return self.a_map.to_unit(a), self.b_map.to_unit(b)

    def units(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows `index` of A and B in the data's units (integers for image files), on the device."""
        return self._gather(self.a, index, self.channels[0]), self._gather(self.b, index, self.channels[1])

    def _gather(self, stored: np.ndarray | torch.Tensor, index: torch.Tensor, channels: int) -> torch.Tensor:
        if isinstance(stored, torch.Tensor):
            x = stored[index.to(stored.device)]
        else:  # rows of a map come through the page cache; only they need to be in memory
            x = torch.from_numpy(stored[index.cpu().numpy()])
        if self.scale != 1:
            x = x.to(torch.int32) * self.scale
        if x.shape[1] < channels:
            x = x.expand(-1, channels, -1, -1)
        return x.to(self.device)


def _tensor(values: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values
    return torch.from_numpy(np.array(values, np.int32 if values.dtype == np.uint16 else values.dtype))


@dataclass(frozen=True)
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
        return self.splits["train"].channels[0]

    @property
    def out_channels(self) -> int:
        return self.splits["train"].channels[1]

    @property
    def has_identity_baseline(self) -> bool:
        """Output = input is a meaningful baseline only when A and B have the same shape and units
        (image pixels; volumes only under one shared window, e.g. CBCT -> CT in HU)."""
        same_units = not self.is_volumes or self.maps["A"] == self.maps["B"]
        return self.in_channels == self.out_channels and same_units

    @property
    def split_hash(self) -> str:
        return split_hash(self.split_names)


# ---------------------------------------------------------------------------------------------
# decoding once per node


def train_rows(count: int, max_train_images: int, volumes: bool) -> np.ndarray:
    """The one owner of `max_train_images`: which of `count` training items a run uses. Image files
    are capped before decoding (the first ones); volume slices after (evenly spaced, so every
    subject keeps some)."""
    if not max_train_images or count <= max_train_images:
        return np.arange(count)
    if volumes:
        return torch.linspace(0, count - 1, max_train_images).round().long().numpy()
    return np.arange(max_train_images)


@functools.lru_cache(maxsize=64)
def _resolved_folder(folder: str) -> str:
    return os.path.realpath(folder)


def file_identity(path: Path) -> tuple[str, int, int]:
    """A data file as a cache key holds it: absolute path, size and mtime. The folder is resolved once
    and strings stand in for Paths: resolving each file costs a stat per path component, and that
    and Path objects took 4 of the 6 s in which a trial started on a set of 20,000 pairs."""
    folder, name = os.path.split(path)
    stat = os.stat(path)
    return os.path.join(_resolved_folder(folder), name), stat.st_size, stat.st_mtime_ns


def decoded_split(pairs: list[PairFiles], size: int, options: ReadOptions, volumes: bool) -> DecodedSplit:
    """One split decoded at `size`: from the node's decoded cache, built there on first use."""
    key = {
        "kind": "volumes" if volumes else "images",
        "size": size,
        "options": options.decoding(volumes),
        "pairs": [[p.name, *map(file_identity, p.paths)] for p in pairs],
    }

    def decode(folder: Path | None) -> DecodedSplit:
        return decode_volumes(pairs, size, options, folder) if volumes else decode_images(pairs, size, folder)

    def build(folder: Path) -> dict[str, object]:
        split = decode(folder)
        stats = {side: dataclasses.asdict(s) for side, s in split.stats.items()}
        return {"names": split.names, "max_value": split.max_value, "stats": stats}

    entry = cached("decoded", key, build, "decoding into memory instead")
    if entry is None:
        return decode(None)
    meta = entry.meta
    return DecodedSplit(
        np.load(entry.folder / "a.npy", mmap_mode="r"),
        np.load(entry.folder / "b.npy", mmap_mode="r"),
        meta["names"],
        meta["max_value"],
        {side: SideStats.from_dict(s) for side, s in meta["stats"].items()},
    )


def intensity_maps(
    stats: dict[str, SideStats], max_value: int, options: ReadOptions, volumes: bool
) -> dict[str, IntensityMap]:
    """Each side's mapping to [-1, 1]; percentile and minmax see the training split only."""
    mode = options.intensity
    if mode == "auto":
        mode = "percentile" if volumes else "dtype"
    if mode == "dtype" and volumes:
        raise UserError("intensity dtype: NIfTI volumes have no fixed value range; use percentile, window or minmax")
    maps = {}
    for side, window in (("A", options.window_a), ("B", options.window_b)):
        if mode == "dtype":
            maps[side] = IntensityMap("dtype", 0.0, float(max_value))
        elif mode == "window" and window != (0.0, 0.0):
            maps[side] = IntensityMap("window", *window)
        else:  # a side without a window of its own (e.g. MR beside CT in HU) falls back to percentile
            maps[side] = fit_map("percentile" if mode == "window" else mode, stats[side.lower()], side)
    return maps


def warn_12_bit(root: Path, max_value: int, stats: dict[str, SideStats], maps: dict[str, IntensityMap]) -> None:
    """12-bit CT / X-ray exports stored as 16-bit files use a sixteenth of the dtype mapping's range."""
    for side in ("A", "B"):
        if maps[side].mode == "dtype" and max_value == 65535 and stats[side.lower()].maximum < TWELVE_BIT:
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
    """Every split, decoded once per node (trainer.data.cache) and mapped. With a run_dir, the split
    is reused from there when present, and saved there unless `save_split_file` is False (a
    read-only command such as trainer.evaluate).

    `options` (intensity, volumes, direction) default to TrainConfig's defaults."""
    options = options if options is not None else ReadOptions.of(TrainConfig())
    root = resolve_root(data)
    files = find_splits(root, split_seed, run_dir)
    volumes = _is_volumes(root, files)
    if not volumes:
        files["train"] = [files["train"][i] for i in train_rows(len(files["train"]), max_train_images, False)]
    split_names = {s: [p.name for p in files[s]] for s in SPLITS}
    train_size = round(size * JITTER_SCALE) if jitter else size
    decoded = {s: decoded_split(files[s], train_size if s == "train" else size, options, volumes) for s in SPLITS}
    max_value = max(d.max_value for d in decoded.values())  # 8-bit and 16-bit files may mix across splits
    splits = {
        s: PairedImages(d.a, d.b, d.names, max_value, scale=max_value // d.max_value if d.max_value else 1)
        for s, d in decoded.items()
    }
    stats = decoded["train"].stats
    rows = train_rows(len(splits["train"]), max_train_images, volumes)
    if volumes and len(rows) < len(splits["train"]):
        splits["train"] = splits["train"].select(rows)
        stats = {"a": SideStats.of(splits["train"].a), "b": SideStats.of(splits["train"].b)}
    elif splits["train"].scale != 1:  # the cache's stats are in the split's own 8-bit units
        train = splits["train"]
        stats = {"a": SideStats.of(train.a, train.scale), "b": SideStats.of(train.b, train.scale)}
    maps = intensity_maps(stats, max_value, options, volumes)
    if not volumes:
        warn_12_bit(root, max_value, stats, maps)
    channels = (max(x.channels[0] for x in splits.values()), max(x.channels[1] for x in splits.values()))
    splits = {s: x.with_maps(maps["A"], maps["B"]).with_channels(channels) for s, x in splits.items()}
    if options.direction == "BtoA":
        splits = {s: x.swapped() for s, x in splits.items()}
    if run_dir is not None and save_split_file:
        save_split(run_dir, data, split_names)
    return PairedData(data, splits, split_names, maps, files, options.direction)


def _is_volumes(root: Path, files: dict[str, list[PairFiles]]) -> bool:
    volumes = any(p.is_volume for pairs in files.values() for p in pairs)
    if volumes and not all(p.is_volume for pairs in files.values() for p in pairs):
        raise UserError(f"{root}: splits mix NIfTI volumes and 2D images; keep one kind per data set")
    return volumes


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
    says it (no decoding); a volume's slices are known once it is read, so the training split is
    decoded into the node's cache, where the trials then find it (nothing is decoded twice)."""
    root = resolve_root(cfg.data)
    files = find_splits(root, cfg.split_seed, None)
    volumes = _is_volumes(root, files)
    count = len(files["train"])
    if volumes:
        size = round(cfg.size * JITTER_SCALE) if cfg.jitter else cfg.size
        count = len(decoded_split(files["train"], size, ReadOptions.of(cfg), volumes=True).names)
    return len(train_rows(count, cfg.max_train_images, volumes))
