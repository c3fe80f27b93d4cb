"""`python -m benchmarks.replay`: search methods compared on recorded learning curves, over many seeds.

Each search runs through the search's own driver pieces on a real local Ray: its searcher
(orchestrator.tuner.search_algorithm: TPE behind the reference trials, within num_samples and
max_concurrent), its scheduler (make_scheduler: ASHA, or ASHA with the references apart) and its
plateau rule (PlateauRule). Its trials are stand-ins (benchmarks.standin_trial.run_replay_trial):
each reports, epoch by epoch, the recorded curve of the configuration nearest to its params in a
table that benchmarks.record_curves wrote. No training, so a search takes seconds and a method can
be judged over a hundred seeds.

A method is a set of search settings over the table's spec (--methods; `random` is TPE with every
trial a random start-up draw). Per method it prints means over the seeds with 95% confidence
intervals: the exported trial's val SSIM and the test SSIM of the epoch it would export, that test
SSIM less the better reference trial's, how often a searched trial (not a reference) is the export,
and the trial-epochs spent. It judges samplers, early stopping and trial budgets; it cannot judge
what changes the curves themselves (PBT, warm starts), nor wall-time budgets.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune

from benchmarks.record_curves import DEFAULT_TABLE
from benchmarks.standin_trial import CurveRow, ReplaySettings, run_replay_trial
from orchestrator.cluster import start_ray
from orchestrator.driver import QUIET_ENV
from orchestrator.spec import SearchSpec, load_spec, save_spec
from orchestrator.trials.ray_output import result_loggers
from orchestrator.trials.references import reference_of
from orchestrator.tuner import make_scheduler, search_algorithm
from trainer.cli import OneLineErrorParser
from trainer.errors import UserError, exits_cleanly_on_user_error

Z95 = 1.96  # normal quantile of a two-sided 95% interval: with tens of seeds or more, the t quantile is near it
# Search settings each method changes over the table's spec.
METHODS: dict[str, dict[str, Any]] = {
    "default": {},
    "random": {"startup_trials": 10**6},  # every trial a TPE start-up draw: random search with the same driver
    "no-stopping": {"stop_patience": 0, "grace_fraction": 1.0},  # grace = all epochs: ASHA stops none
    "apart": {"rank_references": False},
    "smooth3": {"plateau_window": 3},
    "grace-quarter": {"grace_fraction": 0.25},
    "fair": {"rank_references": False, "plateau_window": 3, "grace_fraction": 0.25},
}


def load_table(path: Path, folder: Path) -> tuple[SearchSpec, list[CurveRow]]:
    """The spec the curves were recorded with (its trial budget and early stopping as a search's), and the curves."""
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not a curve table of benchmarks.record_curves ({err})") from None
    spec_file = folder / "table-spec.yaml"
    try:
        spec_file.write_text(json.dumps(table["spec"]))  # JSON is YAML
        spec = load_spec(spec_file)
        if spec.epochs_auto:  # resolved as the recording did, so the stopping rules scale as a search's
            spec = spec.with_epochs_for(table["train_pairs"])
    except KeyError as err:
        raise UserError(f"{path}: not a curve table of benchmarks.record_curves (no {err})") from None
    rows = [
        CurveRow(r["params"], tuple(r["val_ssim"]), tuple(r["test_ssim"])) for r in table["trials"] if r["val_ssim"]
    ]
    return spec, rows


@dataclass(frozen=True)
class SearchResult:
    """One replayed search: what it would have exported, against its reference trials."""

    export_val: float
    export_test: float
    reference_test: float  # the better reference trial's test SSIM at its best val epoch (nan: none ran)
    searched_export: bool
    trial_epochs: int

    @property
    def gain(self) -> float:
        return self.export_test - self.reference_test


def space_scales(spec: SearchSpec) -> dict[str, tuple[float, float, bool]]:
    """How far apart two configurations are, per searched range (benchmarks.standin_trial.distance)."""
    return {name: (p.low, p.high, p.log) for name, p in spec.space.items() if p.type != "categorical"}


def replay_search(
    spec: SearchSpec, rows: list[CurveRow], storage: Path, name: str, epoch_seconds: float
) -> SearchResult:
    epochs = spec.trial_config({}).epochs
    settings = ReplaySettings(
        rows=tuple(rows),
        scales=space_scales(spec),
        plateau=spec.plateau_rule(),
        epoch_seconds=epoch_seconds,
    )
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(run_replay_trial, settings=settings), {"cpu": 1}),
        tune_config=tune.TuneConfig(
            search_alg=search_algorithm(spec),
            scheduler=make_scheduler(spec, epochs),
            num_samples=spec.search.num_samples,
            reuse_actors=True,  # a stand-in keeps no state between trials: no worker start per trial
        ),
        # The search's own result files (a search run before in this process turns Tune's defaults off)
        run_config=tune.RunConfig(name=name, storage_path=str(storage), callbacks=result_loggers(), verbose=0),
    )
    best: dict[str, tuple[float, float]] = {}  # trial id -> (best val SSIM, test SSIM at that epoch)
    kinds: dict[str, str | None] = {}
    trial_epochs = 0
    for result in tuner.fit():
        frame = result.metrics_dataframe
        if frame is None or "val_ssim" not in frame:
            continue
        at = frame["val_ssim"].idxmax()
        best[result.path] = (float(frame["val_ssim"][at]), float(frame["test_ssim"][at]))
        kinds[result.path] = reference_of(result.config, spec)
        trial_epochs += len(frame)
    if not best:
        raise RuntimeError(f"{name}: no trial reported an epoch")
    export = max(best, key=lambda path: best[path][0])
    references = [best[path][1] for path, kind in kinds.items() if kind is not None]
    return SearchResult(
        export_val=best[export][0],
        export_test=best[export][1],
        reference_test=max(references, default=math.nan),
        searched_export=kinds[export] is None,
        trial_epochs=trial_epochs,
    )


