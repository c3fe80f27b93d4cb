"""Running a search: Ray set-up, the Tuner (Optuna TPE + ASHA), and what happens after the trials."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import ray
import ray._private.ray_constants as ray_constants
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch
from rich.console import Console

from orchestrator.compat import accept_pickles_from_before_the_move
from orchestrator.outcomes import METRIC, SEARCH_METRIC, SearchState
from orchestrator.preflight import check_search
from orchestrator.report import publish_wandb_report, write_report
from orchestrator.report.page import REPORT
from orchestrator.results import EXPORT_DIR, SUMMARY_FILE, export_best, render_summary, summarize_trials, write_summary
from orchestrator.spec import SPEC_FILE, SearchSpec, format_duration, save_spec
from orchestrator.tracking.callback import WandbTrialLogger
from orchestrator.tracking.runs import check_online_or_fallback, log_search_run, resolve_wandb_mode, sync_command
from orchestrator.trials.endings import CTRL_C, DISK_FULL, TrialEndings, ctrl_c_stops_the_search
from orchestrator.trials.limits import SearchLimits
from orchestrator.trials.progress import LiveTrialTable
from orchestrator.trials.ray_output import RAY_LOG, result_loggers, route_ray_logs
from orchestrator.trials.references import ReferenceSearcher
from orchestrator.trials.retention import CheckpointRetention
from orchestrator.trials.study import ARTIFACT_DIR, STUDY_FILE, StudyWriter, dashboard_command
from orchestrator.trials.trainable import TrialSettings, run_trial, scratch_dir
from trainer.config import TrainConfig
from trainer.data import count_train_pairs
from trainer.errors import UserError

console = Console()
# Tune's warning about the cost of a thing that costs little next to a training epoch. Its warning
# about slow callbacks stays on: no callback of ours may hold Tune's event loop (W&B runs on a thread).
QUIET_ENV = {"TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}


def start_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Join `address`, reuse a Ray already started in this process, or start one embedded (with
    `num_cpus` logical CPUs, default: the machine's). Returns True when we started it (and so must
    shut it down)."""
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        use_a_token_of_this_search()
        with ray_on_loopback():
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 1024**2)
    return True


@contextmanager
def ray_on_loopback() -> Iterator[None]:
    """The embedded Ray is one node that nothing outside this machine needs to reach, so its servers
    listen on 127.0.0.1 only. Ray binds its gRPC servers to the node's address, and it takes
    127.0.0.1 as that address where clusters are off (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, what
    Ray does on macOS and Windows). An explicit `_node_ip_address="127.0.0.1"` is not enough: Ray
    swaps a loopback address for the machine's own while clusters are on.

    The variable is set only while Ray starts: the processes it starts inherit it, and a `ray start`
    run later by this process's children must not be refused. This process read it when it imported
    `ray`, so its copy is switched too; once Ray runs, the node's address comes from the node."""
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


def use_a_token_of_this_search() -> None:
    """Loopback keeps other machines out, not other users of this one: the embedded Ray also
    requires a token made for this search, held in this process's environment (inherited by Ray's
    processes, readable by this user only) instead of Ray's default, ~/.ray/auth_token written with
    the umask's 0644. A user who set RAY_AUTH_MODE or RAY_AUTH_TOKEN keeps their choice."""
    if "RAY_AUTH_MODE" in os.environ or "RAY_AUTH_TOKEN" in os.environ:
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    # Ray's core read its settings when `ray` was imported: have it read them again, as Ray's own
    # token set-up does (ray._private.authentication.authentication_token_setup._enable_token_auth).
    ray._raylet.Config.initialize("")


def resolve_epochs(spec: SearchSpec) -> SearchSpec:
    """`epochs: auto` as a number, once, before any trial starts: ASHA's max_t, the end reasons and
    every trial need the same one. The training split is counted the way a trial loads it (data,
    split seed, max_train_images, volumes sliced), without training."""
    if not spec.epochs_auto:
        return spec
    return spec.with_epochs_for(count_train_pairs(TrainConfig.from_dict(spec.fixed_settings(), source=spec.source)))


