"""Built-in paired datasets made from files that installed packages ship (no downloads).

- `builtin:glyphs`: each character rendered in DejaVu Sans (A) and DejaVu Serif (B), both fonts
  shipped by matplotlib; 1 channel; split by character.
- `builtin:colorize`: grayscale -> colour tiles of scikit-image's photos (1 -> 3 channels).
- `builtin:restore`: blurred, JPEG-compressed -> clean tiles of the same photos (3 -> 3 channels).
Photo tasks are split by source photo, never by tile, so no photo leaks between splits.
- `builtin:phantom-mr2ct`: 20 synthetic head phantoms (NIfTI, float32), MR-like A -> CT-like B in
  HU, with a body mask; no split folders, so the loader splits them by subject (70/15/15, seeded).

Each set is built once into the cache folder ($PIX2PIX_CACHE, default ~/.cache/pix2pix-tune) in the
A/ B/ layout with train/ val/ test/ sub-folders, and then loads like any user folder. Concurrent
builders (parallel trials) each write a private temp folder and the first rename wins.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import unicodedata
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from trainer.config import MIN_SIZE
from trainer.errors import UserError
from trainer.files import temp_dir_beside

BUILTIN_PREFIX = "builtin:"
VERSION = "v3"  # bump when a builder changes, so stale caches are not reused
GLYPH_SIZE = 128  # rendered once at this size; the loader resizes to the configured size
TILE = 256
TILE_STRIDE = 128
PHOTO_MAX_SHORT_SIDE = 512  # so one big photo (retina is 1411 px) does not dominate its split

# Fixed photo -> split assignment (by photo, never by tile), about 70/15/15 of the tiles.
PHOTO_SPLITS = {
    "train": ["astronaut", "retina", "hubble_deep_field", "rocket", "stereo_motorcycle", "colorwheel"],
    "val": ["immunohistochemistry", "chelsea"],
    "test": ["coffee", "logo"],
}


def cache_dir() -> Path:
    return Path(os.environ.get("PIX2PIX_CACHE", Path.home() / ".cache" / "pix2pix-tune"))


def builtin_root(name: str) -> Path:
    """The folder of a built-in set, built on first use."""
    if name not in BUILDERS:
        known = ", ".join(BUILTIN_PREFIX + n for n in BUILDERS)
        raise UserError(f"{BUILTIN_PREFIX}{name}: unknown built-in dataset; choose one of {known}")
    root = cache_dir() / f"{name}-{VERSION}"
    if not root.is_dir():
        tmp = temp_dir_beside(root)
        try:
            BUILDERS[name](tmp)
            os.rename(tmp, root)
        except OSError:
            if not root.is_dir():  # a real failure, not a lost race with another builder
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _save(folder: Path, split: str, name: str, a: np.ndarray, b: np.ndarray) -> None:
    for side, image in (("A", a), ("B", b)):
        out = folder / split / side
        out.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(out / f"{name}.png")


# --- glyphs --------------------------------------------------------------------------------


def _font_paths() -> tuple[Path, Path]:
    import matplotlib

    fonts = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return fonts / "DejaVuSans.ttf", fonts / "DejaVuSerif.ttf"


def shared_characters() -> list[str]:
    """Printable characters that both fonts draw (letters, digits, punctuation, symbols)."""
    from fontTools.ttLib import TTFont

    sans, serif = (set(TTFont(p).getBestCmap()) for p in _font_paths())
    return [
        chr(c)
        for c in sorted(sans & serif)
        if unicodedata.category(chr(c))[0] in "LNPS"  # skip spaces, controls, combining marks
    ]


def _render(char: str, font: ImageFont.FreeTypeFont) -> np.ndarray:
    image = Image.new("L", (GLYPH_SIZE, GLYPH_SIZE), 255)
    # Same anchor for both fonts: the translation is a change of style, not of position.
    ImageDraw.Draw(image).text((GLYPH_SIZE / 2, GLYPH_SIZE / 2), char, font=font, fill=0, anchor="mm")
    return np.asarray(image)


def _shrink(glyph: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(glyph).resize((MIN_SIZE, MIN_SIZE), Image.BILINEAR))


def build_glyphs(folder: Path) -> None:
    sans, serif = (ImageFont.truetype(str(p), int(GLYPH_SIZE * 0.6)) for p in _font_paths())
    chars = shared_characters()
    random.Random(0).shuffle(chars)
    pairs = []
    for char in chars:
        a, b = _render(char, sans), _render(char, serif)
        # Both fonts must draw something, and differently even at the smallest size: identical pairs
        # teach nothing and give the identity baseline an infinite PSNR.
        if a.min() < 128 and b.min() < 128 and not np.array_equal(_shrink(a), _shrink(b)):
            pairs.append((f"u{ord(char):04x}", a, b))
    n_train, n_val = round(len(pairs) * 0.70), round(len(pairs) * 0.15)
    for i, (name, a, b) in enumerate(pairs):
        split = "train" if i < n_train else "val" if i < n_train + n_val else "test"
        _save(folder, split, name, a, b)


# --- photo tiles ---------------------------------------------------------------------------


def _photo(name: str) -> np.ndarray:
    import skimage.data

    image = getattr(skimage.data, name)()
    if isinstance(image, tuple):  # stereo_motorcycle returns (left, right, disparity)
        image = image[0]
    return image[:, :, :3]


def _tiles(image: np.ndarray) -> list[np.ndarray]:
    h, w = image.shape[:2]
    short = min(h, w)
    target = min(max(short, TILE), PHOTO_MAX_SHORT_SIDE)
    if target != short:
        scale = target / short
        image = np.asarray(Image.fromarray(image).resize((round(w * scale), round(h * scale)), Image.BICUBIC))
        h, w = image.shape[:2]
    tops = range(0, h - TILE + 1, TILE_STRIDE)
    lefts = range(0, w - TILE + 1, TILE_STRIDE)
    return [image[t : t + TILE, left : left + TILE] for t in tops for left in lefts]


def _to_gray(tile: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(tile).convert("L"))


def _degrade(tile: np.ndarray) -> np.ndarray:
    """Blur then JPEG at low quality: a restoration task with a strong identity baseline to beat."""
    buffer = io.BytesIO()
    Image.fromarray(tile).filter(ImageFilter.GaussianBlur(1.5)).save(buffer, format="JPEG", quality=20)
    return np.asarray(Image.open(buffer).convert("RGB"))


def _photo_builder(make_input: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    def build(folder: Path) -> None:
        for split, photos in PHOTO_SPLITS.items():
            for photo in photos:
                for i, tile in enumerate(_tiles(_photo(photo))):
                    _save(folder, split, f"{photo}-{i:03d}", make_input(tile), tile)

    return build


# --- head phantoms: MR -> CT -------------------------------------------------------------

PHANTOM_SUBJECTS = 20
PHANTOM_SHAPE = (48, 56, 44)  # voxels; 4 mm spacing covers a head in a small, fast volume
PHANTOM_SPACING = (4.0, 4.0, 4.5)  # mm
CT_AIR = -1000.0


def _ellipsoid(points: np.ndarray, centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Which world points (..., 3) in mm lie inside an axis-aligned ellipsoid of the head frame."""
    return (((points - centre) / radii) ** 2).sum(-1) <= 1.0


