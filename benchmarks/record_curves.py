"""`python -m benchmarks.record_curves`: record learning curves once, for `benchmarks.replay` to replay.

Trains the paper's settings, the L1-only reference (the same without the discriminator) and
--configs configurations drawn at random (Optuna's RandomSampler, seeded) from the spec's space,
each for the spec's epochs, one after another in this process, with the search's fixed trainer
settings at a small size. After every epoch it scores the live generator on val and on test, so a
replayed search can report the test SSIM of the epoch it would have exported. The table (JSON) holds
the settings, the machine, and per configuration its params and per-epoch val SSIM, test SSIM and
seconds. A benchmark input, run by hand; the shipped tables are benchmarks/data/curves-glyphs-32.json
(the default) and curves-glyphs-64.json (at default.yaml's own 64 px, docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import torch

from orchestrator.spec import DEFAULT_SPEC, load_spec
from orchestrator.trials.references import L1_ONLY, L1_ONLY_SETTING, PAPER, SEARCHED
from orchestrator.tuner import resolve_epochs
from trainer.config import TrainConfig
from trainer.data import load_run_data
from trainer.errors import TrainingDiverged, exits_cleanly_on_user_error
from trainer.files import write_atomic_text
from trainer.loop import evaluate, train

DEFAULT_TABLE = Path(__file__).resolve().parent / "data" / "curves-glyphs-32.json"
# The recorded setting: the default search's data and epochs, at a size and width a CPU records in minutes.
SMALL = {"size": 32, "ngf": 8, "ndf": 8, "precision": "fp32", "device": "cpu"}


def cpu_name() -> str:
    """The CPU's model name (Linux), else what platform knows: the table says where it was recorded."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def sampled_params(spec: Any, count: int, seed: int) -> list[dict[str, Any]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    distributions = spec.distributions()
    params = []
    for _ in range(count):
        trial = study.ask(distributions)
        params.append(trial.params)
        study.tell(trial, 0.0)
    return params


def record(cfg: TrainConfig) -> dict[str, Any]:
    """Per-epoch val SSIM, test SSIM and seconds of one training run; a diverged run ends its curve."""
    curve: dict[str, Any] = {"val_ssim": [], "test_ssim": [], "epoch_seconds": []}
    with tempfile.TemporaryDirectory(prefix="record-curves-") as run_dir:
        data = load_run_data(cfg, Path(run_dir))
        try:
            for result in train(cfg, Path(run_dir), data=data, best_full_state=False):
                test = evaluate(result.generator, data.splits["test"], cfg.val_batch_size, prefix="test")
                curve["val_ssim"].append(round(result.val["val_ssim"], 5))
                curve["test_ssim"].append(round(test["test_ssim"], 5))
                curve["epoch_seconds"].append(round(result.seconds, 3))
        except TrainingDiverged:
            curve["diverged"] = True
    return curve


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.record_curves", description=__doc__)
    p.add_argument("--config", type=Path, default=DEFAULT_SPEC, help="search spec: space and fixed settings")
    p.add_argument("--configs", type=int, default=24, help="configurations drawn from the space (default: 24)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws and of the trainer (default: 0)")
    p.add_argument("--size", type=int, default=SMALL["size"], help="image side (default: %(default)s)")
    p.add_argument("--width", type=int, default=SMALL["ngf"], help="ngf = ndf (default: %(default)s)")
    p.add_argument("--epochs", type=int, help="epochs per configuration (default: the spec's, auto resolved)")
    p.add_argument("--out", type=Path, default=DEFAULT_TABLE, help="the table to write (default: %(default)s)")
    return p.parse_args(argv)


@exits_cleanly_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    small = {**SMALL, "size": args.size, "ngf": args.width, "ndf": args.width, "seed": args.seed}
    train_overrides = {**small, **({"epochs": args.epochs} if args.epochs else {})}
    spec = resolve_epochs(load_spec(args.config).with_overrides(train_overrides, {}))
    paper = spec.paper_point()
    runs = [(PAPER, paper), (L1_ONLY, {**paper, **L1_ONLY_SETTING})]
    runs += [(SEARCHED, params) for params in sampled_params(spec, args.configs, args.seed)]
    started = time.time()
    rows = []
    for i, (kind, params) in enumerate(runs):
        cfg = spec.trial_config(params)
        curve = record(cfg)
        rows.append({"kind": kind, "params": params, **curve})
        print(
            f"{i + 1}/{len(runs)} {kind} {params}: best val SSIM {max(curve['val_ssim'], default=float('nan')):.4f} "
            f"in {sum(curve['epoch_seconds']):.1f} s",
            flush=True,
        )
    table = {
        "about": "learning curves for benchmarks.replay, recorded by benchmarks.record_curves",
        "spec": spec.to_dict(),
        "epochs": spec.trial_config({}).epochs,
        "seed": args.seed,
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__},
        "seconds": round(time.time() - started, 1),
        "trials": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic_text(args.out, json.dumps(table, indent=1))
    print(f"{len(rows)} curves in {table['seconds']:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
