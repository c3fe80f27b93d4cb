"""After the trials: what happened to each, the export of the best generator, and the experiment's
summary.json (the input of the report). The Optuna study is written while the search runs
(orchestrator.trials.study)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from rich.table import Table

from orchestrator.outcomes import (
    EPOCH_KEYS,
    METRIC,
    MODE,
    Ending,
    EndReason,
    SearchState,
    describe_end,
    end_reason,
    error_line,
)
from orchestrator.spec import SearchSpec, format_duration
from orchestrator.trials.endings import EndingsRecord
from orchestrator.trials.references import kind_label, kind_of, reference_records
from trainer.checkpoint import BEST_GENERATOR, RunState
from trainer.data import PairedData
from trainer.errors import UserError
from trainer.evaluation import NativeScores
from trainer.export import export_generator
from trainer.export.from_run import evaluated_card
from trainer.files import write_json
from trainer.loop import evaluate, pick_device
from trainer.names import BASELINE_LABELS, METRICS

SUMMARY_FILE = "summary.json"
EXPORT_DIR = "best"  # the best trial's exported generator, in the experiment folder


def _number(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def saved_best(checkpointed: dict[str, Any] | None) -> tuple[float | None, int | None]:
    """(best val SSIM, best epoch) as of the trial's latest checkpoint that Tune registered: what the
    export can load. The last result can be an epoch ahead of it: Tune registers a checkpoint one
    event-loop step after its result, and a time budget or Ctrl-C between the two drops that epoch's
    checkpoint. `checkpointed` is the metrics reported with that checkpoint (None when there is none)."""
    if not checkpointed or checkpointed.get("best_val_ssim") is None:
        return None, None
    return _number(checkpointed["best_val_ssim"]), int(checkpointed["best_epoch"])


def summarize_trials(
    results: Any,
    epochs: int,
    endings: EndingsRecord | None = None,
    budget_seconds: float = 0.0,
    extra_history_keys: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """One record per Tune trial: status, why it ended, params, per-epoch history (EPOCH_KEYS and
    any extra columns of Tune's results, such as its timestamp). `endings` is the driver's record of
    how each trial ended and why any attempt of it was retried (orchestrator.trials.endings.TrialEndings.read)."""
    endings = endings or EndingsRecord()
    keys = EPOCH_KEYS + extra_history_keys
    trials = []
    for result in results:
        metrics = result.metrics or {}
        history = []
        if result.metrics_dataframe is not None and "epoch" in result.metrics_dataframe:
            frame = result.metrics_dataframe
            for row in frame.to_dict("records"):
                if not math.isnan(row.get("epoch", math.nan)):
                    history.append({k: _number(row[k]) for k in keys if k in row})
        epochs_run = int(metrics.get("epoch", 0))
        trial_id = metrics.get("trial_id", Path(result.path).name)
        # The driver's record first: a trial a full disk failed is recorded as interrupted (--resume reruns it).
        ending = endings.ended.get(trial_id, Ending.ERROR if result.error is not None else None)
        status = end_reason(epochs_run, epochs, bool(metrics.get("plateau_stop")), ending)
        # Result.best_checkpoints is in reporting order (no score attribute): the last is the latest.
        best_val_ssim, best_epoch = saved_best(result.best_checkpoints[-1][1] if result.best_checkpoints else None)
        reason = describe_end(
            status,
            epochs_run,
            epochs,
            int(metrics.get("best_epoch", 0)),
            format_duration(budget_seconds),
            error_line(result.error),
        )
        trials.append(
            {
                "trial_id": trial_id,
                "status": status,
                "reason": reason,
                "params": dict(metrics.get("config") or {}),
                "history": history,
                "epochs": epochs_run,
                "best_val_ssim": best_val_ssim,
                "best_epoch": best_epoch,
                "retries": endings.retries.get(trial_id, []),  # why each retried attempt failed
                "node_id": metrics.get("node_id"),
                "gpu_ids": metrics.get("gpu_ids"),
            }
        )
    return sorted(trials, key=lambda t: t["trial_id"])


@contextmanager
def best_epoch_folder(results: Any, trial_id: str) -> Iterator[Path]:
    """The folder of the trial's one kept Tune checkpoint, whose best_generator.pt is the trial's best
    epoch: the folder itself on local storage, a temporary download (removed after) on remote storage."""
    checkpoint = next((r.checkpoint for r in results if r.metrics.get("trial_id") == trial_id), None)
    if checkpoint is None:
        raise UserError(f"trial {trial_id} kept no checkpoint")
    with checkpoint.as_directory() as folder:
        yield Path(folder)


def load_trial_best(results: Any, trial_id: str) -> tuple[RunState, PairedData]:
    """The trial's best epoch and the data it was scored on."""
    with best_epoch_folder(results, trial_id) as folder:
        state = RunState.load(folder / BEST_GENERATOR)
        # the split.json saved with the checkpoint: the same split, or an error if the files changed since
        return state, state.load_data(folder)


def score_references(
    results: Any, references: dict[str, dict[str, Any]], data: PairedData, device: torch.device
) -> dict[str, dict[str, Any]]:
    """The reference records with the test metrics of their best epochs (at the model's size, as "test"
    of the exported model), scored on `data`, the search's one split (decoded once, for the export)."""
    scored = {}
    for kind, record in references.items():
        try:
            with best_epoch_folder(results, record["trial_id"]) as folder:
                state = RunState.load(folder / BEST_GENERATOR)
        except UserError:  # it never reported a checkpoint, or its generator is gone (removed by hand, or
            state = None  # a search from before references kept theirs)
        if state is None or state.split_hash != data.split_hash:
            scored[kind] = {**record, "test": None}
            continue
        G = state.generator().to(device)
        test = evaluate(G, data.splits["test"], state.train_config().val_batch_size, prefix="test")
        scored[kind] = {**record, "test": test}
    return scored


def export_best(
    results: Any, trials: list[dict[str, Any]], spec: SearchSpec, best_dir: Path, experiment_path: str
) -> dict[str, Any] | None:
    """Evaluate the best trial's best epoch on the test split and export its generator. The reference
    trials compete too (orchestrator.trials.references); the card and the summary say which kind won."""
    # A failed trial is not exported even if it scored before failing: the study holds it as FAIL, and
    # the exported trial must be the study's best_trial (or the L1-only reference, not in the study).
    scored = [t for t in trials if t["best_val_ssim"] is not None and t["status"] != EndReason.FAILED]
    if not scored:
        return None
    best = max(scored, key=lambda t: t["best_val_ssim"])
    kind = kind_of(best["params"], spec)
    state, data = load_trial_best(results, best["trial_id"])
    device = pick_device("auto")
    G = state.generator().to(device)
    card, test, samples = evaluated_card(state, data, G, "pix2pix-tune generator")
    metrics, val_metrics = test.card_metrics(), card["val"]
    baseline_name = test.baseline_name
    baseline_val = card[f"{baseline_name}_val"]
    references = score_references(results, reference_records(trials, spec), data, device)
    card = {
        **card,
        "trial_id": best["trial_id"],
        "kind": kind,  # searched, paper or l1_only: which kind of trial won the export
        "kind_label": kind_label(best["params"], spec),
        "hyperparameters": {k: best["params"][k] for k in spec.space if k in best["params"]},
        # with search.pbt: the values each stretch of its epochs trained with (trainer.checkpoint.RunState)
        "schedule": state.schedule if len(state.schedule) > 1 else None,
        "references": references,  # their best epochs' val and test metrics, beside "val" and "test"
        "experiment": Path(experiment_path).name,  # a name, not a path: the folder may move
    }
    card = export_generator(G.cpu(), best_dir, card, samples=samples)
    return {
        "trial_id": best["trial_id"],
        "kind": kind,
        "kind_label": kind_label(best["params"], spec),
        "params": best["params"],
        "schedule": card["schedule"],
        "epoch": state.epoch,
        "val": val_metrics,
        "baseline_val": {"name": baseline_name, **baseline_val},
        "baseline_test": {"name": test.baseline_name, **test.baseline},  # identity, or the mean image
        "test": metrics["test"],
        "test_native": metrics["test_native"],
        "identity_test_native": metrics["identity_test_native"],
        "native_note": native_note(test.native, metrics["identity_test_native"]),
        "references": references,
        "export_dir": best_dir.name,
        "card": card,
    }


def native_note(native: NativeScores | None, identity: dict[str, float] | None) -> str | None:
    """One line when, at the images' own size, the model does not beat output = input on test SSIM
    (it can beat it at the model's size and lose it to the resize back)."""
    if native is None or identity is None or native.metrics["test_ssim"] > identity["test_ssim"]:
        return None
    return (
        f"at the images' own size ({native.describe_sizes()}) the model does NOT beat the identity baseline: "
        f"test SSIM {native.metrics['test_ssim']:.4f} against {identity['test_ssim']:.4f}"
    )


def write_summary(
    out_dir: Path,
    name: str,
    spec: SearchSpec,
    state: SearchState,
    trials: list[dict[str, Any]],
    best: dict[str, Any] | None,
    wall_seconds: float,
    wandb: dict[str, Any] | None,
) -> dict[str, Any]:
    cfg = spec.trial_config({})
    summary = {
        "name": name,
        "state": state,
        "metric": METRIC,
        "mode": MODE,
        "data": cfg.data,
        "fixed": spec.train,
        "space": {name: p.describe() for name, p in spec.space.items()},
        "search": spec.search.__dict__,
        "num_samples": spec.search.num_samples,
        "epochs": cfg.epochs,  # a full trial's, as ASHA's max_t and the end reasons used it
        "epochs_note": spec.describe_epochs(),
        "wall_seconds": wall_seconds,
        "wandb": wandb,
        "trials": trials,
        # with their test metrics where the search exported (that is where the test split is scored)
        "references": best["references"] if best else reference_records(trials, spec),
        "best": {k: v for k, v in best.items() if k not in ("card", "references")} if best else None,
    }
    write_json(out_dir / SUMMARY_FILE, summary)
    return summary


def described_values(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def render_summary(summary: dict[str, Any]) -> Table:
    counts: dict[str, int] = {}
    for trial in summary["trials"]:
        counts[trial["status"]] = counts.get(trial["status"], 0) + 1
    table = Table(
        title=f"{summary['name']}: {len(summary['trials'])} trials of up to {summary['epochs_note']} in "
        f"{summary['wall_seconds']:.0f} s ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))})",
        title_justify="left",
    )
    best = summary["best"]
    if best is None:
        table.add_column("result")
        table.add_row("no trial produced a result; see the reasons below")
        for trial in summary["trials"]:
            table.add_row(f"{trial['trial_id']}: {trial['reason']}")
        return table
    kind = f", {best['kind_label']}" if best.get("kind_label") else ""
    table.add_column(f"best trial {best['trial_id']}{kind} (epoch {best['epoch']})")
    for metric in METRICS:
        table.add_column(metric.label, justify="right")
    rows = []
    for split in ("val", "test"):
        rows.append((split, best[split], split))
        baseline = best.get(f"baseline_{split}")
        if baseline:
            rows.append((f"{split}, {BASELINE_LABELS[baseline['name']]} baseline", baseline, split))
        for reference in summary["references"].values():
            if reference.get(split):
                rows.append((f"{split}, {reference['label']} ({reference['trial_id']})", reference[split], split))
    if best.get("test_native"):
        rows.append(("test at the images' own size", best["test_native"], "test"))
    if best.get("identity_test_native"):
        rows.append(("test at the images' own size, identity baseline", best["identity_test_native"], "test"))
    for label, values, prefix in rows:
        table.add_row(label, *(f"{values[f'{prefix}_{m}']:.4f}" for m in ("ssim", "psnr", "mae")))
    params = described_values(best["params"])
    if best.get("schedule"):  # search.pbt: the exported weights trained with several sets of values
        params += "".join(
            f"\n  from epoch {row['epoch']}: {described_values({k: row[k] for k in best['params'] if k in row})}"
            for row in best["schedule"]
        )
    warning = f"[bold red]{best['native_note']}[/]\n" if best.get("native_note") else ""
    table.caption = f"{warning}params: {params}\nstopped or failed trials: " + "; ".join(
        f"{t['trial_id']} {t['status']}" for t in summary["trials"] if t["status"] != EndReason.FINISHED
    )
    return table
