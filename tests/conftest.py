"""Shared fixtures: one built-in data cache and one local Ray instance for the whole session."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import pytest

from trainer.config import TrainConfig

# Set before anything starts Ray, so that Ray's workers inherit them too.
os.environ.setdefault("PIX2PIX_CACHE", tempfile.mkdtemp(prefix="pix2pix-cache-"))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ["TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"] = "0"
# OpenMP threads that spin while they wait make torch many times slower when other processes share
# the cores (a tiny training run on a busy 2-core machine: 76 s spinning, 6 s passive). Read when
# torch loads, so it must be set before any import of torch (nothing imported above loads it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def ray_session():
    """One embedded Ray for every in-process search (starting Ray costs seconds)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=128 * 1024**2)
    yield ray
    ray.shutdown()


# ---------------------------------------------------------------------------------------------
# trainer fixtures: real files on disk, built once where they are expensive


@pytest.fixture(scope="session")
def glyphs_root() -> Path:
    """builtin:glyphs, built once into the session's cache (about 3 s)."""
    from trainer.builtin import builtin_root

    return builtin_root("glyphs")


@pytest.fixture
def tiny_config(glyphs_root: Path) -> Callable[..., TrainConfig]:
    """A glyph TrainConfig small enough to train in seconds on a CPU; keywords override any field."""

    def make(**overrides: Any) -> TrainConfig:
        values: dict[str, Any] = {
            "data": "builtin:glyphs",
            "size": 32,
            "batch_size": 8,
            "max_train_images": 64,
            "ngf": 8,
            "ndf": 8,
            "epochs": 1,
            "device": "cpu",
            "precision": "fp32",
            "val_batch_size": 256,
        }
        return TrainConfig(**{**values, **overrides})

    return make


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """An empty folder no file can be created in, by this user (root included)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    # root writes through file modes; the immutable attribute stops root as well
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root on a file system without chattr +i: no folder is read-only to root")
    yield folder
    subprocess.run(["chattr", "-i", str(folder)], check=True)


@dataclass
class PairedFolder:
    root: Path
    pixels: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (A, B) as written, (H, W, C)


def _random_image(rng: np.random.Generator, side: int, channels: int, dtype: type) -> np.ndarray:
    return rng.integers(0, np.iinfo(dtype).max, size=(side, side, channels), endpoint=True, dtype=dtype)


def _write_image(path: Path, image: np.ndarray) -> None:
    """PNG or TIFF by suffix; a single channel is written as a grayscale file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, image[:, :, 0] if image.shape[2] == 1 else image)


@pytest.fixture
def paired_folder(tmp_path: Path) -> Callable[..., PairedFolder]:
    """Writes a paired data set of random pixels, so a loader must hand back exactly what was written.

    layout "folders": A/<name><suffix> and B/<name><suffix>; "side_by_side": <name><suffix> holding A | B.
    """

    def make(
        count: int = 10,
        layout: str = "folders",
        suffix: str = ".png",
        channels_a: int = 3,
        channels_b: int = 3,
        dtype: type = np.uint8,
        side: int = 32,
        root: Path | None = None,
        prefix: str = "img",
    ) -> PairedFolder:
        root = root if root is not None else tmp_path / "data"
        rng = np.random.default_rng(count)
        pixels = {}
        for i in range(count):
            name = f"{prefix}{i:03d}"
            a = _random_image(rng, side, channels_a, dtype)
            b = _random_image(rng, side, channels_b, dtype)
            if layout == "folders":
                _write_image(root / "A" / f"{name}{suffix}", a)
                _write_image(root / "B" / f"{name}{suffix}", b)
            else:
                _write_image(root / f"{name}{suffix}", np.concatenate([a, b], axis=1))
            pixels[name] = (a, b)
        return PairedFolder(root, pixels)

    return make
