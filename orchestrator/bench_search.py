"""`python -m orchestrator.bench_search`: does TPE + early stopping find good models with less compute?

Runs the same budget of trials twice on the spec's data, in one Ray session, with the same seeds:

    tpe+asha   the product's search: Optuna TPE (multivariate, constant liar), ASHA and the plateau stop
    random     Optuna's random sampler, every trial runs all its epochs (no scheduler, no plateau stop)

and prints, for each, the trial-epochs it spent and the trial-epochs it needed (in the order the
epochs finished) to first reach the random search's final best val SSIM. A benchmark, run by hand:
it takes about twice as long as one search with the same flags.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from ray import tune
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search.optuna import OptunaSearch
from rich.console import Console
from rich.table import Table

from orchestrator.endings import TrialEndings
from orchestrator.outcomes import SEARCH_METRIC, EndReason
from orchestrator.progress import LiveTrialTable
from orchestrator.results import summarize_trials
from orchestrator.runner import (
    QUIET_ENV,
    make_scheduler,
    make_searcher,
    make_trainable,
    resolve_epochs,
    start_ray,
)
from orchestrator.spec import DEFAULT_SPEC, SearchSpec, load_spec
from orchestrator.trainable import TrialSettings
from trainer.errors import exits_cleanly_on_user_error

console = Console(width=max(Console().width, 100))  # no wrapped rows in logs


@dataclass
class Outcome:
    label: str
    trials: list[dict[str, Any]]
    seconds: float

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
        return next((i + 1 for i, best in enumerate(self.epoch_curve()) if best >= target), None)

    @property
    def best(self) -> float:
        curve = self.epoch_curve()
        return curve[-1] if curve else math.nan

    def stopped_early(self) -> int:
        return sum(t["status"] not in (EndReason.FINISHED, EndReason.FAILED) for t in self.trials)


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


def run_variant(label: str, spec: SearchSpec, storage: Path, early_stopping: bool) -> Outcome:
    epochs = spec.trial_config({}).epochs
    settings = TrialSettings(
        fixed=spec.train,
        stop_patience=spec.search.stop_patience if early_stopping else 0,
        image_every=epochs,
    )
    endings = TrialEndings(0.0, storage / label)
    tuner = tune.Tuner(
        make_trainable(spec, settings),
        tune_config=tune.TuneConfig(
            search_alg=make_searcher(spec) if early_stopping else random_searcher(spec),
            scheduler=make_scheduler(spec, epochs) if early_stopping else FIFOScheduler(),
            num_samples=spec.search.num_samples,
            max_concurrent_trials=spec.search.max_concurrent,
        ),
        run_config=tune.RunConfig(
            name=label,
            storage_path=str(storage),
            callbacks=[endings, LiveTrialTable(tuple(spec.space), epochs, endings)],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),  # only the metrics matter here
            verbose=0,
        ),
    )
    console.print(f"[bold]{label}[/]: {spec.search.num_samples} trials of {epochs} epochs")
    started = time.time()
    results = tuner.fit()
    trials = summarize_trials(results, epochs, TrialEndings.read(storage / label), extra_history_keys=("timestamp",))
    return Outcome(label, trials, time.time() - started)


def outcome_table(outcomes: list[Outcome], target: float) -> Table:
    table = Table(title=f"trial-epochs to reach the random search's final best val SSIM ({target:.4f})")
    for column in (
        "search",
        "trials",
        "trial-epochs run",
        "stopped early",
        "best val SSIM",
        "epochs to target",
        "wall s",
    ):
        table.add_column(column, justify="right")
    for outcome in outcomes:
        reached = outcome.epochs_to_reach(target)
        table.add_row(
            outcome.label,
            str(len(outcome.trials)),
            str(len(outcome.epoch_curve())),
            str(outcome.stopped_early()),
            f"{outcome.best:.4f}",
            str(reached) if reached is not None else "not reached",
            f"{outcome.seconds:.0f}",
        )
    return table


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m orchestrator.bench_search",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, default=DEFAULT_SPEC, help="search spec YAML (default: %(default)s)")
    p.add_argument("--num-samples", dest="num_samples", type=int, help="trials per search (default: the spec's)")
    p.add_argument("--epochs", type=int, help="epochs per trial (default: the spec's)")
    p.add_argument("--max-concurrent", dest="max_concurrent", type=int, help="trials at once (default: the spec's)")
    p.add_argument("--seed", type=int, help="sampler seed for both searches (default: the spec's)")
    return p.parse_args(argv)


@exits_cleanly_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    spec = load_spec(args.config).with_overrides(
        {"epochs": args.epochs},
        {"num_samples": args.num_samples, "max_concurrent": args.max_concurrent, "seed": args.seed},
    )
    spec = resolve_epochs(spec)  # both searches run the same number of epochs
    os.environ.update(QUIET_ENV)
    started_ray = start_ray(None)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-search-") as storage:
            outcomes = [
                run_variant("tpe+asha", spec, Path(storage), early_stopping=True),
                run_variant("random", spec, Path(storage), early_stopping=False),
            ]
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    target = outcomes[1].best
    console.print(outcome_table(outcomes, target))
    tpe, random = outcomes
    reached, random_epochs = tpe.epochs_to_reach(target), random.epochs_to_reach(target)
    if reached is None:
        print(f"tpe+asha did not reach the random search's best ({target:.4f}); its best: {tpe.best:.4f}")
    else:
        print(
            f"tpe+asha reached {target:.4f} after {reached} trial-epochs, random search after {random_epochs} "
            f"({random_epochs / reached:.2f}x); total trial-epochs {len(tpe.epoch_curve())} vs "
            f"{len(random.epoch_curve())}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
