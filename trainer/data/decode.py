"""Decoding: image files and NIfTI volumes -> (N, C, size, size) arrays in the data's own units,
streamed file by file into preallocated arrays (a .npy file of the decoded cache, or memory), so the
decode holds one file at a time, never the whole split twice.

Stored types are the smallest that hold the decoded values exactly, so that training on them is
bit-identical to training on float32: uint8 or uint16 for 8- and 16-bit image files; for volumes
the type the NIfTI header stores (int16 for CT in HU, ...) when no resize is needed, else float16
when every value fits it exactly, else float32 (see _RowStore).
"""

from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import nibabel as nib
import numpy as np
import png
import tifffile
import torch
import torch.nn.functional as F
from nibabel.orientations import io_orientation
from PIL import Image

from trainer.config import TrainConfig
from trainer.data.discover import TIFF_SUFFIXES, PairFiles
from trainer.data.intensity import SideStats
from trainer.data.limits import IMAGE_PIXELS
from trainer.data.volumes import (
    PLANE_AXES,
    checked_shape,
    foreground_fractions,
    planes,
    read_subject,
    slice_stack,
    to_square,
    unreadable,
)
from trainer.errors import UserError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# ITU-R BT.601 luma, the weights PIL's convert("L") uses, which built the grayscale training inputs:
# trainer.predict turns a colour input into a 1-channel model's input with them (so does the model card's recipe).
LUMA = (0.299, 0.587, 0.114)


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

    def decoding(self, volumes: bool) -> dict[str, object]:
        """The options that change what is decoded (the decoded cache's key); the others (intensity,
        windows, direction) are applied to the decoded arrays batch by batch."""
        if not volumes:
            return {}
        return {
            "slice_axis": self.slice_axis,
            "min_foreground": self.min_foreground,
            "foreground_threshold": self.foreground_threshold,
        }


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


# ---------------------------------------------------------------------------------------------
# streamed decoding into preallocated arrays

COPY_ROWS = 256  # rows copied at a time when a store widens: bounded memory


@dataclass(frozen=True)
class DecodedSplit:
    """One split decoded: A and B as (N, C, size, size) arrays in stored units (read-only maps of the
    decoded cache's .npy files, or memory), each pair's (slice's) name, and what the intensity
    mappings fitted on it need."""

    a: np.ndarray
    b: np.ndarray
    names: list[str]
    max_value: int  # 255 or 65535 for image files; 0 for volumes, whose values have no type range
    stats: dict[str, SideStats]  # "a" and "b"

    @property
    def nbytes(self) -> int:
        return self.a.nbytes + self.b.nbytes


def _holds_exactly(dtype: np.dtype, rows: np.ndarray) -> bool:
    if rows.dtype == dtype:
        return True
    with np.errstate(invalid="ignore", over="ignore"):  # an out-of-range cast is what this detects
        return bool(np.array_equal(rows.astype(dtype), rows))


class _RowStore:
    """Rows written in order into a preallocated array of `capacity` rows: a .npy file in `folder`
    (np.lib.format.open_memmap), or memory when folder is None. A chunk the current type does not
    hold exactly widens the store to float32, the decoders' own type, once (the rows written so far
    are copied, COPY_ROWS at a time): values are never rounded."""

    def __init__(self, folder: Path | None, name: str, capacity: int, row_shape: tuple[int, ...], dtype: np.dtype):
        self.path = folder / f"{name}.npy" if folder is not None else None
        self.count = 0
        self.array = self._allocate(self.path, (capacity, *row_shape), np.dtype(dtype))

    @staticmethod
    def _allocate(path: Path | None, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        if path is None:
            return np.empty(shape, dtype)
        return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)

    def append(self, rows: np.ndarray) -> None:
        if not _holds_exactly(self.array.dtype, rows):
            self._widen()
        self.array[self.count : self.count + len(rows)] = rows
        self.count += len(rows)

    def _widen(self) -> None:
        wide_path = self.path.with_name(f"{self.path.stem}.wide.npy") if self.path is not None else None
        wide = self._allocate(wide_path, self.array.shape, np.dtype(np.float32))
        for start in range(0, self.count, COPY_ROWS):
            stop = min(start + COPY_ROWS, self.count)
            wide[start:stop] = self.array[start:stop]
        self.array = wide  # the old map is released here, before its file is replaced
        if wide_path is not None:
            os.replace(wide_path, self.path)

    def finish(self) -> np.ndarray:
        """The rows written. A .npy file is cut to them: numpy's header leaves room for the first
        axis to change (numpy.lib.format.GROWTH_AXIS_MAX_DIGITS), so it is rewritten in place."""
        if self.path is None:
            if self.count < len(self.array):
                self.array.resize((self.count, *self.array.shape[1:]), refcheck=False)  # in place, no copy
            return self.array
        self.array.flush()
        row_bytes = self.array[0].nbytes if len(self.array) else 0
        header = {
            "descr": np.lib.format.dtype_to_descr(self.array.dtype),
            "fortran_order": False,
            "shape": (self.count, *self.array.shape[1:]),
        }
        del self.array
        with open(self.path, "r+b") as f:
            np.lib.format.read_magic(f)
            np.lib.format.read_array_header_1_0(f)
            data_offset = f.tell()
            f.seek(0)
            np.lib.format.write_array_header_1_0(f, header)
            if f.tell() != data_offset:  # cannot happen with numpy's growth-axis padding; never write past it
                raise RuntimeError(f"{self.path}: the .npy header changed length")
            f.truncate(data_offset + self.count * row_bytes)
        return np.load(self.path, mmap_mode="r")


