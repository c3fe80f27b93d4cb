"""Joining a Ray cluster, or starting Ray embedded on this machine: on loopback, with a token of this
search, and with a reaper that ends Ray's processes if the driver dies without shutting Ray down."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import ray

from orchestrator.compat import ray_clusters_off, reread_ray_auth_settings


def start_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Join `address`, reuse a Ray already started in this process, or start one embedded (with
    `num_cpus` logical CPUs, default: the machine's). Returns True when we started it (and so must
    shut it down)."""
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False)
        return True
    use_a_token_of_this_search()
    with ray_on_loopback():
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 1024**2)
    reap_ray_if_this_process_dies()
    return True


@contextmanager
def ray_on_loopback() -> Iterator[None]:
    """The embedded Ray is one node that nothing outside this machine needs to reach, so its servers
    listen on 127.0.0.1 only (orchestrator.compat.ray_clusters_off says how). An explicit
    `_node_ip_address="127.0.0.1"` is not enough: Ray swaps a loopback address for the machine's own
    while clusters are on. Once Ray runs, the node's address comes from the node."""
    with ray_clusters_off():
        yield


def use_a_token_of_this_search() -> None:
    """Loopback keeps other machines out, not other users of this one: the embedded Ray also
    requires a token made for this search, held in this process's environment (inherited by Ray's
    processes, readable by this user only) instead of Ray's default, ~/.ray/auth_token written with
    the umask's 0644. A user who set RAY_AUTH_MODE or RAY_AUTH_TOKEN keeps their choice."""
    if "RAY_AUTH_MODE" in os.environ or "RAY_AUTH_TOKEN" in os.environ:
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    reread_ray_auth_settings()


def reap_ray_if_this_process_dies() -> None:
    """Ray ends its processes at `ray.shutdown()`, but a driver killed outright (SIGKILL, the OOM
    killer) leaves some running (ray::DashboardAgent and ray::RuntimeEnvAgent outlived it by minutes).
    A small watcher process (orchestrator.reaper) notes this process's descendants while it lives and
    ends those left when it dies. It runs in a session of its own, so a Ctrl-C at the terminal, which
    the driver handles, does not reach it."""
    subprocess.Popen(
        [sys.executable, "-m", "orchestrator.reaper", str(os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
