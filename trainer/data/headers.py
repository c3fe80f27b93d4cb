"""Every data file's header, read before any work starts: a file that cannot be an image or a volume
(empty, another format under the suffix, a cut-off header) or that declares more than the size
limits allow (trainer.data.limits) is named at once, where decoding would find it only when a
trial reaches it (a search: each trial, each retry). Headers only, so a few milliseconds a file."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import nibabel as nib
import tifffile
from PIL import Image

from trainer.data.discover import TIFF_SUFFIXES  # read with tifffile, as the decoder does; other images with Pillow
from trainer.data.limits import IMAGE_PIXELS
from trainer.data.volumes import checked_shape, volume_stem
from trainer.errors import UserError


def check_header(path: Path) -> None:
    """Refuse, in one line naming `path`, a file whose header does not read or is over its limit."""
    volume = volume_stem(path) is not None
    try:
        if volume:
            checked_shape(path, nib.load(str(path)).shape)  # nibabel reads the header; voxels load lazily
            return
        if path.suffix.lower() in TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                height, width = tif.series[0].shape[:2]
        else:
            with Image.open(path) as image:  # reads the header; pixels decode on first use
                width, height = image.size
    except UserError:
        raise
    except Exception as err:  # the readers raise many types for empty, foreign or cut-off files
        kind = "NIfTI" if volume else "an image"
        raise UserError(f"{path}: cannot be read as {kind} ({type(err).__name__}); replace or remove it") from None
    IMAGE_PIXELS.check(path, (width, height))


def check_headers(paths: Iterable[Path | None]) -> None:
    """check_header of every file named (None: a pair's absent B or mask)."""
    for path in paths:
        if path is not None:
            check_header(path)