def _rotation(rng: np.random.Generator, degrees: float) -> np.ndarray:
    """A random rotation of up to `degrees` about each axis: the head's pose."""
    rx, ry, rz = np.radians(rng.uniform(-degrees, degrees, 3))
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    return (
        np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    )


def phantom_affine(index: int) -> np.ndarray:
    """Voxel -> world (RAS mm). Odd subjects are stored left-right flipped (LAS), as scanners and
    converters do, so readers must follow the affine rather than the voxel order."""
    affine = np.diag([*PHANTOM_SPACING, 1.0])
    affine[:3, 3] = -np.array(PHANTOM_SHAPE) * PHANTOM_SPACING / 2 + np.array([3.0, -5.0, 2.0]) * (index % 3)
    if index % 2:
        affine[0, 0] = -affine[0, 0]
        affine[0, 3] = -affine[0, 3]
    return affine


def phantom_subject(index: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(MR-like A, CT-like B in HU, body mask, affine) of one head phantom: ellipsoid tissues with
    their own sizes, values and pose; A has a smooth bias field and noise, B a little noise."""
    rng = np.random.default_rng([seed, index])
    affine = phantom_affine(index)
    ijk = np.stack(np.meshgrid(*(np.arange(n) for n in PHANTOM_SHAPE), indexing="ij"), -1).astype(np.float64)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    # head frame: centred on the head, rotated by its pose
    points = (world - rng.uniform(-6, 6, 3) - np.array([0.0, 0.0, -12.0])) @ _rotation(rng, 12.0)
    head = np.array([rng.uniform(68, 78), rng.uniform(84, 96), rng.uniform(88, 100)])
    skull_outer, skull_inner = head * rng.uniform(0.90, 0.93), head * rng.uniform(0.83, 0.86)
    ventricle = np.array([rng.uniform(6, 10), rng.uniform(18, 26), rng.uniform(10, 15)])
    spread = rng.uniform(8, 12)
    eye_r = rng.uniform(11, 13)
    eye_y, eye_z, eye_x = head[1] * 0.80, -head[2] * 0.20, head[0] * 0.42
    sinus = np.array([rng.uniform(10, 16), rng.uniform(8, 12), rng.uniform(8, 12)])

    body = _ellipsoid(points, np.zeros(3), head)
    skull = body & _ellipsoid(points, np.zeros(3), skull_outer) & ~_ellipsoid(points, np.zeros(3), skull_inner)
    brain = _ellipsoid(points, np.zeros(3), skull_inner)
    ventricles = _ellipsoid(points, np.array([spread, 5, 8]), ventricle) | _ellipsoid(
        points, np.array([-spread, 5, 8]), ventricle
    )
    eyes = _ellipsoid(points, np.array([eye_x, eye_y, eye_z]), np.full(3, eye_r)) | _ellipsoid(
        points, np.array([-eye_x, eye_y, eye_z]), np.full(3, eye_r)
    )
    sinuses = _ellipsoid(points, np.array([0, head[1] * 0.6, -head[2] * 0.35]), sinus)

    tissues = [  # (where, HU, MR value), later entries paint over earlier ones
        (body, rng.uniform(20, 60), rng.uniform(650, 750)),  # scalp and soft tissue
        (skull, rng.uniform(700, 1500), rng.uniform(60, 120)),  # cortical bone: dark in MR
        (brain & ~skull, rng.uniform(30, 45), rng.uniform(450, 520)),
        (ventricles & brain, rng.uniform(0, 15), rng.uniform(150, 220)),  # CSF
        (eyes & body, rng.uniform(5, 20), rng.uniform(180, 260)),
        (sinuses & body, CT_AIR, rng.uniform(0, 20)),  # air inside the head: dark in MR too
    ]
    ct = np.full(PHANTOM_SHAPE, CT_AIR)
    mr = np.zeros(PHANTOM_SHAPE)
    for where, hu, mr_value in tissues:
        ct[where], mr[where] = hu, mr_value
    # bone is denser towards the outer table: a gradient MR cannot see, so the model must infer it
    ct[skull] += 200 * (((points[skull] / skull_inner) ** 2).sum(-1) - 1.0) / 0.4
    scaled = (world - world.mean(axis=(0, 1, 2))) / 100.0
    bias = np.exp((scaled * rng.uniform(-0.25, 0.25, 3)).sum(-1) + rng.uniform(-0.1, 0.1) * (scaled**2).sum(-1))
    mr = np.abs(mr * bias + rng.normal(0, 15, PHANTOM_SHAPE))  # magnitude images: Rician-like, never negative
    ct = ct + rng.normal(0, 8, PHANTOM_SHAPE)
    return mr.astype(np.float32), ct.astype(np.float32), body.astype(np.uint8), affine


def build_phantoms(folder: Path) -> None:
    import nibabel as nib

    for index in range(PHANTOM_SUBJECTS):
        mr, ct, mask, affine = phantom_subject(index)
        for side, volume in (("A", mr), ("B", ct), ("mask", mask)):
            (folder / side).mkdir(parents=True, exist_ok=True)
            image = nib.Nifti1Image(volume, affine)
            image.header.set_xyzt_units("mm")
            nib.save(image, folder / side / f"head{index:02d}.nii.gz")


BUILDERS: dict[str, Callable[[Path], None]] = {
    "glyphs": build_glyphs,
    "colorize": _photo_builder(_to_gray),
    "restore": _photo_builder(_degrade),
    "phantom-mr2ct": build_phantoms,
}