def interval(values: Sequence[float], fmt: str = ".4f") -> str:
    """Mean ± the half-width of its 95% confidence interval."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) < 2:
        return format(mean, fmt)
    return f"{format(mean, fmt)} ± {format(Z95 * statistics.stdev(values) / math.sqrt(len(values)), fmt)}"


def markdown_table(results: dict[str, list[SearchResult]]) -> str:
    lines = [
        "| method | seeds | export val SSIM | export test SSIM | test gain over the better reference "
        "| searched trial exported | trial-epochs |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, runs in results.items():
        lines.append(
            f"| {label} | {len(runs)} | {interval([r.export_val for r in runs])} "
            f"| {interval([r.export_test for r in runs])} | {interval([r.gain for r in runs])} "
            f"| {interval([float(r.searched_export) for r in runs], '.2f')} "
            f"| {interval([float(r.trial_epochs) for r in runs], '.1f')} |"
        )
    return "\n".join(lines)


def seed_range(text: str) -> list[int]:
    """0-99, or 0,3,7, or both: 0-9,20."""
    seeds: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            first, _, last = part.partition("-")
            seeds.extend(range(int(first), int(last or first) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seeds such as 0-99 or 0,1,2 (got {text!r})") from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"no seeds in {text!r}")
    return seeds


def method_list(text: str) -> list[str]:
    labels = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [label for label in labels if label not in METHODS]
    if unknown or not labels:
        raise argparse.ArgumentTypeError(
            f"unknown method {', '.join(unknown) or repr(text)}; choose from {', '.join(METHODS)}"
        )
    return labels


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = OneLineErrorParser(
        prog="python -m benchmarks.replay", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--table", type=Path, default=DEFAULT_TABLE, help="curve table (default: %(default)s)")
    p.add_argument(
        "--methods",
        type=method_list,
        default=["default", "fair"],
        help="comma-separated: " + "; ".join(f"{k} {v or '(the spec as recorded)'}" for k, v in METHODS.items()),
    )
    p.add_argument("--seeds", type=seed_range, default=list(range(10)), help="searcher seeds, e.g. 0-99 (default: 0-9)")
    p.add_argument("--num-samples", dest="num_samples", type=int, help="trials per search (default: the table's spec)")
    p.add_argument(
        "--epoch-seconds",
        dest="epoch_seconds",
        type=float,
        default=0.01,
        help="pause per stand-in epoch, so that concurrent trials interleave (default: %(default)s)",
    )
    return p.parse_args(argv)


@exits_cleanly_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.update(QUIET_ENV)
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as scratch:
        spec, rows = load_table(args.table, Path(scratch))
        base = {"time_budget": 0.0, **({"num_samples": args.num_samples} if args.num_samples else {})}
        started_ray = start_ray(None, num_cpus=spec.search.max_concurrent)
        results: dict[str, list[SearchResult]] = {}
        try:
            for label in args.methods:
                for seed in args.seeds:
                    method_spec = spec.with_overrides({}, {**base, **METHODS[label], "seed": seed})
                    save_spec(method_spec, Path(scratch))  # what this search ran with, as a search keeps it
                    result = replay_search(
                        method_spec, rows, Path(scratch) / "tune", f"{label}-{seed}", args.epoch_seconds
                    )
                    results.setdefault(label, []).append(result)
                print(markdown_table({label: results[label]}), flush=True)
        finally:
            if started_ray:
                ray.shutdown()
    print(
        f"\n{len(rows)} recorded curves ({args.table.name}), {args.num_samples or spec.search.num_samples} "
        f"trials a search, {spec.search.max_concurrent} at once, {spec.describe_epochs()}; "
        f"mean ± 95% interval over seeds {args.seeds[0]}-{args.seeds[-1]}:\n"
    )
    print(markdown_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
