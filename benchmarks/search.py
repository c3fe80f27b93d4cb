"""`python -m benchmarks.search`: does TPE + early stopping find good models with less compute?

For each task (--data) and seed (--seeds), runs each method (--methods) once with the same trial
budget, all in one Ray session. `random` always runs: Optuna's random sampler with every trial running
all its epochs is the reference the others are measured against. Seed s is both the sampler's seed and
the trainer's (weights, shuffling, augmentation), so each seed is another draw of the whole search;
within a seed every method gets the same one.

Per (task, seed) it prints, for each method: the trial-epochs it ran, the trial-epochs it needed (in the
order the epochs finished) to first reach random search's final best val SSIM, and its best val SSIM
after as many trial-epochs as the thriftiest method ran in all (equal compute). Then, per task, the same
over the seeds: mean and range. A benchmark, run by hand; each method takes about as long as one search
with the same flags.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import optuna
from ray import tune
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search.optuna import OptunaSearch
from rich.console import Console
from rich.table import Table

from orchestrator.cluster import start_ray
from orchestrator.driver import QUIET_ENV
from orchestrator.outcomes import METRIC, SEARCH_METRIC, EndReason
from orchestrator.results import summarize_trials
from orchestrator.spec import DEFAULT_SPEC, SearchSettings, SearchSpec, load_spec
from orchestrator.trials.endings import SearchStop, TrialEndings
from orchestrator.trials.plateau import PlateauRule
from orchestrator.trials.progress import LiveTrialTable
from orchestrator.trials.trainable import TrialSettings
from orchestrator.tuner import make_scheduler, make_searcher, make_trainable, resolve_epochs
from trainer.builtin import BUILTIN_PREFIX
from trainer.cli import OneLineErrorParser, add_dataclass_flags, given_flags
from trainer.config import TrainConfig
from trainer.errors import UserError, exits_cleanly_on_user_error

console = Console(width=max(Console().width, 150))  # no wrapped rows or columns in logs

# The spec settings a benchmark run may change; --data and --seeds replace `data` and `seed` with lists.
TRAIN_FLAGS = ("size", "epochs", "batch_size", "max_train_images", "ngf", "ndf")
SEARCH_FLAGS = (
    "num_samples", "max_concurrent", "cpus_per_trial", "grace_period", "reduction_factor", "stop_patience",
    "startup_trials",
)  # fmt: skip
GOAL = 0.5  # the goal: reach random search's final best in at most half its trial-epochs


@dataclass(frozen=True)
class Method:
    """One way to spend the trial budget; what it does not name is the spec's."""

    label: str
    about: str
    tpe: bool = True  # Optuna TPE as the search configures it; False: random sampling
    early_stopping: bool = True  # ASHA and the plateau stop; False: every trial runs all its epochs
    asha_metric: str = METRIC
    grace_period: int | None = None
    reduction_factor: int | None = None
    split: int = 1  # `split` times the trials, each of 1/`split` the epochs: the same most trial-epochs
    stopped_as_pruned: bool = False  # TPE learns a stopped trial as PRUNED, not as COMPLETE

    def apply(self, spec: SearchSpec) -> SearchSpec:
        return spec.with_overrides(
            {"epochs": max(1, spec.trial_config({}).epochs // self.split)},
            {
                "num_samples": spec.search.num_samples * self.split,
                "grace_period": self.grace_period,
                "reduction_factor": self.reduction_factor,
            },
        )


REFERENCE = "random"
METHODS = {
    m.label: m
    for m in (
        Method(REFERENCE, "Optuna's random sampler, every trial runs all its epochs", tpe=False, early_stopping=False),
        Method("tpe+asha", "the search as it ships: TPE, ASHA on each epoch's val SSIM, the plateau stop"),
        Method("grace1", "tpe+asha with grace period 1", grace_period=1),
        Method("rf3", "tpe+asha with reduction factor 3", reduction_factor=3),
        Method("asha-best", "tpe+asha, ASHA ranking a trial's best val SSIM so far", asha_metric=SEARCH_METRIC),
        Method("split2", "tpe+asha over twice the trials of half the epochs", split=2),
        Method(
            "pruned",
            "tpe+asha, TPE learning trials that early stopping ended as pruned (BOHB-style: trials that ran "
            "all their epochs rank first, then the rest by how far they got)",
            stopped_as_pruned=True,
        ),
    )
}


@dataclass
class Outcome:
    label: str
    trials: list[dict[str, Any]]
    seconds: float

    @cached_property
    def epoch_curve(self) -> list[float]:
        """Best val SSIM so far after each trial-epoch, the epochs ordered by when they finished."""
        events = sorted(
            (row["timestamp"], row["epoch"], row["val_ssim"])
            for trial in self.trials
            for row in trial["history"]
            if row.get("val_ssim") is not None
        )
        best, curve = -math.inf, []
        for _, _, ssim in events:
            best = max(best, ssim)
            curve.append(best)
        return curve

    def epochs_to_reach(self, target: float) -> int | None:
        return next((i + 1 for i, best in enumerate(self.epoch_curve) if best >= target), None)

    def best_after(self, trial_epochs: int) -> float:
        return self.epoch_curve[trial_epochs - 1] if trial_epochs else math.nan

    @property
    def best(self) -> float:
        return self.best_after(len(self.epoch_curve))

    def stopped_early(self) -> int:
        return sum(t["status"] not in (EndReason.FINISHED, EndReason.FAILED) for t in self.trials)


@dataclass(frozen=True)
class Run:
    """Every method on one task with one seed."""

    task: str
    seed: int
    outcomes: dict[str, Outcome]  # by method label, the reference first

    @property
    def target(self) -> float:
        return self.outcomes[REFERENCE].best

    @property
    def equal_compute(self) -> int:
        """The fewest trial-epochs any method ran: each method's best after these is a fair comparison."""
        return min(len(o.epoch_curve) for o in self.outcomes.values())

    def ratio(self, label: str) -> float | None:
        """Trial-epochs the method needed to reach the target over those random search needed."""
        reached = self.outcomes[label].epochs_to_reach(self.target)
        return None if reached is None else reached / self.outcomes[REFERENCE].epochs_to_reach(self.target)


class StoppedAsPruned(OptunaSearch):
    """Ray's OptunaSearch tells Optuna every trial that ended without an error as COMPLETE with its
    last result, so TPE weighs a trial ASHA stopped after 2 epochs against one that ran all 8, as if
    both had run their course. BOHB fits its model on the largest budget instead; the nearest Optuna
    has is a PRUNED trial, which TPE ranks after every COMPLETE one, by its last reported epoch and
    then its value there. Ray tells PRUNED when the final result lacks the metric."""

    def __init__(self, epochs: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.epochs = epochs

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result and not error and result.get("epoch", self.epochs) < self.epochs:
            result = {k: v for k, v in result.items() if k != self.metric}
        super().on_trial_complete(trial_id, result=result, error=error)


def random_searcher(spec: SearchSpec) -> OptunaSearch:
    sampler = optuna.samplers.RandomSampler(seed=spec.search.seed)
    return OptunaSearch(
        space=spec.distributions(),
        metric=SEARCH_METRIC,
        mode="max",
        sampler=sampler,
        seed=spec.search.seed,
        points_to_evaluate=[spec.paper_point()],  # both searches start from the paper's settings
    )


def tpe_searcher(spec: SearchSpec, method: Method, epochs: int) -> OptunaSearch:
    if method.stopped_as_pruned:
        return make_searcher(spec, partial(StoppedAsPruned, epochs))
    return make_searcher(spec)


def run_method(method: Method, spec: SearchSpec, storage: Path, name: str) -> Outcome:
    spec = method.apply(spec)
    epochs = spec.trial_config({}).epochs
    settings = TrialSettings(
        fixed=spec.train,
        plateau=spec.plateau_rule() if method.early_stopping else PlateauRule(0),
        image_every=epochs,
    )
    endings = TrialEndings(0.0, storage / name, SearchStop())
    tuner = tune.Tuner(
        make_trainable(spec, settings),
        tune_config=tune.TuneConfig(
            search_alg=tpe_searcher(spec, method, epochs) if method.tpe else random_searcher(spec),
            scheduler=make_scheduler(spec, epochs, method.asha_metric) if method.early_stopping else FIFOScheduler(),
            num_samples=spec.search.num_samples,
            max_concurrent_trials=spec.search.max_concurrent,
            reuse_actors=True,  # no worker start (torch import) per trial; the trials' results do not change
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(storage),
            callbacks=[endings, LiveTrialTable(tuple(spec.space), epochs, endings)],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),  # only the metrics matter here
            verbose=0,
        ),
    )
    console.print(f"[bold]{name}[/]: {spec.search.num_samples} trials of {epochs} epochs")
    started = time.time()
    results = tuner.fit()
    trials = summarize_trials(results, epochs, TrialEndings.read(storage / name), extra_history_keys=("timestamp",))
    return Outcome(method.label, trials, time.time() - started)


def run_table(run: Run) -> Table:
    table = Table(
        title=f"{run.task}, seed {run.seed}: trial-epochs to reach random search's final best val SSIM "
        f"({run.target:.4f}); equal compute = {run.equal_compute} trial-epochs"
    )
    columns = ("method", "trials", "trial-epochs run", "stopped early", "epochs to target", "x random")
    for column in (*columns, "best at equal compute", "best val SSIM", "wall s"):
        table.add_column(column, justify="right")
    for label, outcome in run.outcomes.items():
        reached, ratio = outcome.epochs_to_reach(run.target), run.ratio(label)
        table.add_row(
            label,
            str(len(outcome.trials)),
            str(len(outcome.epoch_curve)),
            str(outcome.stopped_early()),
            "not reached" if reached is None else str(reached),
            "-" if ratio is None else f"{ratio:.2f}",
            f"{outcome.best_after(run.equal_compute):.4f}",
            f"{outcome.best:.4f}",
            f"{outcome.seconds:.0f}",
        )
    return table


def spread(values: Sequence[float], fmt: str) -> str:
    """Mean and range over seeds: with three seeds the range says more than a standard deviation."""
    if not values:
        return "-"
    mean = format(statistics.fmean(values), fmt)
    return mean if len(values) == 1 else f"{mean} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def task_table(runs: list[Run]) -> Table:
    seeds = ", ".join(str(r.seed) for r in runs)
    table = Table(
        title=f"{runs[0].task}, seeds {seeds}: mean (min-max) over seeds; equal compute = "
        f"{', '.join(str(r.equal_compute) for r in runs)} trial-epochs"
    )
    columns = ("method", "trial-epochs run", "stopped early", "epochs to random's best, per seed", "x random")
    for column in (*columns, f"<= {GOAL}x", "best at equal compute", "best val SSIM"):
        table.add_column(column, justify="right")
    for label in runs[0].outcomes:
        outcomes = [r.outcomes[label] for r in runs]
        reached = [o.epochs_to_reach(r.target) for o, r in zip(outcomes, runs, strict=True)]
        ratios = [r.ratio(label) for r in runs]
        table.add_row(
            label,
            spread([len(o.epoch_curve) for o in outcomes], ".0f"),
            spread([o.stopped_early() for o in outcomes], ".1f"),
            ", ".join("-" if n is None else str(n) for n in reached),
            spread([x for x in ratios if x is not None], ".2f"),
            f"{sum(x is not None and x <= GOAL for x in ratios)}/{len(runs)}",
            spread([o.best_after(r.equal_compute) for o, r in zip(outcomes, runs, strict=True)], ".4f"),
            spread([o.best for o in outcomes], ".4f"),
        )
    return table


def comma_list(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    return lambda text: [kind(part.strip()) for part in text.split(",") if part.strip()]


def method_label(label: str) -> str:
    if label not in METHODS:
        raise UserError(f"--methods: unknown method {label}; choose from {', '.join(METHODS)}")
    return label


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = OneLineErrorParser(
        prog="python -m benchmarks.search",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, default=DEFAULT_SPEC, help="search spec YAML (default: %(default)s)")
    p.add_argument(
        "--data",
        dest="tasks",  # not `data`: given_flags would take it for TrainConfig.data
        type=comma_list(str),
        help="comma-separated tasks, e.g. builtin:glyphs,builtin:colorize (default: the spec's)",
    )
    p.add_argument("--seeds", type=comma_list(int), default=[0], help="comma-separated seeds (default: 0)")
    p.add_argument(
        "--methods",
        type=comma_list(method_label),
        default=[REFERENCE, "tpe+asha"],
        help="comma-separated methods (random always runs; default: random,tpe+asha): "
        + "; ".join(f"{m.label}: {m.about}" for m in METHODS.values()),
    )
    add_dataclass_flags(p, TrainConfig, "trainer settings (override the spec's train section)", only=TRAIN_FLAGS)
    add_dataclass_flags(p, SearchSettings, "search settings (override the spec's search section)", only=SEARCH_FLAGS)
    return p.parse_args(argv)


def run_name(task: str, seed: int) -> str:
    return f"{Path(task.removeprefix(BUILTIN_PREFIX)).name}-seed{seed}"


@exits_cleanly_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    spec = load_spec(args.config).with_overrides(given_flags(args, TrainConfig), given_flags(args, SearchSettings))
    tasks = args.tasks or [spec.train["data"]]
    methods = [METHODS[REFERENCE], *(METHODS[label] for label in dict.fromkeys(args.methods) if label != REFERENCE)]
    os.environ.update(QUIET_ENV)
    started_ray = start_ray(None)
    runs: list[Run] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-search-") as storage:
            for task in tasks:
                for seed in args.seeds:
                    # epochs: auto resolved per task: every method of a task runs the same number
                    seeded = resolve_epochs(spec.with_overrides({"data": task, "seed": seed}, {"seed": seed}))
                    name = run_name(task, seed)
                    outcomes = {m.label: run_method(m, seeded, Path(storage), f"{name}-{m.label}") for m in methods}
                    runs.append(Run(task, seed, outcomes))
                    console.print(run_table(runs[-1]))
                console.print(task_table([r for r in runs if r.task == task]))
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
