"""The Tuner of a search: Optuna's TPE behind the reference trials, ASHA, the trainable with its
resources, the driver's callbacks, and a restored Tuner given this run's settings."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from orchestrator.compat import accept_pickles_from_before_the_move, run_restored_tuner_with
from orchestrator.outcomes import METRIC, MODE, SEARCH_METRIC
from orchestrator.spec import SearchSpec
from orchestrator.tracking.callback import WandbTrialLogger
from orchestrator.trials.endings import SearchStop, TrialEndings
from orchestrator.trials.limits import SearchLimits
from orchestrator.trials.population import PopulationApart
from orchestrator.trials.progress import LiveTrialTable
from orchestrator.trials.ray_output import result_loggers
from orchestrator.trials.references import ReferenceSearcher
from orchestrator.trials.retention import CheckpointRetention
from orchestrator.trials.rungs import ReferencesApart
from orchestrator.trials.study import StudyWriter
from orchestrator.trials.trainable import TrialSettings, run_trial
from trainer.config import TrainConfig
from trainer.data import count_train_pairs


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
        mode=MODE,
        sampler=sampler,
        seed=spec.search.seed,
        # the first trial: the paper's settings (orchestrator.trials.references)
        points_to_evaluate=[spec.paper_point()],
    )


def make_scheduler(spec: SearchSpec, epochs: int, metric: str = METRIC) -> TrialScheduler:
    """ASHA, or PBT with search.pbt. `metric`: what ASHA ranks trials on at each rung (benchmarks.search
    compares others)."""
    if spec.search.pbt:
        return PopulationApart(spec, epochs)
    asha = {
        "time_attr": "epoch",
        "metric": metric,
        "mode": MODE,
        "max_t": epochs,
        "grace_period": spec.search.grace_epochs(epochs, spec.stop_scale),
        "reduction_factor": spec.search.reduction_factor,
    }
    return ReferencesApart(spec, **asha) if spec.search.references_apart else ASHAScheduler(**asha)


def make_trainable(spec: SearchSpec, settings: TrialSettings) -> Any:
    resources = {"cpu": spec.search.cpus_per_trial, "gpu": spec.search.gpus_per_trial}
    return tune.with_resources(tune.with_parameters(run_trial, settings=settings), resources)


def checkpoint_config(spec: SearchSpec) -> tune.CheckpointConfig:
    """The latest checkpoint holds the full state to continue from and the best epoch's generator;
    orchestrator.trials.retention trims a trial's checkpoints to that one, without the full state, once it ended.

    Two are kept while a trial runs, not one: Tune snapshots the whole experiment (every trial's
    state and the pickled searcher) whenever a trial has written `num_to_keep` checkpoints since the
    last snapshot. At 1 that is a snapshot per reported epoch, each costing more as trials accumulate:
    with 64 trials at once and 500 in all it took 55% of the driver's event loop (benchmarks.driver).
    At 2 it is about one snapshot per epoch's time, whatever the number of trials running.

    With search.pbt, a trial copies the checkpoint another trial had at its last look at the population,
    up to pbt_epochs epochs before its latest: that many more are kept (3 at least, below which Ray's PBT
    warns that a copy may find its checkpoint gone).
    """
    return tune.CheckpointConfig(num_to_keep=max(3, spec.pbt_epochs + 1) if spec.search.pbt else 2)


def search_algorithm(spec: SearchSpec) -> SearchLimits:
    """TPE with the reference trials first, within the spec's number of trials and trials at once.
    With search.pbt the whole population is live at once, taking turns on the resources."""
    warm_paper = spec.paper_point() if spec.search.warm_start else None
    searcher = ReferenceSearcher(make_searcher(spec), spec.runs_l1_reference, warm_paper, learns=not spec.search.pbt)
    live = spec.search.num_samples if spec.search.pbt else spec.search.max_concurrent
    return SearchLimits(searcher, spec.search.num_samples, live)


def build_tuner(
    spec: SearchSpec, name: str, storage_path: str, trainable: Any, epochs: int, callbacks: list[tune.Callback]
) -> tune.Tuner:
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=search_algorithm(spec),
            scheduler=make_scheduler(spec, epochs),
            num_samples=spec.search.num_samples,  # SearchLimits enforces it, and max_concurrent
            # A later trial runs in an ended trial's worker process: no new process importing torch
            # (seconds per trial on a CPU, a CUDA context on a GPU). Safe with a function trainable:
            # Tune reports synchronously, so a trial ASHA stopped is parked in tune.report until
            # the next trial's reset ends it there; its `finally` cleans its scratch folder.
            reuse_actors=True,
            time_budget_s=spec.search.time_budget or None,  # Tune's TimeoutStopper; it counts across resumes
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=[*callbacks, *result_loggers()],
            checkpoint_config=checkpoint_config(spec),
            failure_config=tune.FailureConfig(max_failures=spec.search.max_failures),
            verbose=0,
        ),
    )


def search_callbacks(
    spec: SearchSpec, name: str, out_dir: Path, wandb_mode: str, wandb_project: str, epochs: int, stop: SearchStop
) -> list[tune.Callback]:
    """The driver's callbacks, in order (benchmarks.driver times these same ones).
    TrialEndings first: the others read its record of how each trial ended."""
    endings = TrialEndings(spec.search.time_budget, out_dir, stop)
    return [
        endings,
        CheckpointRetention(endings, spec),
        LiveTrialTable(tuple(spec.space), epochs, endings),
        WandbTrialLogger(
            wandb_mode,
            wandb_project,
            name,
            str(out_dir),
            spec.train,
            epochs,
            endings,
            values=tuple(spec.space) if spec.search.pbt else (),
        ),  # fmt: skip
        StudyWriter(str(out_dir), name, spec.distributions(), epochs, endings, spec.search.warm_start),
    ]


def restore_tuner(experiment_path: str, spec: SearchSpec, trainable: Any, callbacks: list[tune.Callback]) -> tune.Tuner:
    """The saved search, continued with this run's callbacks and search algorithm, built the same way
    as a new search's: Tune then restores their saved state into them (it checks that the callbacks'
    number and types match), and SearchLimits puts this run's num_samples and max_concurrent back
    over the saved ones."""
    accept_pickles_from_before_the_move()
    tuner = tune.Tuner.restore(experiment_path, trainable, resume_unfinished=True, resume_errored=True)
    run_restored_tuner_with(tuner, [*callbacks, *result_loggers()], search_algorithm(spec), spec.search.num_samples)
    return tuner
