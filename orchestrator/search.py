"""`python -m orchestrator.search`: a Ray Tune + Optuna search over Pix2Pix hyperparameters.

Run without arguments for a laptop-sized search on built-in data; add `--address auto` to use a
running Ray cluster. Every setting of the YAML spec can be overridden by a flag (see --help).
"""

from __future__ import annotations

import argparse
import errno
import re
import shlex
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from orchestrator.outcomes import SearchState
from orchestrator.spec import AUTO_EPOCHS, DEFAULT_SPEC, SearchSettings, SearchSpec, epochs_flag, load_spec, save_spec
from trainer.cli import OneLineErrorParser, add_dataclass_flags, given_flags
from trainer.config import TrainConfig
from trainer.errors import EXIT_INTERRUPTED, UserError, exits_cleanly_on_user_error

EXPERIMENTS = Path("experiments")
WANDB_PROJECT = "pix2pix-tune"


TRAIN_FLAGS = ("data", "size", "epochs", "batch_size")  # the trainer settings a search run overrides most


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="python -m orchestrator.search",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help=f"search spec YAML (train / search / space; default: {DEFAULT_SPEC})")
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
        help="W&B logging (default: online when an API key is configured, else offline); may change on --resume",
    )
    p.add_argument("--wandb-project", default=WANDB_PROJECT, help=f"W&B project (default: {WANDB_PROJECT})")
    add_dataclass_flags(
        p,
        TrainConfig,
        "trainer settings (override the spec's train section)",
        only=TRAIN_FLAGS,
        types={"epochs": (epochs_flag, f"N|{AUTO_EPOCHS}")},  # a search also takes auto (spec.py)
    )
    add_dataclass_flags(p, SearchSettings, "search settings (override the spec's search section)")
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
    return f"--{name.replace('_', '-')}" if flagged else key


# What a resumed search may change (orchestrator.trials.limits applies them); every other setting
# shapes the trials Tune saved, so a resume refuses to change it.
CHANGEABLE_ON_RESUME = ("search.num_samples", "search.max_concurrent")


def resumed_spec(args: argparse.Namespace, saved_path: Path) -> SearchSpec:
    """The spec a search started with, checked against this run's --config and flags: a resumed
    search continues the trials Tune saved, so nothing that shapes them may change. The number of
    trials and of trials at once may: they are taken from this run, and spec.yaml is updated."""
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
        return saved
    for key in differences:
        print(f"resuming with {flag_of(key)} {value_of(asked, key)} (was {value_of(saved, key)}); {saved_path} updated")
    resumed = saved.with_overrides({}, {key.split(".", 1)[1]: value_of(asked, key) for key in differences})
    save_spec(resumed, saved_path.parent)
    return resumed


def value_of(spec: SearchSpec, key: str) -> Any:
    section, name = key.split(".", 1)
    return spec.to_dict()[section].get(name)


def resume_command(name: str, storage_path: str) -> str:
    return shlex.join(
        ["python", "-m", "orchestrator.search", "--resume", "--name", name, "--storage-path", storage_path]
    )


def is_uri(path: str) -> bool:
    return "://" in path


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
    name = experiment_name(args, storage_path)
    # Our own outputs (summary, report, export, Optuna study, W&B runs) need a local folder; with a
    # remote storage path they are written here and uploaded next to Tune's results.
    out_dir = (EXPERIMENTS.resolve() if is_uri(storage_path) else Path(storage_path)) / name
    # These import Ray: keep --help fast.
    from orchestrator.runner import RunOptions, fetch_saved_spec, run_search
    from orchestrator.trials.endings import DISK_FULL

    if args.resume:
        spec = resumed_spec(args, fetch_saved_spec(out_dir, f"{storage_path.rstrip('/')}/{name}"))
    else:
        spec = spec_from_args(args, load_spec(args.config or DEFAULT_SPEC))
    try:
        run = RunOptions(args.address, args.resume, args.wandb, args.wandb_project)
        summary = run_search(spec, name, storage_path, out_dir, run)
    except KeyboardInterrupt:
        summary = {"state": SearchState.INTERRUPTED}
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        # A trial's full disk (it stopped the search: orchestrator.trials.endings) or the driver's own write.
        where = DISK_FULL.get("where") or (f"writing {err.filename}" if err.filename else "")
        raise UserError(
            f"no space left on the device{f' ({where})' if where else ''}; free space and continue with: "
            f"{resume_command(name, storage_path)}"
        ) from None
    if summary["state"] == SearchState.INTERRUPTED:
        print(f"interrupted; continue the search with:\n  {resume_command(name, storage_path)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0 if summary.get("best") else 1


if __name__ == "__main__":
    sys.exit(main())