def make_searcher(spec: SearchSpec, searcher: Callable[..., OptunaSearch] = OptunaSearch) -> OptunaSearch:
    """`searcher`: OptunaSearch or a variant of it (benchmarks.search compares some)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # `group` is stable enough
    sampler = optuna.samplers.TPESampler(
        multivariate=True,  # model the parameters jointly: lambda_l1 and the lrs interact
        group=True,
        constant_liar=True,  # running trials count as pessimistic results: parallel trials spread out
        seed=spec.search.seed,
        n_startup_trials=spec.search.startup_trials,
    )
    return searcher(
        space=spec.distributions(),
        metric=SEARCH_METRIC,
        mode="max",
        sampler=sampler,
        seed=spec.search.seed,
        # the first trial: the paper's settings (orchestrator.trials.references)
        points_to_evaluate=[spec.paper_point()],
    )


def make_scheduler(spec: SearchSpec, epochs: int, metric: str = METRIC) -> ASHAScheduler:
    """`metric`: what ASHA ranks trials on at each rung (benchmarks.search compares others)."""
    return ASHAScheduler(
        time_attr="epoch",
        metric=metric,
        mode="max",
        max_t=epochs,
        grace_period=min(spec.search.grace_period, epochs),
        reduction_factor=spec.search.reduction_factor,
    )


def make_trainable(spec: SearchSpec, settings: TrialSettings) -> Any:
    resources = {"cpu": spec.search.cpus_per_trial, "gpu": spec.search.gpus_per_trial}
    return tune.with_resources(tune.with_parameters(run_trial, settings=settings), resources)


def checkpoint_config() -> tune.CheckpointConfig:
    """The latest checkpoint holds the full state to continue from and the best epoch's generator;
    orchestrator.trials.retention trims a trial's checkpoints to that one, without the full state, once it ended.

    Two are kept while a trial runs, not one: Tune snapshots the whole experiment (every trial's
    state and the pickled searcher) whenever a trial has written `num_to_keep` checkpoints since the
    last snapshot. At 1 that is a snapshot per reported epoch, each costing more as trials accumulate:
    with 64 trials at once and 500 in all it took 55% of the driver's event loop (benchmarks.driver).
    At 2 it is about one snapshot per epoch's time, whatever the number of trials running.
    """
    return tune.CheckpointConfig(num_to_keep=2)


def search_algorithm(spec: SearchSpec) -> SearchLimits:
    """TPE with the reference trials first, within the spec's number of trials and trials at once."""
    searcher = ReferenceSearcher(make_searcher(spec), spec.runs_l1_reference)
    return SearchLimits(searcher, spec.search.num_samples, spec.search.max_concurrent)


def build_tuner(
    spec: SearchSpec, name: str, storage_path: str, trainable: Any, epochs: int, callbacks: list[tune.Callback]
) -> tune.Tuner:
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=search_algorithm(spec),
            scheduler=make_scheduler(spec, epochs),
            num_samples=spec.search.num_samples,  # SearchLimits enforces it, and max_concurrent
            time_budget_s=spec.search.time_budget or None,  # Tune's TimeoutStopper; it counts across resumes
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=[*callbacks, *result_loggers()],
            checkpoint_config=checkpoint_config(),
            failure_config=tune.FailureConfig(max_failures=spec.search.max_failures),
            verbose=0,
        ),
    )


def search_callbacks(
    spec: SearchSpec, name: str, out_dir: Path, wandb_mode: str, wandb_project: str, epochs: int
) -> list[tune.Callback]:
    """The driver's callbacks, in order (benchmarks.driver times these same ones).
    TrialEndings first: the others read its record of how each trial ended."""
    endings = TrialEndings(spec.search.time_budget, out_dir)
    return [
        endings,
        CheckpointRetention(endings, spec),
        LiveTrialTable(tuple(spec.space), epochs, endings),
        WandbTrialLogger(wandb_mode, wandb_project, name, str(out_dir), spec.train, epochs, endings),
        StudyWriter(str(out_dir), name, spec.distributions(), epochs, endings),
    ]