def _split_of(stores: tuple[_RowStore, _RowStore], names: list[str], max_value: int) -> DecodedSplit:
    a, b = (store.finish() for store in stores)
    return DecodedSplit(a, b, names, max_value, {"a": SideStats.of(a), "b": SideStats.of(b)})


@dataclass(frozen=True)
class _Layout:
    """The channels of each side and the max value one split's images are stored with."""

    channels_a: int
    channels_b: int
    max_value: int

    def covering(self, other: _Layout) -> _Layout:
        return _Layout(
            max(self.channels_a, other.channels_a),
            max(self.channels_b, other.channels_b),
            max(self.max_value, other.max_value),
        )


class _LayoutGrew(Exception):
    """A file needs more channels or bits than the files before it: the split is decoded again."""

    def __init__(self, layout: _Layout) -> None:
        self.layout = layout


def decode_images(pairs: list[PairFiles], size: int, folder: Path | None) -> DecodedSplit:
    """Every pair resized to `size`, at the largest channel count and bit depth of the split (a gray
    file in an RGB set becomes RGB; an 8-bit file in a 16-bit set is rescaled to 16 bits). The
    layout is taken from the first file and the split is decoded once more in the rare set where a
    later file needs more: a layout known up front is what lets the decode stream."""
    layout = None
    while True:
        try:
            return _decode_images(pairs, size, folder, layout)
        except _LayoutGrew as grown:
            layout = grown.layout


def _decode_images(pairs: list[PairFiles], size: int, folder: Path | None, layout: _Layout | None) -> DecodedSplit:
    first = read_pair(pairs[0])
    (a0, max_a0), (b0, max_b0) = first
    layout = layout or _Layout(a0.shape[2], b0.shape[2], max(max_a0, max_b0))
    dtype = np.uint8 if layout.max_value == 255 else np.uint16
    stores = (
        _RowStore(folder, "a", len(pairs), (layout.channels_a, size, size), dtype),
        _RowStore(folder, "b", len(pairs), (layout.channels_b, size, size), dtype),
    )
    for i, pair in enumerate(pairs):
        (a, max_a), (b, max_b) = first if i == 0 else read_pair(pair)
        needed = layout.covering(_Layout(a.shape[2], b.shape[2], max(max_a, max_b)))
        if needed != layout:
            raise _LayoutGrew(needed)
        stores[0].append(_resize(a, max_a, size, layout.channels_a, layout.max_value).numpy()[None])
        stores[1].append(_resize(b, max_b, size, layout.channels_b, layout.max_value).numpy()[None])
    return _split_of(stores, [p.name for p in pairs], layout.max_value)


def _volume_header(path: Path) -> nib.Nifti1Image:
    try:
        return nib.load(str(path))  # the header only: voxels load when asked for
    except Exception as err:  # nibabel raises many types for truncated or foreign files
        raise unreadable(path, err) from None


def _stored_type(image: nib.Nifti1Image) -> np.dtype:
    """The header's integer type when the voxels are stored integers (no scaling), else float16 to
    start with (_RowStore widens it where values need float32)."""
    dtype = image.get_data_dtype()
    if dtype.kind in "iu" and image.dataobj.slope == 1 and image.dataobj.inter == 0:
        return dtype.newbyteorder("=")
    return np.dtype(np.float16)


def _plane_slices(path: Path, image: nib.Nifti1Image, slice_axis: str) -> int:
    """How many slices a volume has across the planes sliced, from its header (RAS axes, as sliced)."""
    shape = checked_shape(path, image.shape)
    ras_axis_of = io_orientation(image.affine)[:, 0].astype(int)  # voxel axis j -> RAS axis
    return sum(shape[int(np.flatnonzero(ras_axis_of == PLANE_AXES[p])[0])] for p in planes(slice_axis))


def decode_volumes(subjects: list[PairFiles], size: int, options: ReadOptions, folder: Path | None) -> DecodedSplit:
    """The foreground slices of each subject in the volumes' own units, named subject:planeNNN.
    Headers first (types, how many slices at most), then one subject at a time."""
    headers = [(pair, _volume_header(pair.a), _volume_header(pair.b)) for pair in subjects]
    capacity = sum(_plane_slices(pair.a, a, options.slice_axis) for pair, a, _ in headers)
    stores = (
        _RowStore(folder, "a", capacity, (1, size, size), np.result_type(*(_stored_type(a) for _, a, _ in headers))),
        _RowStore(folder, "b", capacity, (1, size, size), np.result_type(*(_stored_type(b) for _, _, b in headers))),
    )
    names: list[str] = []
    for pair in subjects:
        subject = read_subject(pair.name, pair.a, pair.b, pair.mask, options.foreground_threshold)
        before = len(names)
        for plane in planes(options.slice_axis):
            keep = np.flatnonzero(foreground_fractions(subject.foreground, plane) >= options.min_foreground)
            # Padding takes each volume's minimum, its background (air), so the square adds no edges.
            stores[0].append(to_square(slice_stack(subject.a, plane)[keep], size, subject.a.min()).numpy())
            stores[1].append(to_square(slice_stack(subject.b, plane)[keep], size, subject.b.min()).numpy())
            names += [f"{pair.name}:{plane}{k:03d}" for k in keep]
        if len(names) == before:
            print(
                f"warning: {pair.mask or pair.a}: subject {pair.name} has no {options.slice_axis} slice with "
                f"min_foreground {options.min_foreground} of foreground (an empty mask?), so it is left out",
                file=sys.stderr,
            )
    if not names:
        raise UserError(
            f"{subjects[0].a.parent}: no {options.slice_axis} slice of {', '.join(p.name for p in subjects)} has "
            f"min_foreground {options.min_foreground} of foreground; lower --min_foreground or --foreground_threshold"
        )
    return _split_of(stores, names, 0)
