"""What can be checked before Ray starts, is: a mistake found after it starts costs a minute of
start-up and a page of retried-trial tracebacks. Each check ends in one line naming what to fix."""

from __future__ import annotations

import os
from typing import Any

import torch

from orchestrator.spec import SearchSpec
from trainer.config import TrainConfig
from trainer.data import find_splits, resolve_root
from trainer.data.headers import check_headers
from trainer.errors import UserError
from trainer.memory import decoded_bytes, memory_room, training_bytes

GIB = 1024**3
MEMORY_SIZED = ("size", "batch_size", "ngf", "ndf")  # the settings a trial's memory grows with


def check_search(spec: SearchSpec, address: str | None) -> list[str]:
    """Raise UserError for what cannot run; return warnings for what may not fit. (The experiment
    folder is checked where the driver claims it: orchestrator.driver.held_by_this_driver.)"""
    cfg = spec.trial_config({})
    splits = find_splits(resolve_root(cfg.data), cfg.split_seed, None)  # readable, paired, enough for a split
    check_headers(path for pairs in splits.values() for pair in pairs for path in (pair.a, pair.b, pair.mask))
    if address:
        return []  # the cluster's nodes and GPUs are known only once Ray has joined it (and may autoscale)
    check_local_resources(spec)
    pairs = [p for split in splits.values() for p in split]
    # Volumes: pairs are subjects, decoded as float32 at most; image files as 8 bits (16-bit ones take twice that).
    value_bytes = 4 if any(p.is_volume for p in pairs) else 1
    return memory_warnings(spec, largest_trial(spec), len(pairs), value_bytes)


def check_local_resources(spec: SearchSpec) -> None:
    """Resources this machine can never give (Tune would wait for them forever)."""
    gpus = torch.cuda.device_count()
    if spec.search.gpus_per_trial > 0 and gpus == 0:
        raise UserError(
            f"--gpus-per-trial {spec.search.gpus_per_trial:g}: this machine has no GPU that PyTorch can use; "
            "pass --gpus-per-trial 0, or --address of a Ray cluster with GPU nodes"
        )
    if gpus and spec.search.gpus_per_trial > gpus:
        raise UserError(f"--gpus-per-trial {spec.search.gpus_per_trial:g}: this machine has {gpus} GPU(s)")
    cpus = os.cpu_count() or 1
    if spec.search.cpus_per_trial > cpus:
        raise UserError(f"--cpus-per-trial {spec.search.cpus_per_trial:g}: this machine has {cpus} CPUs")


def largest_trial(spec: SearchSpec) -> TrainConfig:
    """The trial config with the largest value the space allows of each setting memory grows with."""
    largest: dict[str, Any] = {}
    for name in MEMORY_SIZED:
        param = spec.space.get(name)
        if param is not None:
            largest[name] = max(param.choices) if param.type == "categorical" else int(param.high)
    return spec.trial_config(largest)


def memory_warnings(spec: SearchSpec, cfg: TrainConfig, images: int, value_bytes: int = 1) -> list[str]:
    if spec.search.gpus_per_trial > 0:
        return []  # the activations live on the GPU, whose memory torch reports only per device at run time
    per_trial = training_bytes(cfg)
    shared = decoded_bytes(cfg, images, value_bytes)  # once per node, whatever the number of trials
    at_once = min(spec.search.max_concurrent, int((os.cpu_count() or 1) // spec.search.cpus_per_trial) or 1)
    room = memory_room()
    need = (
        f"each trial may need about {per_trial / GIB:.1f} GiB ({cfg.size} px, batch {cfg.batch_size}, ngf {cfg.ngf}, "
        f"ndf {cfg.ndf}), beside {shared / GIB:.1f} GiB of decoded data the trials of a node share "
        f"({images} image pairs)"
    )
    lower = "--batch-size or --size, or max_train_images"
    warnings = []
    if room.shared is not None and per_trial * at_once + shared > room.shared:
        warnings.append(
            f"{need}, and {at_once} run at once, but {room.shared / GIB:.1f} GiB is available: "
            f"lower --max-concurrent, {lower}"
        )
    # Each trial is a process of its own, and a process under `ulimit -v` (RLIMIT_AS) fails to
    # allocate beyond it however much the machine has; this driver's own mappings stand in for a
    # trial's (both import torch and Ray). The shared data counts here in full: each trial maps it.
    if room.per_process is not None and per_trial + shared > room.per_process:
        warnings.append(
            f"{need}, but the address-space limit (ulimit -v) leaves a process about "
            f"{room.per_process / GIB:.1f} GiB: raise the limit, or lower {lower}"
        )
    return warnings
