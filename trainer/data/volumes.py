"""NIfTI volumes (.nii, .nii.gz) read with nibabel: validation, orientation, foreground and slicing.

Volumes are turned to the closest RAS orientation before slicing, so that `axial` means the same
anatomical plane for every subject whatever its affine (axis 2 of the RAS array; coronal axis 1,
sagittal axis 0), and in-plane orientation is the same across subjects. `trainer.predict` slices
the same way and turns the result back to the input's own voxel order before writing it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from scipy import ndimage

from trainer.data.limits import VOLUME_VOXELS
from trainer.errors import UserError

VOLUME_SUFFIXES = (".nii.gz", ".nii")
PLANE_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}  # axes of the RAS-oriented array
AFFINE_TOLERANCE = 1e-2  # mm (and direction cosines): header round-off, not a different grid
FOREGROUND_PERCENTILES = (0.5, 99.5)  # A's robust range, for the relative foreground threshold
RAS = axcodes2ornt(("R", "A", "S"))


def volume_stem(path: Path) -> str | None:
    """The subject name of a NIfTI file (`sub01.nii.gz` -> `sub01`), or None for other files."""
    lower = path.name.lower()
    for suffix in VOLUME_SUFFIXES:
        if lower.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def planes(slice_axis: str) -> list[str]:
    return list(PLANE_AXES) if slice_axis == "all" else [slice_axis]


@dataclass
class NiftiVolume:
    """One volume as stored: voxel values (float32, the file's own voxel order) and its image."""

    path: Path
    data: np.ndarray
    image: nib.Nifti1Image

    @property
    def affine(self) -> np.ndarray:
        return self.image.affine

    def to_ras(self) -> np.ndarray:
        return apply_orientation(self.data, io_orientation(self.affine))

    def from_ras(self, ras: np.ndarray) -> np.ndarray:
        """An array in RAS order (same grid) back to this file's voxel order."""
        return apply_orientation(ras, ornt_transform(RAS, io_orientation(self.affine)))


def read_volume(path: Path) -> NiftiVolume:
    """A 3D volume as float32 (scl_slope/inter applied); every problem is a one-line UserError. The
    shape comes from the header and is checked (3D, the voxel limit) before any voxel is decoded."""
    try:
        image = nib.load(str(path))
        shape = checked_shape(path, image.shape)
        data = np.asarray(image.get_fdata(dtype=np.float32)).reshape(shape)
    except UserError:
        raise
    except Exception as err:  # nibabel raises many types for truncated or foreign files
        raise UserError(f"{path}: cannot be read as NIfTI ({type(err).__name__}); replace or remove it") from None
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise UserError(f"{path}: has {bad} NaN or infinite voxels; fix or remove the file")
    return NiftiVolume(Path(path), data, image)


def checked_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The 3D shape a header declares (a trailing time axis of 1 dropped), or a UserError."""
    if len(shape) == 4 and shape[3] == 1:  # a 3D volume saved with a trailing time axis of 1
        shape = shape[:3]
    if len(shape) != 3:
        raise UserError(
            f"{path}: is a {len(shape)}D volume of shape {tuple(shape)}; give one 3D volume per file "
            "(split 4D series into 3D files)"
        )
    VOLUME_VOXELS.check(path, tuple(shape))
    return shape


def check_same_grid(reference: NiftiVolume, other: NiftiVolume) -> None:
    """A and B (and a mask) of one subject must lie on the same voxel grid."""
    if reference.data.shape != other.data.shape:
        raise UserError(
            f"{other.path}: shape {other.data.shape} differs from {reference.path.name} {reference.data.shape}; "
            "A, B and mask of a subject must be resampled to the same grid"
        )
    difference = float(np.abs(reference.affine - other.affine).max())
    if difference > AFFINE_TOLERANCE:
        raise UserError(
            f"{other.path}: affine differs from {reference.path.name} by up to {difference:.3g}; "
            "A, B and mask of a subject must be registered and resampled to the same grid"
        )


@dataclass
class Subject:
    """A subject's volumes in RAS order: A, B and where the body is."""

    name: str
    a: np.ndarray
    b: np.ndarray
    foreground: np.ndarray  # bool


def read_subject(name: str, a_path: Path, b_path: Path, mask_path: Path | None, threshold: float) -> Subject:
    a, b = read_volume(a_path), read_volume(b_path)
    check_same_grid(a, b)
    if mask_path is not None:
        mask = read_volume(mask_path)
        check_same_grid(a, mask)
        foreground = mask.to_ras() > 0
    else:
        foreground = threshold_foreground(a.to_ras(), threshold)
    return Subject(name, a.to_ras(), b.to_ras(), foreground)


def threshold_foreground(a: np.ndarray, threshold: float) -> np.ndarray:
    """Voxels of A above `threshold` of its robust range, holes filled (dark bone or air inside a head
    is still body): in 3D, then slice by slice, since a volume cut through the neck leaves the 3D
    interior open to the border."""
    low, high = np.percentile(a, FOREGROUND_PERCENTILES)
    foreground = ndimage.binary_fill_holes(a > low + threshold * (high - low))
    for k in range(foreground.shape[PLANE_AXES["axial"]]):
        foreground[:, :, k] = ndimage.binary_fill_holes(foreground[:, :, k])
    return foreground


def slice_stack(volume: np.ndarray, plane: str) -> np.ndarray:
    """(n, h, w) slices of a RAS-ordered volume across `plane`."""
    return np.moveaxis(volume, PLANE_AXES[plane], 0)


def foreground_fractions(foreground: np.ndarray, plane: str) -> np.ndarray:
    return slice_stack(foreground, plane).mean(axis=(1, 2))


def to_square(stack: np.ndarray, size: int, pad_value: float) -> torch.Tensor:
    """(n, h, w) -> (n, 1, size, size) float32: centred in a square of pad_value, then resized."""
    n, h, w = stack.shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    x = torch.full((n, 1, side, side), float(pad_value))
    x[:, 0, top : top + h, left : left + w] = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))
    if side != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


def from_square(y: torch.Tensor, h: int, w: int) -> np.ndarray:
    """The inverse of to_square: (n, 1, size, size) -> (n, h, w) float32 on the original grid."""
    side = max(h, w)
    if y.shape[-1] != side:
        y = F.interpolate(y.float(), size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    top, left = (side - h) // 2, (side - w) // 2
    return y[:, 0, top : top + h, left : left + w].float().cpu().numpy()
