"""Canaries for every private Ray and W&B name that orchestrator.compat uses: each fails, fast and
with the name, when an upgrade of the pinned libraries moves it (the slow searches would fail later
and less clearly)."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from types import SimpleNamespace

from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import PopulationBasedTraining
from ray.tune.search import Searcher, SearchGenerator

from orchestrator import compat


def test_ray_keeps_its_cluster_switch_in_a_private_constant_that_compat_switches_and_restores() -> None:
    import ray._private.ray_constants as constants

    assert isinstance(constants.ENABLE_RAY_CLUSTERS_ENV_VAR, str), "ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR moved"
    before = constants.ENABLE_RAY_CLUSTER, os.environ.get(constants.ENABLE_RAY_CLUSTERS_ENV_VAR)
    with compat.ray_clusters_off():
        assert constants.ENABLE_RAY_CLUSTER is False
        assert os.environ[constants.ENABLE_RAY_CLUSTERS_ENV_VAR] == "0"
    assert (constants.ENABLE_RAY_CLUSTER, os.environ.get(constants.ENABLE_RAY_CLUSTERS_ENV_VAR)) == before


def test_ray_core_config_rereads_its_settings() -> None:
    import ray._raylet

    assert callable(ray._raylet.Config.initialize), "ray._raylet.Config.initialize moved"


def test_a_tuner_keeps_its_run_and_tune_configs_where_compat_sets_them() -> None:
    tuner = tune.Tuner(lambda config: None)  # builds the internal object; starts nothing
    callbacks, search_alg = [tune.Callback()], SearchGenerator(Searcher())
    compat.run_restored_tuner_with(tuner, callbacks, search_alg, 7)
    internal = tuner._local_tuner
    assert internal.get_run_config().callbacks is callbacks
    assert internal._tune_config.search_alg is search_alg and internal._tune_config.num_samples == 7


def test_a_search_generator_counts_its_total_where_compat_sets_it() -> None:
    generator = SearchGenerator(Searcher())
    compat.set_total_samples(generator, 12)
    assert generator.total_samples == 12  # Tune's public reader of the private count


def test_a_trials_storage_and_error_file_are_where_compat_reads_them() -> None:
    assert "storage" in inspect.signature(Trial.__init__).parameters, "Trial(storage=...) moved"
    from ray.train._internal.storage import StorageContext

    source = inspect.getsource(StorageContext.__init__)
    assert "self.storage_filesystem" in source and hasattr(StorageContext, "trial_fs_path")
    assert compat.FAILURE_HEADER + "{}" in inspect.getsource(Trial.handle_error), "Tune's error file format moved"
    text = "Failure # 1 (occurred at x)\nRuntimeError: first\nFailure # 2 (occurred at y)\nOSError: second\n"
    assert compat.latest_failure_text(text) == "OSError: second\n"


def test_a_trials_checkpoint_to_continue_is_where_compat_reads_and_sets_it() -> None:
    from ray.train import CheckpointConfig
    from ray.train._internal.checkpoint_manager import _CheckpointManager
    from ray.train._internal.session import _TrainingResult

    manager = _CheckpointManager(CheckpointConfig(num_to_keep=2))
    manager.register_checkpoint(_TrainingResult(checkpoint=tune.Checkpoint("/a"), metrics={"epoch": 3}))
    trial = SimpleNamespace(run_metadata=SimpleNamespace(checkpoint_manager=manager))
    assert compat.checkpoint_to_continue(trial).path == "/a"
    compat.continue_from(trial, tune.Checkpoint("/b"))
    assert manager.latest_checkpoint_result.checkpoint.path == "/b"  # what Tune restores a trial from
    assert manager.latest_checkpoint_result.metrics == {"epoch": 3}
    assert "_latest_checkpoint_result" in inspect.getsource(PopulationBasedTraining._exploit), "PBT's exploit moved"


def test_wandb_offline_records_have_the_fields_the_reader_parses() -> None:
    records = compat.wandb_records()
    fields = records.Record.DESCRIPTOR.fields_by_name
    for name in ("run", "history", "summary", "config", "artifact", "exit"):
        assert name in fields, f"wandb Record.{name} moved"
    assert "value_json" in records.HistoryItem.DESCRIPTOR.fields_by_name


def test_modules_from_before_the_move_name_the_modules_they_moved_to() -> None:
    compat.accept_pickles_from_before_the_move()
    for old, new in compat.MOVED_MODULES.items():
        assert sys.modules[old] is importlib.import_module(new)


def test_the_driver_prints_raylet_messages_through_the_function_compat_replaces(tmp_path, capsys) -> None:

    import ray._private.worker as ray_worker

    from orchestrator.trials.ray_output import RAY_LOG, route_ray_logs

    listener = inspect.getsource(ray_worker.listen_error_messages)
    assert "print_to_stdstream(" in listener and '"pid": "raylet"' in listener, "Ray's raylet messages moved"
    restore = route_ray_logs(tmp_path)
    try:  # what the listener thread does with a killed worker's message
        ray_worker.print_to_stdstream({"lines": ["A worker died"], "pid": "raylet", "is_err": False}, False)
    finally:
        restore()
    assert "A worker died" not in capsys.readouterr().out
    assert "(raylet) A worker died" in (tmp_path / RAY_LOG).read_text()