def use_this_runs_settings(tuner: tune.Tuner, spec: SearchSpec, callbacks: list[tune.Callback]) -> None:
    """A restored Tuner runs the callbacks and the search algorithm it unpickled, built from the first
    run's flags (its W&B mode, its number of trials). Give it this run's, built the same way: Tune
    then restores their saved state into them (it checks that the callbacks' number and types match),
    and SearchLimits puts this run's num_samples and max_concurrent back over the saved ones. Tune has
    no public setter for either (Ray is pinned to 2.60: both configs live on the Tuner's internal object)."""
    tuner._local_tuner.get_run_config().callbacks = [*callbacks, *result_loggers()]
    tuner._local_tuner._tune_config.search_alg = search_algorithm(spec)
    tuner._local_tuner._tune_config.num_samples = spec.search.num_samples


def fetch_saved_spec(out_dir: Path, experiment_path: str) -> Path:
    """The spec.yaml of the search to resume: in its folder, or fetched from remote storage into it."""
    local = out_dir / SPEC_FILE
    if local.is_file() or "://" not in experiment_path:
        if not local.is_file():
            raise UserError(f"{local}: not found; is {out_dir} a search folder? check --storage-path and --name")
        return local
    import pyarrow.fs

    remote, path = pyarrow.fs.FileSystem.from_uri(f"{experiment_path}/{SPEC_FILE}")
    if remote.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
        raise UserError(f"{experiment_path}/{SPEC_FILE}: not found; check --storage-path and --name")
    out_dir.mkdir(parents=True, exist_ok=True)
    pyarrow.fs.copy_files(
        path, str(local), source_filesystem=remote, destination_filesystem=pyarrow.fs.LocalFileSystem()
    )
    return local


def experiment_exists(experiment_path: str) -> bool:
    """A local folder, or a folder on remote storage (s3://, gs://, file://) that pyarrow can see."""
    if "://" not in experiment_path:
        return Path(experiment_path).exists()
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(experiment_path)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


@dataclass(frozen=True)
class RunOptions:
    """What one run of the driver is told besides the spec; unlike the spec, these may differ
    between the runs of one search (a --resume may log to W&B differently or join a cluster)."""

    address: str | None  # a Ray cluster to join; None starts Ray embedded
    resume: bool
    wandb: str | None  # off / offline / online; None: online when an API key is configured
    wandb_project: str


