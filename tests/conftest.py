"""Shared fixtures: one built-in data cache and one local Ray instance for the whole session."""

from __future__ import annotations

import inspect
import os
import secrets
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

# Set before anything starts Ray, so that Ray's workers inherit them too; pytest-xdist's test processes
# inherit them from the first process, so they share one data cache and one Ray token.
if "PIX2PIX_CACHE" not in os.environ:
    os.environ["PIX2PIX_CACHE"] = tempfile.mkdtemp(prefix="pix2pix-cache-")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ["TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"] = "0"
# Ray turns token auth on for every new local cluster and, finding no token, writes one to
# ~/.ray/auth_token. A token of the session's own, in a temp folder, keeps the tests out of the home
# directory; every Ray the tests start (ray.init, the multi-node clusters, search subprocesses and
# their workers) inherits the variable and so shares the token.
if not os.environ.get("RAY_AUTH_TOKEN") and not os.environ.get("RAY_AUTH_TOKEN_PATH"):
    _token_file = Path(tempfile.mkdtemp(prefix="pix2pix-ray-auth-")) / "auth_token"
    _token_file.write_text(secrets.token_hex(32))  # what Ray's own generator writes
    _token_file.chmod(0o600)
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(_token_file)
# OpenMP threads that spin while they wait make torch many times slower when other processes share
# the cores (a tiny training run on a busy 2-core machine: 76 s spinning, 6 s passive). Read when
# torch loads, so it must be set before any import of torch (nothing imported above loads it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# ---------------------------------------------------------------------------------------------
# Tiers: `make test-fast` runs the fast tier (`-m fast`), the edit-test loop. The rule is here, not in
# each file, and a new test is fast unless it is slow by this rule: it starts Ray or a search (it asks
# for a fixture in SLOW_FIXTURES, or it or a helper of its module builds a search command), it asks for
# a shared fixture that trains or writes an experiment (SLOW_FIXTURES too), or it is marked `slow`
# itself (a training, a subprocess or a W&B run of seconds). A fast test
# that outgrows FAST_SECONDS is named at the end of the run, to be made smaller or marked slow.

# Fixtures that start Ray, a cluster or a search, train, run every CLI, or build an experiment's files.
SLOW_FIXTURES = frozenset(
    {"ray_session", "make_cluster", "search_with_wandb", "tiny_run", "trained", "export_dir", "help_outputs"}
    | {"experiment"}
)
SEARCH_HELPERS = frozenset({"search_command", "search_env"})  # tests/search_cli.py: a search subprocess
FAST_SECONDS = 5.0


def runs_a_search(function: Any, module: Any, depth: int = 2) -> bool:
    """Whether a test function, or a function of its module that it calls (to `depth`), builds a
    search command."""
    names = set(function.__code__.co_names)
    if names & SEARCH_HELPERS:
        return True
    helpers = [getattr(module, name) for name in names if inspect.isfunction(getattr(module, name, None))]
    return depth > 0 and any(runs_a_search(h, module, depth - 1) for h in helpers if h.__module__ == module.__name__)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        function, module = getattr(item, "function", None), getattr(item, "module", None)
        slow = (
            item.get_closest_marker("slow") is not None
            or bool(SLOW_FIXTURES & set(getattr(item, "fixturenames", ())))
            or (function is not None and runs_a_search(function, module))
        )
        item.add_marker(pytest.mark.slow if slow else pytest.mark.fast)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    over = [
        report
        for report in terminalreporter.stats.get("passed", [])
        if report.when == "call" and "fast" in report.keywords and report.duration > FAST_SECONDS
    ]
    if over:
        title = f"fast-tier tests over {FAST_SECONDS:g} s (make them smaller or mark them slow)"
        terminalreporter.write_sep("-", title)
        for report in over:
            terminalreporter.write_line(f"{report.duration:.1f} s {report.nodeid}")


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


@pytest.fixture
def s3_data(
    paired_folder: Callable[..., PairedFolder], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, PairedFolder]]:
    """10 random pairs in a bucket of a real S3-compatible server (moto) on loopback, and their URI;
    the credentials are in the environment, which searches started by the test inherit."""
    moto_server = pytest.importorskip("moto.server")
    from pyarrow import fs

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3 = fs.S3FileSystem(
        endpoint_override=f"{host}:{port}", scheme="http", region="us-east-1", allow_bucket_creation=True
    )
    s3.create_dir("pairs")
    written = paired_folder(count=10)
    for path in written.root.rglob("*.png"):
        with s3.open_output_stream(f"pairs/set/{path.relative_to(written.root)}") as out:
            out.write(path.read_bytes())
    yield f"s3://pairs/set?endpoint_override={host}:{port}&scheme=http&region=us-east-1", written
    server.stop()
