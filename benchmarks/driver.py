"""`python -m benchmarks.driver`: does the search's driver keep up with many trials at once?

Runs stand-in trials (benchmarks.standin_trial: each epoch sleeps for --epoch-seconds, then reports
the real metric names with a checkpoint of --checkpoint-mb and, every image_every epochs, a real
~30 KB sample panel) on a local Ray with --concurrent logical CPUs, one trial per CPU, through the
driver the search uses: the Optuna TPE searcher, and the runner's callbacks (trial endings,
checkpoint retention, the live table, W&B logging). The scheduler is FIFO so that every trial runs
every epoch and the theoretical minimum is exact:

    theoretical = ceil(trials / concurrent) * epochs * epoch_seconds

The Optuna study is written during the fit by its callback; after the fit it writes the summary
and the HTML report, as the search does, and times them apart. Per trial count it prints a markdown
table: the fit's overhead over the theoretical minimum, the post-fit time, and the driver's time
per result (the time Tune spends in our callbacks for one reported epoch: on_trial_result and
on_checkpoint, median and p99), measured by a clock callback before ours and one after them.
Ray's own release tests accept about 20% over the theoretical minimum; our goals are <= 20% at
500 trials with 64 at once and <= 50 ms median per result.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
from PIL import Image
from ray import tune
from ray.tune.schedulers import FIFOScheduler

from benchmarks.standin_trial import StandInSettings, run_standin_trial
from orchestrator.cluster import start_ray
from orchestrator.driver import QUIET_ENV
from orchestrator.outcomes import SearchState
from orchestrator.report import write_report
from orchestrator.results import summarize_trials, write_summary
from orchestrator.spec import DEFAULT_SPEC, SearchSpec, load_spec
from orchestrator.tracking.callback import LOGGED_KEYS
from orchestrator.tracking.runs import sync_command
from orchestrator.trials.endings import SearchStop, TrialEndings
from orchestrator.trials.ray_output import result_loggers
from orchestrator.trials.trainable import CHECKPOINT_FILES, PANEL_FILE
from orchestrator.tuner import checkpoint_config, search_algorithm, search_callbacks
from trainer.errors import UserError, exits_cleanly_on_user_error

GOAL_OVERHEAD = 0.20
GOAL_MEDIAN_S = 0.050
PANEL_BYTES = 30_000
PROJECT = "pix2pix-tune-bench"


@dataclass
class DriverClock:
    """Seconds Tune spent in the callbacks between the two clock callbacks, per reported result
    (trial id, training_iteration), and at the experiment's end (the W&B drain among them)."""

    started: float = 0.0
    per_result: dict[tuple[str, int], float] = field(default_factory=dict)
    experiment_end: float = 0.0
    trial_starts: list[float] = field(default_factory=list)  # perf_counter() at each on_trial_start

    def start(self) -> None:
        self.started = time.perf_counter()

    def stop_result(self, trial_id: str, iteration: int) -> None:
        key = (trial_id, iteration)
        self.per_result[key] = self.per_result.get(key, 0.0) + time.perf_counter() - self.started


class ClockStart(tune.Callback):
    def __init__(self, clock: DriverClock) -> None:
        self.clock = clock

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.clock.start()

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        self.clock.start()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.clock.start()


class ClockStop(tune.Callback):
    def __init__(self, clock: DriverClock) -> None:
        self.clock = clock

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.clock.trial_starts.append(time.perf_counter())

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        # Tune calls on_trial_result before it makes this result the trial's last_result...
        self.clock.stop_result(trial.trial_id, int(result["training_iteration"]))

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        # ... and on_checkpoint after.
        self.clock.stop_result(trial.trial_id, int(trial.last_result["training_iteration"]))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.clock.experiment_end = time.perf_counter() - self.clock.started