def run_search(spec: SearchSpec, name: str, storage_path: str, out_dir: Path, run: RunOptions) -> dict[str, Any]:
    os.environ.update(QUIET_ENV)
    experiment_path = f"{storage_path.rstrip('/')}/{name}"
    if run.resume and not tune.Tuner.can_restore(experiment_path):
        raise UserError(f"{experiment_path}: no search to resume there; check --storage-path and --name")
    if not run.resume and experiment_exists(experiment_path):
        raise UserError(f"{experiment_path}: already exists; pass --resume to continue it or choose another --name")
    resolved = resolve_epochs(spec)  # epochs: auto as a number; the spec saved for --resume keeps `auto`
    warnings = check_search(resolved, run.address, out_dir)  # before anything is written or Ray starts
    out_dir.mkdir(parents=True, exist_ok=True)
    if not run.resume:
        save_spec(spec, out_dir)
        if "://" in experiment_path:  # so that a driver on another machine can resume it
            upload_outputs(out_dir, experiment_path, (SPEC_FILE,))
    spec = resolved

    wandb_mode = check_online_or_fallback(resolve_wandb_mode(run.wandb))
    wandb_dir = out_dir  # wandb writes its runs into <dir>/wandb/
    cfg = spec.trial_config({})
    settings = TrialSettings(
        fixed=spec.train, stop_patience=spec.search.stop_patience, image_every=spec.search.image_every
    )
    callbacks = search_callbacks(spec, name, out_dir, wandb_mode, run.wandb_project, cfg.epochs)
    budget = f", time budget {format_duration(spec.search.time_budget)}" if spec.search.time_budget else ""
    console.print(
        f"[bold]search[/] {name}: {spec.search.num_samples} trials of {spec.describe_epochs()} on {cfg.data} "
        f"({cfg.size} px), {spec.search.max_concurrent} at a time{budget}; space: {', '.join(spec.space)}; "
        f"W&B {wandb_mode}\n  results: {experiment_path}\n  Ray's own log: {out_dir / RAY_LOG}"
    )

    for warning in warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    restore_ray_logs = route_ray_logs(out_dir)
    started_ray = start_ray(run.address)
    started = time.time()
    try:
        trainable = make_trainable(spec, settings)
        if run.resume:
            console.print(f"resuming {experiment_path}")
            accept_pickles_from_before_the_move()
            tuner = tune.Tuner.restore(experiment_path, trainable, resume_unfinished=True, resume_errored=True)
            use_this_runs_settings(tuner, spec, callbacks)
        else:
            tuner = build_tuner(spec, name, storage_path, trainable, cfg.epochs, callbacks)
        with ctrl_c_stops_the_search():
            results = tuner.fit()
        state = SearchState.INTERRUPTED if CTRL_C.is_set() or DISK_FULL else SearchState.FINISHED
        trials = summarize_trials(results, cfg.epochs, TrialEndings.read(out_dir), spec.search.time_budget)
        # An interrupted search exports nothing: its best so far is not the search's result.
        best = (
            export_best(results, trials, spec, out_dir / EXPORT_DIR, experiment_path)
            if state == SearchState.FINISHED
            else None
        )
    finally:
        if started_ray:
            ray.shutdown()
        restore_ray_logs()
    for trial in trials:  # scratch folders of attempts killed before their own clean-up (on this machine)
        shutil.rmtree(scratch_dir(trial["trial_id"]), ignore_errors=True)

    # Paths in the experiment's own files are relative to its folder, which may move.
    wandb_info = (
        None
        if wandb_mode == "off"
        else {"mode": wandb_mode, "project": run.wandb_project, "dir": ".", "sync_command": sync_command(".")}
    )
    summary = write_summary(out_dir, name, spec, state, trials, best, time.time() - started, wandb_info)
    if state == SearchState.INTERRUPTED:
        console.print(render_summary(summary))
        if DISK_FULL:  # the driver's one line for a full disk, with the resume command (orchestrator.search)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return summary
    log_search_run(
        wandb_mode,
        run.wandb_project,
        name,
        wandb_dir,
        trials,
        out_dir / EXPORT_DIR if best else None,
        best.get("card") if best else None,
        config={"space": summary["space"], "search": summary["search"], "train": summary["fixed"], "data": cfg.data},
    )
    report = write_report(out_dir)
    report_url = publish_wandb_report(summary, out_dir) if wandb_mode == "online" else None
    if "://" in experiment_path:
        upload_outputs(out_dir, experiment_path)
    print_summary(summary, out_dir, report, report_url)
    return summary


UPLOADED = (EXPORT_DIR, SUMMARY_FILE, REPORT, SPEC_FILE, STUDY_FILE, ARTIFACT_DIR)


def upload_outputs(out_dir: Path, experiment_uri: str, names: tuple[str, ...] = UPLOADED) -> None:
    """Put the export and the reports next to Tune's results on remote storage (s3://, gs://, ...)."""
    import pyarrow.fs

    remote, path = pyarrow.fs.FileSystem.from_uri(experiment_uri)
    remote.create_dir(path, recursive=True)  # before Tune makes it, for the spec uploaded at the start
    for name in names:
        if (out_dir / name).is_dir():
            remote.create_dir(f"{path}/{name}", recursive=True)
        if (out_dir / name).exists():
            pyarrow.fs.copy_files(
                str(out_dir / name),
                f"{path}/{name}",
                source_filesystem=pyarrow.fs.LocalFileSystem(),
                destination_filesystem=remote,
            )
    console.print(f"uploaded {', '.join(names)} to {experiment_uri}")


def print_summary(summary: dict[str, Any], out_dir: Path, report: Path, report_url: str | None) -> None:
    console.print(render_summary(summary))
    console.print(f"report: {report}")
    if report_url:
        console.print(f"W&B report: {report_url}")
    # markup off: "[dashboard]" is text, not a rich style; soft_wrap: commands stay on one copyable line
    console.print(
        f"Optuna study: {dashboard_command(out_dir)}  (pip install -e '.[dashboard]' installs it)",
        markup=False,
        soft_wrap=True,
    )
    wandb = summary["wandb"]
    if wandb and wandb["mode"] == "offline":
        console.print(f"W&B runs are offline; upload them with: {sync_command(out_dir)}", soft_wrap=True)
