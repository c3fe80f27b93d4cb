"""Where the search reaches past the public APIs of the libraries it pins, and of its own past.

Every private Ray or W&B name the orchestrator uses is read or written here, and nowhere else, so
that an upgrade of the pinned versions (ray 2.60, wandb 0.31) has one module to check;
tests/orchestrator/test_compat.py has a fast canary for each, failing with the name that moved.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

# Modules that moved when the code was arranged by purpose. Tune pickles a search's callbacks and
# searcher by module path (tuner.pkl, searcher-state-*.pkl), so a search started before the move
# resumes only while the old paths import.
MOVED_MODULES = {
    "orchestrator.endings": "orchestrator.trials.endings",
    "orchestrator.progress": "orchestrator.trials.progress",
    "orchestrator.ray_output": "orchestrator.trials.ray_output",
    "orchestrator.references": "orchestrator.trials.references",
    "orchestrator.retention": "orchestrator.trials.retention",
    "orchestrator.search_limits": "orchestrator.trials.limits",
    "orchestrator.study": "orchestrator.trials.study",
    "orchestrator.trainable": "orchestrator.trials.trainable",
    "orchestrator.wandb_callback": "orchestrator.tracking.callback",
    "orchestrator.wandb_logging": "orchestrator.tracking.runs",
    "orchestrator.wandb_offline": "orchestrator.tracking.offline",
}


def accept_pickles_from_before_the_move() -> None:
    """Let the old module paths name the modules they moved to, for unpickling a resumed search."""
    for old, new in MOVED_MODULES.items():
        sys.modules.setdefault(old, importlib.import_module(new))


# ---------------------------------------------------------------------------------------------
# Ray: starting the embedded node


@contextmanager
def ray_clusters_off() -> Iterator[None]:
    """Ray binds its gRPC servers to the node's address and takes 127.0.0.1 as that address only
    where clusters are off (what Ray does on macOS and Windows). Ray has no public setting for it: the
    environment variable is read once, when `ray` is imported, into a private constant. Both are
    switched while the block runs (the processes Ray starts inherit the variable) and put back after,
    so that a `ray start` run later by a child is not refused."""
    import ray._private.ray_constants as ray_constants

    saved_env = os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR)
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            del os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR]
        else:
            os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = saved_env


def reread_ray_auth_settings() -> None:
    """Ray's core read RAY_AUTH_MODE / RAY_AUTH_TOKEN when `ray` was imported: have it read them again,
    as Ray's own token set-up does (ray._private.authentication.authentication_token_setup)."""
    import ray._raylet

    ray._raylet.Config.initialize("")


def send_raylet_messages_to(log: Callable[[str], None]) -> Callable[[], None]:
    """Ray's driver prints the error messages its raylets push to it (a worker that died, a task that
    failed) on stdout, each behind an ANSI-coloured "(raylet)", whatever `log_to_driver` says: its
    listener thread calls `ray._private.worker.print_to_stdstream`. Those messages go to `log`
    instead; every other stream is printed as before. Returns the function that undoes it."""
    import ray._private.worker as ray_worker

    original = ray_worker.print_to_stdstream

    def to_log(data: dict[str, Any], ignore_prefix: bool) -> None:
        if data.get("pid") != "raylet":
            original(data, ignore_prefix)
            return
        for line in data.get("lines", ()):
            log(f"(raylet) {line}")

    ray_worker.print_to_stdstream = to_log
    return lambda: setattr(ray_worker, "print_to_stdstream", original)


# ---------------------------------------------------------------------------------------------
# Ray Tune: a restored search, and its trials


def run_restored_tuner_with(tuner: Any, callbacks: list[Any], search_alg: Any, num_samples: int) -> None:
    """A restored Tuner runs the callbacks and search algorithm it unpickled, built from the first
    run's flags. Tune has no public setter for either: both live on the Tuner's internal object."""
    tuner._local_tuner.get_run_config().callbacks = callbacks
    tuner._local_tuner._tune_config.search_alg = search_alg
    tuner._local_tuner._tune_config.num_samples = num_samples


def set_total_samples(generator: Any, num_samples: int) -> None:
    """The number of trials a SearchGenerator makes in all, over the one it restored."""
    generator._total_samples = num_samples


def trial_storage(trial: Any) -> tuple[Any, str]:
    """A trial's folder on the experiment's storage: (pyarrow filesystem, path on it)."""
    return trial.storage.storage_filesystem, trial.storage.trial_fs_path


def checkpoint_to_continue(trial: Any) -> Any:
    """The checkpoint a paused trial continues from when it next runs (Tune's PBT points a copying
    trial at the other trial's checkpoint here: its checkpoint manager's latest result)."""
    return trial.run_metadata.checkpoint_manager._latest_checkpoint_result.checkpoint


def continue_from(trial: Any, checkpoint: Any) -> None:
    """Make `checkpoint` the one a paused trial continues from, keeping the metrics Tune recorded
    with the checkpoint it replaces (PBT's exploit sets the same field the same way)."""
    from ray.train._internal.session import _TrainingResult

    manager = trial.run_metadata.checkpoint_manager
    metrics = manager._latest_checkpoint_result.metrics
    manager._latest_checkpoint_result = _TrainingResult(checkpoint=checkpoint, metrics=metrics)


FAILURE_HEADER = "Failure # "  # how Tune's Trial.handle_error starts each failure in a trial's error file


def latest_failure_text(error_file_text: str) -> str:
    """The last failure in a trial's error file, without Tune's header line."""
    return error_file_text.rsplit(FAILURE_HEADER, 1)[-1].split("\n", 1)[-1]


# ---------------------------------------------------------------------------------------------
# W&B: reading offline runs, and logging tables


def wandb_records() -> Any:
    """The protobuf module of the records in an offline run's .wandb file (wandb 0.31 ships no reader)."""
    from wandb.proto import wandb_internal_pb2

    return wandb_internal_pb2


def log_table_as_run_file(run: Any, key: str, table: Any) -> None:
    """Log a wandb.Table as the run's own media file (`files/media/table/`, a "table-file" in its
    history), the form W&B shows in the run's workspace. A table logged unbound is also wrapped into a
    "run_table" artifact whose one file wandb 0.31 copies into its staging folder under
    ~/.local/share/wandb and records by absolute path: outside the experiment, never cleaned, and lost
    to `wandb sync` once the folder moves. Binding it first (Media.bind_to_run, undocumented) skips that."""
    table.bind_to_run(run, key, 0)
    run.log({key: table})
