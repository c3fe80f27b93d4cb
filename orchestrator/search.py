"""`python -m orchestrator.search`: a Ray Tune + Optuna search over Pix2Pix hyperparameters.

Run without arguments for a laptop-sized search on built-in data; add `--address auto` to use a
running Ray cluster. Every setting of the YAML spec can be overridden by a flag (see --help).
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from orchestrator.outcomes import SearchState, StopCause
from orchestrator.spec import (
    AUTO_EPOCHS,
    CHANGEABLE_ON_RESUME,
    DEFAULT_SPEC,
    SPEC_FILE,
    SearchSettings,
    SearchSpec,
    epochs_flag,
    load_spec,
    save_spec,
)
from orchestrator.storage import EXPERIMENTS, ExperimentPlace, is_uri
from trainer.cli import OneLineErrorParser, add_dataclass_flags, flag, given_flags
from trainer.config import TrainConfig
from trainer.errors import UserError, exits_cleanly_on_user_error

WANDB_PROJECT = "pix2pix-tune"


TRAIN_FLAGS = ("data", "size", "epochs", "batch_size", "ngf", "ndf")  # the trainer settings a search run overrides most


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="python -m orchestrator.search",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    default = load_spec(DEFAULT_SPEC)  # what runs without --config: the help shows its values
    p.add_argument(
        "--config", type=Path, help=f"search spec YAML (train / search / space; default: {DEFAULT_SPEC.name})"
    )
    p.add_argument(
        "--address",
        help="Ray cluster to join ('auto' = the one this machine belongs to); "
        "without it Ray starts embedded on this machine and stops on exit",
    )
    p.add_argument(
        "--storage-path",
        dest="storage_path",
        default=str(EXPERIMENTS),
        help=f"where experiments live: a local folder or a URI such as s3://bucket/path (default: {EXPERIMENTS})",
    )
    p.add_argument("--name", help="experiment name (default: <spec>-<date>-<time>; with --resume: the latest)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue a stopped search with the spec it started with (finished trials are kept)",
    )
    p.add_argument(
        "--wandb",
        choices=("off", "offline", "online"),
        help="W&B logging (default: online when an API key is configured, else offline; with --resume: as the "
        "search started)",
    )
    p.add_argument("--wandb-project", default=WANDB_PROJECT, help=f"W&B project (default: {WANDB_PROJECT})")
    add_dataclass_flags(
        p,
        TrainConfig,
        f"trainer settings (override the spec's train section; defaults: {DEFAULT_SPEC.name})",
        only=TRAIN_FLAGS,
        types={"epochs": (epochs_flag, f"N|{AUTO_EPOCHS}")},  # a search also takes auto (spec.py)
        defaults=default.train,
    )
    add_dataclass_flags(
        p,
        SearchSettings,
        f"search settings (override the spec's search section; defaults: {DEFAULT_SPEC.name})",
        defaults=default.search.__dict__,
    )
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def spec_from_args(args: argparse.Namespace, spec: SearchSpec) -> SearchSpec:
    """`spec` with the flags the user passed applied, validated as the file was."""
    return spec.with_overrides(given_flags(args, TrainConfig), given_flags(args, SearchSettings))


def flag_of(key: str) -> str:
    """The flag that sets a spec key (train.batch_size -> --batch-size), or the key when none does."""
    section, name = key.split(".", 1)
    flagged = section == "search" or (section == "train" and name in TRAIN_FLAGS)
    return flag(name) if flagged else key


def resumed_spec(args: argparse.Namespace, saved_path: Path) -> tuple[SearchSpec, bool]:
    """The spec a search started with, checked against this run's --config and flags, and whether this
    run changed it: a resumed search continues the trials Tune saved, so only what CHANGEABLE_ON_RESUME
    names may change; it is taken from this run, and spec.yaml is updated."""
    saved = load_spec(saved_path)
    asked = spec_from_args(args, load_spec(args.config) if args.config else saved)
    differences = saved.differences(asked)
    changed = [key for key in differences if key not in CHANGEABLE_ON_RESUME]
    if changed:
        key = changed[0]
        raise UserError(
            f"{saved_path}: {flag_of(key)} cannot change on --resume (the search started with {value_of(saved, key)}, "
            f"not {value_of(asked, key)}); drop it to continue, or start a new search with another --name"
            + (f" ({len(changed) - 1} more: {', '.join(changed[1:])})" if len(changed) > 1 else "")
        )
    if not differences:
        return saved, False
    for key in differences:
        print(f"resuming with {flag_of(key)} {value_of(asked, key)} (was {value_of(saved, key)}); {saved_path} updated")
    resumed = saved.with_overrides({}, {key.split(".", 1)[1]: value_of(asked, key) for key in differences})
    save_spec(resumed, saved_path.parent)
    return resumed, True


def value_of(spec: SearchSpec, key: str) -> Any:
    section, name = key.split(".", 1)
    return spec.to_dict()[section].get(name)


def experiment_name(args: argparse.Namespace, storage_path: str) -> str:
    if args.name:
        return args.name
    stem = Path(args.config or DEFAULT_SPEC).stem
    if args.resume:
        if is_uri(storage_path):
            raise UserError("--resume on a remote --storage-path needs --name (the experiment to continue)")
        # Only names this spec gave (<stem>-<date>-<time>): default-gpu-... is another spec's search.
        own_name = re.compile(rf"{re.escape(stem)}-\d{{8}}-\d{{6}}")
        candidates = [p for p in Path(storage_path).glob(f"{stem}-*") if own_name.fullmatch(p.name)]
        candidates.sort(key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise UserError(f"{storage_path}: no experiment of {stem} to resume; pass --name")
        return candidates[-1].name
    return f"{stem}-{datetime.now():%Y%m%d-%H%M%S}"


@exits_cleanly_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    storage_path = args.storage_path if is_uri(args.storage_path) else str(Path(args.storage_path).resolve())
    place = ExperimentPlace.of(storage_path, experiment_name(args, storage_path))
    # These import Ray: keep --help fast.
    from orchestrator.driver import RunOptions, held_by_this_driver, run_search, saved_summary

    with held_by_this_driver(place, new=not args.resume):
        wandb = args.wandb
        if args.resume:
            spec, changed = resumed_spec(args, place.fetch(SPEC_FILE))
            summary = saved_summary(place)
            if summary and summary["state"] == SearchState.FINISHED and not changed:
                print(
                    f"{place.path}: this search is complete ({len(summary['trials'])} trials); nothing to resume. "
                    "Pass --num-samples with more trials to run more."
                )
                return 0
            if wandb is None and summary is not None:  # the mode it started with, unless --wandb says otherwise
                wandb = summary["wandb"]["mode"] if summary["wandb"] else "off"
        else:
            spec = spec_from_args(args, load_spec(args.config or DEFAULT_SPEC))
        outcome = run_search(spec, place, RunOptions(args.address, args.resume, wandb, args.wandb_project))
    if outcome.stop == StopCause.STORAGE:
        raise UserError(f"{outcome.detail}; {outcome.advice} and continue with: {outcome.resume_command}")
    if outcome.state == SearchState.INTERRUPTED:
        print(f"interrupted; continue the search with:\n  {outcome.resume_command}", file=sys.stderr)
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
