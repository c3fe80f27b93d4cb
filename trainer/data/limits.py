"""The largest image and volume the trainer reads: one limit per kind, in pixels or voxels, checked
from each file's header before anything is decoded.

A file's size says little about what it decodes to: a 1 MB PNG of zeros can declare 13000 x 13000
16-bit RGB pixels (1 GB decoded, 2 GB more as float32), a 6 MB .nii.gz 1100^3 voxels. So every
reader asks the header for the shape first and refuses what is over the limit, naming the limit and
how to raise it: trainer.data.read_image (Pillow, pypng for 16-bit colour PNG, tifffile for TIFF)
and trainer.data.volumes.read_volume (nibabel). Pixels and voxels, not bytes, so that a limit means
the same image size for 8- and 16-bit files; the README says what each default allows.

Each limit is raised (or lowered) by an environment variable, which reaches every command alike
(train, evaluate, predict, and a search's trials when set where the search runs) without a flag on
each of them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import UserError


@dataclass(frozen=True)
class SizeLimit:
    """How many pixels (voxels) one file may declare, and the environment variable that changes it."""

    unit: str  # pixels or voxels
    per: str  # image or volume
    default: int
    env: str

    def __post_init__(self) -> None:
        if self.default < 1:
            raise ValueError(f"{self.env}: the default limit must be >= 1 (got {self.default})")

    def value(self) -> int:
        raw = os.environ.get(self.env)
        if raw is None:
            return self.default
        try:
            limit = int(raw.replace("_", ""))
        except ValueError:
            limit = 0
        if limit < 1:
            raise UserError(
                f"{self.env}={raw}: must be a whole number of {self.unit} per {self.per} above 0 "
                f"(the default is {self.default})"
            )
        return limit

    def check(self, path: Path, dims: tuple[int, ...]) -> None:
        """Refuse a file whose header declares more than the limit; `dims` as people write them (W x H)."""
        count, limit = math.prod(dims), self.value()
        if count > limit:
            raise UserError(
                f"{path}: {' x '.join(map(str, dims))} = {count:,} {self.unit}, above the limit of {limit:,} "
                f"per {self.per}; downscale the file, or raise the limit with {self.env}={count}"
            )


# 10000 x 10000: 0.6 GB decoded as 16-bit RGB, 1.2 GB as the float32 copy that resizing makes
IMAGE_PIXELS = SizeLimit("pixels", "image", 100_000_000, "PIX2PIX_MAX_IMAGE_PIXELS")
# 512 x 512 x 1024, a long high-resolution CT: 1 GiB per float32 copy, and a subject holds several
# (A, B, their RAS-ordered copies, the mask)
VOLUME_VOXELS = SizeLimit("voxels", "volume", 512 * 512 * 1024, "PIX2PIX_MAX_VOLUME_VOXELS")
