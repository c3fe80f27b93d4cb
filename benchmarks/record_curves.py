"""`python -m benchmarks.record_curves`: record learning curves once, for `benchmarks.replay` to replay.

Trains the paper's settings, the L1-only reference (the same without the discriminator) and
--configs configurations drawn at random (Optuna's RandomSampler, seeded) from the spec's space,
each for the spec's epochs, --workers at a time (a process and a thread each), with the search's
fixed trainer settings at a small size, on the spec's data or --data. After every epoch it scores
the live generator on val and on test, so a replayed search can report the test SSIM of the epoch it
would have exported. The table (JSON, a configuration to a line) holds the settings, the machine,
and per configuration its params and per-epoch val SSIM, test SSIM and seconds. It is written after
every configuration: run again with the same settings (and as many or more --configs), a stopped
recording goes on where it was. A benchmark input, run by hand; the shipped tables are in
benchmarks/data/ (how each was recorded: docs/performance.md#replayed-searches).
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
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import optuna
import torch

from orchestrator.spec import DEFAULT_SPEC, load_spec
from orchestrator.trials.references import L1_ONLY, L1_ONLY_SETTING, PAPER, SEARCHED
from orchestrator.tuner import resolve_epochs
from trainer.config import TrainConfig
from trainer.data import load_run_data
from trainer.errors import TrainingDiverged, UserError, exits_cleanly_on_user_error
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
    p.add_argument("--data", help="the task: builtin:NAME or a folder (default: the spec's)")
    p.add_argument("--configs", type=int, default=24, help="configurations drawn from the space (default: 24)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws and of the trainer (default: 0)")
    p.add_argument("--size", type=int, default=SMALL["size"], help="image side (default: %(default)s)")
    p.add_argument("--width", type=int, default=SMALL["ngf"], help="ngf = ndf (default: %(default)s)")
    p.add_argument("--epochs", type=int, help="epochs per configuration (default: the spec's, auto resolved)")
    p.add_argument("--device", default=SMALL["device"], help="cpu or cuda (default: %(default)s)")
    p.add_argument("--precision", default=SMALL["precision"], help="fp32, bf16, fp16 or auto (default: %(default)s)")
    p.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1,
        help="configurations trained at once, one process and one thread each (default: the CPUs, %(default)s)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=DEFAULT_TABLE, help="the table to write (default: %(default)s)")
    return p.parse_args(argv)


def recorded(out: Path, header: dict[str, Any]) -> tuple[list[dict[str, Any]], float]:
    """The curves an earlier recording with the same settings left in `out`, and the seconds it spent
    (it writes the table after every configuration, so a stopped recording goes on where it was)."""
    if not out.exists():
        return [], 0.0
    try:
        table = json.loads(out.read_text())
        same = all(table.get(key) == json.loads(json.dumps(value)) for key, value in header.items())
        rows, seconds = table["trials"], float(table.get("seconds", 0.0))
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{out}: not a curve table ({err}); give another --out or remove it") from err
    if not same:
        raise UserError(
            f"{out} holds curves recorded with other settings (spec, seed or epochs); "
            "give another --out, or remove it to record anew"
        )
    return rows, seconds


def table_json(table: dict[str, Any]) -> str:
    """The table's JSON, one configuration to a line: hundreds of curves of up to hundreds of epochs stay
    a file of a few hundred KB that diffs by configuration."""
    head = json.dumps({key: value for key, value in table.items() if key != "trials"}, indent=1)
    rows = ",\n".join(json.dumps(row) for row in table["trials"])
    return f'{head.removesuffix("}").rstrip()},\n "trials": [\n{rows}\n ]\n}}\n'


def run_key(kind: str, params: dict[str, Any]) -> str:
    return json.dumps([kind, params], sort_keys=True)


def init_worker() -> None:
    torch.set_num_threads(1)  # one configuration per core: --workers processes share the CPUs


@exits_cleanly_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: give 1 or more")
    small = {**SMALL, "size": args.size, "ngf": args.width, "ndf": args.width, "seed": args.seed}
    small.update(device=args.device, precision=args.precision, data=args.data)
    train_overrides = {**small, **({"epochs": args.epochs} if args.epochs else {})}
    asked = load_spec(args.config).with_overrides(train_overrides, {})
    spec = resolve_epochs(asked)
    paper = spec.paper_point()
    runs = [(PAPER, paper), (L1_ONLY, {**paper, **L1_ONLY_SETTING})]
    runs += [(SEARCHED, params) for params in sampled_params(spec, args.configs, args.seed)]
    # The spec as a search saves it (epochs: auto kept) and the training pairs auto counted: the replay
    # resolves it again, so that its stopping rules scale with the epochs as the search's do.
    header = {
        "spec": asked.to_dict(),
        "train_pairs": spec.auto_train_images,
        "epochs": spec.trial_config({}).epochs,
        "seed": args.seed,
    }
    recorded_rows, seconds = recorded(args.out, header)
    earlier = {run_key(row["kind"], row["params"]): row for row in recorded_rows}
    rows = {i: earlier[run_key(*run)] for i, run in enumerate(runs) if run_key(*run) in earlier}
    todo = [(i, kind, params) for i, (kind, params) in enumerate(runs) if i not in rows]
    if earlier:
        print(f"{args.out}: {len(rows)} of {len(runs)} configurations recorded already; going on")
    table = {
        "about": "learning curves for benchmarks.replay, recorded by benchmarks.record_curves",
        **header,
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                    "device": args.device, "workers": args.workers},
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn"), initializer=init_worker) as pool:
        futures = {pool.submit(record, spec.trial_config(params)): (i, kind, params) for i, kind, params in todo}
        for future in as_completed(futures):
            i, kind, params = futures[future]
            curve = future.result()
            rows[i] = {"kind": kind, "params": params, **curve}
            table["seconds"] = round(seconds + time.time() - started, 1)  # a resumed recording's included
            table["trials"] = [rows[j] for j in sorted(rows)]  # in draw order, whichever finished first
            write_atomic_text(args.out, table_json(table))
            print(
                f"{len(rows)}/{len(runs)} {kind} {params}: best val SSIM "
                f"{max(curve['val_ssim'], default=float('nan')):.4f} in {sum(curve['epoch_seconds']):.1f} s",
                flush=True,
            )
    print(f"{len(rows)} curves, {len(todo)} recorded now in {time.time() - started:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