@dataclass(frozen=True)
class BenchRow:
    trials: int
    concurrent: int
    epochs: int
    epoch_seconds: float
    fit_seconds: float
    # Until the first `concurrent` trials have all started: Ray starting their worker processes
    # (about 1-2 CPU seconds each: ray and ray.tune imports), which this machine's cores bound.
    startup_seconds: float
    driver_cpu_seconds: float  # the driver process's CPU time during the fit (all its threads)
    experiment_end_seconds: float  # inside the fit: the callbacks' on_experiment_end (W&B drain)
    post_fit_seconds: float  # summary and report (the study is written during the fit)
    reuse_actors: bool
    callbacks: str  # "ours" (the search's) or "none" (Tune alone: what is left is Tune's and the machine's)
    results: int
    per_result: list[float]

    @property
    def theoretical_seconds(self) -> float:
        return math.ceil(self.trials / self.concurrent) * self.epochs * self.epoch_seconds

    @property
    def overhead(self) -> float:
        return self.fit_seconds / self.theoretical_seconds - 1.0

    @property
    def overhead_after_startup(self) -> float:
        """The last first-wave trial cannot end its slot's waves before startup + theoretical."""
        return (self.fit_seconds - self.startup_seconds) / self.theoretical_seconds - 1.0

    def percentile_ms(self, q: float) -> float:
        ordered = sorted(self.per_result)
        return 1000 * ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    @property
    def median_ms(self) -> float:
        return 1000 * statistics.median(self.per_result)

    def meets_goals(self) -> bool:
        return self.overhead <= GOAL_OVERHEAD and self.median_ms <= GOAL_MEDIAN_S * 1000

    def markdown_row(self) -> str:
        return (
            f"| {self.trials} | {self.theoretical_seconds:.1f} | {self.fit_seconds:.1f} | {self.overhead:+.0%} "
            f"| {self.startup_seconds:.1f} | {self.overhead_after_startup:+.0%} | {self.driver_cpu_seconds:.0f} "
            f"| {self.experiment_end_seconds:.1f} | {self.post_fit_seconds:.1f} | {self.results} "
            f"| {self.median_ms:.2f} | {self.percentile_ms(0.99):.1f} | {1000 * max(self.per_result):.0f} "
            f"| {'yes' if self.meets_goals() else 'no'} |"
        )


def markdown_table(rows: list[BenchRow]) -> str:
    first = rows[0]
    return "\n".join(
        [
            f"{first.concurrent} trials at once, {first.epochs} epochs of {first.epoch_seconds:g} s, "
            f"{'worker processes reused' if first.reuse_actors else 'a new worker process per trial'}, "
            f"{'the search' if first.callbacks == 'ours' else 'no'} callbacks; goals: fit <= "
            f"{GOAL_OVERHEAD:.0%} over the theoretical minimum, driver <= {GOAL_MEDIAN_S * 1000:.0f} ms/result median",
            "",
            "| trials | theoretical s | fit s | over | start-up s | over after start-up | driver CPU s "
            "| W&B drain at end s | post-fit s | results | driver ms/result median | p99 | max | goals met |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            *(row.markdown_row() for row in rows),
        ]
    )


