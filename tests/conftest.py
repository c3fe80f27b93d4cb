"""Shared fixtures: one built-in data cache and one local Ray instance for the whole session."""

from __future__ import annotations

import os
import tempfile

import pytest

# Set before anything starts Ray, so that Ray's workers inherit them too.
os.environ.setdefault("PIX2PIX_CACHE", tempfile.mkdtemp(prefix="pix2pix-cache-"))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ["TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"] = "0"


@pytest.fixture(scope="session")
def ray_session():
    """One embedded Ray for every in-process search (starting Ray costs seconds)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=128 * 1024**2)
    yield ray
    ray.shutdown()
