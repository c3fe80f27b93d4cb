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

from orchestrator.spec import DEFAULT_SPEC, SearchSettings, SearchSpec, load_spec
from trainer.errors import UserError, exits_cleanly_on_user_error

EXPERIMENTS = Path("experiments")
WANDB_PROJECT = "pix2pix-tune"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m orchestrator.search",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", type=Path, default=DEFAULT_SPEC, help="search spec YAML (train / search / space)")
    p.add_argument(
        "--address",
        help="Ray cluster to join ('auto' = the one this machine belongs to); "
        "without it Ray starts embedded on this machine and stops on exit",
    )
    p.add_argument("--data", help="training data: a folder every node can read (shared storage) or builtin:NAME")
    p.add_argument("--size", type=int, help="image size in pixels (overrides train.size)")
    p.add_argument("--epochs", type=int, help="epochs per trial (overrides train.epochs)")
    p.add_argument("--batch-size", dest="batch_size", type=int, help="batch size (overrides train.batch_size)")
    p.add_argument("--num-samples", dest="num_samples", type=int, help="number of trials")
    p.add_argument("--max-concurrent", dest="max_concurrent", type=int, help="trials running at once")
    p.add_argument("--cpus-per-trial", dest="cpus_per_trial", type=float, help="CPUs reserved per trial")
    p.add_argument(
        "--gpus-per-trial",
        dest="gpus_per_trial",
        type=float,
        help="GPUs per trial; fractions pack trials onto one GPU (0.5 = two per GPU)",
    )
    p.add_argument("--grace-period", dest="grace_period", type=int, help="ASHA: epochs before a trial can be stopped")
    p.add_argument(
        "--stop-patience",
        dest="stop_patience",
        type=int,
        help="stop a trial after this many epochs without a val SSIM gain (0 = never)",
    )
    p.add_argument(
        "--time-budget",
        dest="time_budget",
        help="wall time for the trials, such as 10m or 2h: running trials end then and the best so far is exported",
    )
    p.add_argument(
        "--keep-generators",
        dest="keep_generators",
        type=int,
        help="ended trials that keep their best generator on disk (the best by val SSIM)",
    )
    p.add_argument(
        "--keep-full-state",
        dest="keep_full_state",
        action="store_true",
        default=None,
        help="keep ended trials' full checkpoints (discriminator and optimizers too; 3-4x the disk)",
    )
    p.add_argument(
        "--seed",
        type=int,
        help="seed of the Optuna sampler (trials share the trainer seed of the spec, for a fair comparison)",
    )
    p.add_argument(
        "--storage-path",
        dest="storage_path",
        default=str(EXPERIMENTS),
        help="where experiments live: a local folder or a URI such as s3://bucket/path",
    )
    p.add_argument("--name", help="experiment name (default: <spec>-<date>-<time>; with --resume: the latest)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted search (finished trials are kept)")
    p.add_argument(
        "--wandb",
        choices=("off", "offline", "online"),
        help="W&B logging (default: online when an API key is configured, else offline)",
    )
    p.add_argument("--wandb-project", default=WANDB_PROJECT, help="W&B project")
    return p.parse_args(argv)


def spec_from_args(args: argparse.Namespace) -> SearchSpec:
    spec = load_spec(args.config)
    train = {"data": args.data, "size": args.size, "epochs": args.epochs, "batch_size": args.batch_size}
    search = {name: getattr(args, name, None) for name in SearchSettings.__dataclass_fields__}
    return spec.with_overrides(train, search)


def is_uri(path: str) -> bool:
    return "://" in path


def experiment_name(args: argparse.Namespace, storage_path: str) -> str:
    if args.name:
        return args.name
    stem = Path(args.config).stem
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
    spec = spec_from_args(args)
    storage_path = args.storage_path if is_uri(args.storage_path) else str(Path(args.storage_path).resolve())
    name = experiment_name(args, storage_path)
    # Our own outputs (summary, report, export, Optuna study, W&B runs) need a local folder; with a
    # remote storage path they are written here and the export is uploaded next to Tune's results.
    out_dir = (EXPERIMENTS.resolve() if is_uri(storage_path) else Path(storage_path)) / name
    from orchestrator.runner import run_search  # imports Ray: keep --help and spec errors fast

    summary = run_search(spec, name, storage_path, out_dir, args)
    return 0 if summary.get("best") else 1


if __name__ == "__main__":
    sys.exit(main())