def sample_panel_png(size: int = PANEL_BYTES) -> bytes:
    """A PNG of about `size` bytes: noise does not compress, so width x height x 3 ~ size."""
    side = int(math.sqrt(size / 3 / 3))
    pixels = np.random.default_rng(0).integers(0, 256, (side, 3 * side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def bench_spec(trials: int, concurrent: int, epochs: int) -> SearchSpec:
    return load_spec(DEFAULT_SPEC).with_overrides(
        {"epochs": epochs}, {"num_samples": trials, "max_concurrent": concurrent, "cpus_per_trial": 1}
    )


def run_bench(trials: int, args: argparse.Namespace, root: Path) -> BenchRow:
    spec = bench_spec(trials, args.concurrent, args.epochs)
    name = f"bench-{trials}"
    out_dir = root / name
    out_dir.mkdir(parents=True)
    settings = StandInSettings(
        epochs=args.epochs,
        epoch_seconds=args.epoch_seconds,
        metric_keys=LOGGED_KEYS,
        checkpoint_files=CHECKPOINT_FILES,
        checkpoint_bytes=int(args.checkpoint_mb * 1024**2),
        panel_file=PANEL_FILE,
        panel_png=sample_panel_png(),
        image_every=spec.search.image_every,
    )
    clock = DriverClock()
    # The search's own callbacks (the Optuna study is written by one of them, inside the fit), or
    # none: the same fit with Tune alone, the baseline that shows what our callbacks add.
    ours = (
        search_callbacks(spec, name, out_dir, args.wandb, PROJECT, args.epochs, SearchStop())
        if args.callbacks == "ours"
        else []
    )
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(run_standin_trial, settings=settings), {"cpu": 1}),
        tune_config=tune.TuneConfig(
            search_alg=search_algorithm(spec),  # the search's own: TPE, references, limits
            scheduler=FIFOScheduler(),  # every trial runs every epoch: the theoretical minimum is exact
            num_samples=trials,
            reuse_actors=args.reuse_actors,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(root / "ray-results"),
            callbacks=[ClockStart(clock), *ours, ClockStop(clock), *result_loggers()],
            checkpoint_config=checkpoint_config(spec),
            verbose=0,
        ),
    )
    started, cpu_started = time.perf_counter(), time.process_time()
    results = tuner.fit()
    fit_seconds, driver_cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    startup_seconds = sorted(clock.trial_starts)[: args.concurrent][-1] - started
    if not clock.per_result:
        raise RuntimeError("the clock callbacks saw no result: Tune ran copies of them")
    started = time.perf_counter()
    summary_trials = summarize_trials(results, args.epochs, TrialEndings.read(out_dir))
    wandb_info = (
        None
        if args.wandb == "off"
        else {"mode": args.wandb, "project": PROJECT, "dir": str(out_dir), "sync_command": sync_command(out_dir)}
    )
    write_summary(out_dir, name, spec, SearchState.FINISHED, summary_trials, None, fit_seconds, wandb_info)
    write_report(out_dir)
    post_fit_seconds = time.perf_counter() - started
    epochs_run = sum(t["epochs"] for t in summary_trials)
    if epochs_run != trials * args.epochs:
        raise RuntimeError(f"{epochs_run} trial-epochs ran, {trials * args.epochs} expected")
    return BenchRow(
        trials=trials,
        concurrent=args.concurrent,
        epochs=args.epochs,
        epoch_seconds=args.epoch_seconds,
        fit_seconds=fit_seconds,
        startup_seconds=startup_seconds,
        driver_cpu_seconds=driver_cpu_seconds,
        experiment_end_seconds=clock.experiment_end,
        post_fit_seconds=post_fit_seconds,
        reuse_actors=args.reuse_actors,
        callbacks=args.callbacks,
        results=len(clock.per_result),
        per_result=list(clock.per_result.values()),
    )


def trial_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected trial counts such as 500 or 50,200,500 (got {text!r})") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"trial counts must be >= 1 (got {text!r})")
    return counts


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.driver",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--trials",
        type=trial_counts,
        default=[50, 200, 500],
        help="trial counts, e.g. 500 or 50,200,500 (default: 50,200,500)",
    )
    p.add_argument(
        "--concurrent", type=int, default=64, help="trials at once = Ray's logical CPUs (default: %(default)s)"
    )
    p.add_argument("--epochs", type=int, default=4, help="epochs per trial (default: %(default)s)")
    p.add_argument(
        "--epoch-seconds",
        dest="epoch_seconds",
        type=float,
        default=2.0,
        help="seconds per stand-in epoch (default: %(default)s)",
    )
    p.add_argument(
        "--checkpoint-mb",
        dest="checkpoint_mb",
        type=float,
        default=1.0,
        help="checkpoint size per epoch in MiB (default: %(default)s)",
    )
    p.add_argument(
        "--wandb",
        choices=("offline", "off"),
        default="offline",
        help="W&B logging from the driver (default: %(default)s)",
    )
    p.add_argument(
        "--reuse-actors",
        dest="reuse_actors",
        action="store_true",
        help="run later trials in the first trials' worker processes (Tune's reuse_actors), as the search does",
    )
    p.add_argument(
        "--callbacks",
        choices=("ours", "none"),
        default="ours",
        help="the search's driver callbacks, or none to time Tune alone on this machine (default: %(default)s)",
    )
    p.add_argument("--out", type=Path, help="keep the experiments here (default: a temporary folder, removed after)")
    return p.parse_args(argv)


@exits_cleanly_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.concurrent < 1 or args.epochs < 1 or args.epoch_seconds <= 0 or args.checkpoint_mb < 0:
        raise UserError("--concurrent and --epochs must be >= 1, --epoch-seconds > 0, --checkpoint-mb >= 0")
    os.environ.update(QUIET_ENV)
    os.environ.setdefault("WANDB_SILENT", "true")
    rows: list[BenchRow] = []
    start_ray(None, num_cpus=args.concurrent)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-driver-") as scratch:
            root = (args.out or Path(scratch)).resolve()
            for trials in args.trials:
                rows.append(run_bench(trials, args, root))
                print("\n" + markdown_table(rows[-1:]) + "\n", flush=True)  # each as it comes: the runs are long
    finally:
        ray.shutdown()
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
