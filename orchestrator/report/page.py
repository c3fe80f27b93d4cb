"""report.html: the experiment's data arranged for the one template, page.html.j2, and the file written.

The template renders with autoescape on, so every value from summary.json, the card or the W&B runs
reaches the page escaped; only the template's own markup is HTML. Images are base64 data URIs.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from orchestrator.outcomes import METRIC, SEARCH_METRIC
from orchestrator.report import plots
from orchestrator.report.load import Experiment, best_trial_id, load_experiment, param_names, scored, wandb_dir
from orchestrator.report.text import fmt
from orchestrator.spec import format_duration
from orchestrator.tracking.offline import WandbLogError, find_runs, read_run
from trainer.files import write_atomic_text
from trainer.names import BASELINE_LABELS, METRIC_NAMES, METRICS

REPORT = "report.html"
TEMPLATE = "page.html.j2"


@dataclass(frozen=True)
class Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[Any]]
    highlight: Sequence[bool] = ()  # rows drawn as the best trial's


@dataclass(frozen=True)
class Image:
    png: bytes
    alt: str
    caption: str = ""
    css_class: str = ""


@dataclass(frozen=True)
class Section:
    """One <section>: a title, then notes, images and tables in that order (a note alone when there is no data)."""

    title: str
    notes: list[str] = field(default_factory=list)
    images: list[Image] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    facts: list[tuple[str, str]] = field(default_factory=list)  # shown as code: commands and paths


def write_report(experiment_dir: Path) -> Path:
    """Write EXPERIMENT_DIR/report.html and return its path."""
    experiment = load_experiment(Path(experiment_dir))
    path = experiment.folder / REPORT
    write_atomic_text(path, render_report(experiment))  # a reader never sees half a report
    return path


def render_report(experiment: Experiment) -> str:
    summary = experiment.summary
    best_id = best_trial_id(summary)
    names = param_names(summary)
    sections = [
        curves_section(summary, best_id),
        references_section(summary),
        parameters_section(summary, names, best_id),
        importance_section(experiment.importances),
        samples_section(experiment.samples, best_id),
        test_metrics_section(summary.get("best")),
        trials_section(summary, names, best_id),
        *([card_section(experiment.card)] if experiment.card is not None else []),
        wandb_section(summary, experiment.folder),
    ]
    fixed = summary.get("fixed") or {}
    return template().render(
        name=summary["name"],
        facts=header_facts(summary, best_id),
        fixed=Table(["setting", "value"], sorted(fixed.items())) if fixed else None,
        sections=sections,
    )


@cache
def template() -> jinja2.Template:
    environment = jinja2.Environment(
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )
    environment.filters["fmt"] = fmt
    environment.filters["data_uri"] = lambda png: "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    environment.tests["number"] = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    return environment.from_string(resources.files(__package__).joinpath(TEMPLATE).read_text(encoding="utf-8"))


def header_facts(summary: dict[str, Any], best_id: str | None) -> list[tuple[str, str]]:
    trials = summary["trials"]
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.get("status", "?")] = counts.get(t.get("status", "?"), 0) + 1
    best = summary.get("best") or {}
    best_text = "none (no trial completed a validation)"
    if best_id is not None:
        val = (best.get("val") or {}).get(METRIC)
        trial = next((t for t in trials if str(t["trial_id"]) == best_id), {})
        ssim = val if val is not None else trial.get(SEARCH_METRIC)
        epoch = best.get("epoch", trial.get("best_epoch"))
        kind = f" ({best['kind_label']})" if best.get("kind_label") else ""
        best_text = f"{best_id}{kind}: val SSIM {fmt(ssim)} at epoch {fmt(epoch)}"
    return [
        ("Data", str(summary.get("data", "—"))),
        ("Trials", f"{len(trials)} ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))})"),
        ("Requested trials", str(summary.get("num_samples", "—"))),
        ("Wall time", format_duration(summary.get("wall_seconds"))),
        ("Objective", f"{summary.get('metric', 'val_ssim')} ({summary.get('mode', 'max')})"),
        ("Best trial", best_text),
    ]


def curves_section(summary: dict[str, Any], best_id: str | None) -> Section:
    title = "Validation SSIM per epoch"
    png = plots.plot_val_ssim(summary["trials"], best_id, val_ssim_lines(summary))
    if png is None:
        return Section(title, notes=["No trial completed an epoch."])
    caption = (
        "Each line is one trial, coloured and marked by how it ended (trials that ended early are drawn on top, "
        "with a marker on every epoch); the star is the best trial's best epoch. The axis starts at the "
        f"{plots.CURVES_LOW_QUANTILE:.0%} quantile of all epochs' values: lower early epochs run off the bottom, "
        "and a trial that ended below it has its end marker on the bottom edge. Dashed lines: the val SSIM of the "
        "baseline and the best val SSIM of the reference trials (the paper's settings, and the same without the "
        "discriminator); a trial under the baseline has learned nothing useful."
    )
    return Section(title, images=[Image(png, "validation SSIM per epoch for every trial", caption)])


def val_ssim_lines(summary: dict[str, Any]) -> list[tuple[str, float]]:
    """(label, val SSIM) of the baseline and of each reference trial's best epoch, those known."""
    baseline = (summary.get("best") or {}).get("baseline_val") or {}
    lines = []
    if baseline.get(METRIC) is not None:
        lines.append((f"{BASELINE_LABELS[baseline['name']]} baseline", baseline[METRIC]))
    for record in (summary.get("references") or {}).values():
        value = (record.get("val") or {}).get(METRIC)
        if isinstance(value, (int, float)):
            lines.append((record["label"], value))
    return lines


def parameters_section(summary: dict[str, Any], names: list[str], best_id: str | None) -> Section:
    title = "Parameters"
    scatter = plots.plot_param_scatter(summary, names, best_id)
    if scatter is None:
        return Section(title, notes=["No trial with a validation SSIM to plot."])
    unscored = len(summary["trials"]) - len(scored(summary["trials"]))
    caption = (
        "Each searched parameter against the trial's best validation SSIM, coloured and marked by how the trial "
        "ended; the star is the best trial."
    )
    if unscored:
        caption += f" {unscored} trial(s) without a validation SSIM are not shown."
    images = [Image(scatter, "searched parameters against best validation SSIM", caption)]
    parallel = plots.plot_parallel_coordinates(summary, names)
    if parallel is not None:
        images.append(
            Image(
                parallel,
                "parallel coordinates of the searched parameters",
                "Parallel coordinates: one line per trial, coloured by its best validation SSIM.",
            )
        )
    return Section(title, images=images)


def importance_section(importances: dict[str, float] | str) -> Section:
    title = "Parameter importance"
    if isinstance(importances, str):
        return Section(title, notes=[importances])
    explanation = (
        "Optuna's default evaluator (PED-ANOVA) on the study in optuna.db: its trials that ended with a validation "
        "SSIM, valued by their best (the searched trials; the L1-only reference is not in the study). It measures "
        "how differently each parameter is distributed among the top trials compared with all of them. Few trials "
        "make this rough."
    )
    return Section(
        title,
        notes=[explanation],
        images=[Image(plots.plot_importances(importances), "parameter importance")],
        tables=[Table(["parameter", "importance"], list(importances.items()))],
    )


def samples_section(samples: bytes | None, best_id: str | None) -> Section:
    title = "Best trial's test samples"
    if samples is None:
        return Section(title, notes=["No best/samples.png was exported."])
    caption = f"Trial {best_id}: each row is one test image, input | output | target."
    return Section(title, images=[Image(samples, "input | output | target samples", caption, "samples")])


def test_metrics_section(best: dict[str, Any] | None) -> Section:
    """The best model against the baseline of its data: identity where output and input are
    comparable, otherwise the mean training target (trainer.names)."""
    title = "Test metrics against the baseline"
    if not best or not best.get("test"):
        return Section(title, notes=["No test metrics: the search exported no model."])
    test, baseline = best["test"], best.get("baseline_test") or {}
    label = f"{BASELINE_LABELS[baseline['name']]} baseline" if baseline else "baseline"
    rows = []
    for metric in METRICS:
        model, base = test.get(f"test_{metric.name}"), baseline.get(f"test_{metric.name}")
        diff = model - base if model is not None and base is not None else None
        wins = None if diff is None else ("yes" if metric.beats(model, base) else "no")
        rows.append((metric.label, metric.better, model, base, diff, wins))
    explanation = f"The {label} takes no training; a model that does not beat it has learned nothing useful."
    headers = ["metric", "better", "best model", label, "model − baseline", "beats baseline"]
    return Section(title, notes=[explanation], tables=[Table(headers, rows)])


def references_section(summary: dict[str, Any]) -> Section:
    """The best trial beside the reference trials every search runs first, on val and test: did the
    search find anything better than the paper's settings, and did the GAN beat plain L1 regression?"""
    title = "Best trial against the references"
    references = summary.get("references") or {}
    if not references:
        return Section(title, notes=["This search ran no reference trials (a summary from before they existed)."])
    best = summary.get("best") or {}
    rows = []
    if best:
        label = f"best trial (exported): {best['kind_label']}" if best.get("kind_label") else "best trial (exported)"
        status = next((t.get("status") for t in summary["trials"] if t["trial_id"] == best["trial_id"]), "")
        row = [label, best["trial_id"], status, best.get("epoch")]
        rows.append([*row, *metric_row(best, "val"), *metric_row(best, "test")])
    for record in references.values():
        row = [record["label"], record["trial_id"], record["status"], record["best_epoch"]]
        rows.append([*row, *metric_row(record, "val"), *metric_row(record, "test")])
    metrics = [f"{split} {m.label}" for split in ("val", "test") for m in METRICS]
    headers = ["", "trial", "status", "best epoch", *metrics]
    notes = [
        "The export is the best trial on val SSIM among all trials, the references included. Test metrics are "
        "scored after the search on each trial's best epoch; a reference without them had no saved generator."
    ]
    return Section(title, notes=notes, tables=[Table(headers, rows, [i == 0 and bool(best) for i in range(len(rows))])])


def metric_row(record: dict[str, Any], split: str) -> list[Any]:
    """SSIM, PSNR and MAE of a split in a summary record (its `val` or `test` entry), None where unknown."""
    values = record.get(split) or {}
    return [values.get(f"{split}_{m}") for m in METRIC_NAMES]


def trials_section(summary: dict[str, Any], names: list[str], best_id: str | None) -> Section:
    trials = sorted(summary["trials"], key=lambda t: (t.get(SEARCH_METRIC) is None, -(t.get(SEARCH_METRIC) or 0.0)))
    headers = ["trial", "status", *names, "epochs run", "best val SSIM", "best epoch", "reason"]
    rows = [
        [
            t["trial_id"],
            t.get("status"),
            *(t.get("params", {}).get(n) for n in names),
            t.get("epochs"),
            t.get(SEARCH_METRIC),
            t.get("best_epoch"),
            retried(t.get("reason", ""), t.get("retries", [])),
        ]
        for t in trials
    ]
    return Section("All trials", tables=[Table(headers, rows, [str(t["trial_id"]) == best_id for t in trials])])


def retried(reason: str, retries: list[str]) -> str:
    """The end reason, and the failed attempts Tune retried before it (a lost node, a crash)."""
    if not retries:
        return reason
    return f"{reason} (after {len(retries)} failed attempt{'s' if len(retries) > 1 else ''}: {'; '.join(retries)})"


def card_section(card: dict[str, Any]) -> Section:
    rows = [(key, compact(value)) for key, value in card.items()]
    return Section("Exported model (best/model_card.json)", tables=[Table(["field", "value"], rows)])


def compact(value: Any) -> str:
    """A model-card value on one line: nested dicts as key=value, lists comma-separated, numbers rounded."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={compact(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(compact(v) for v in value)
    return fmt(value)


def wandb_section(summary: dict[str, Any], experiment_dir: Path) -> Section:
    title = "Weights & Biases"
    info = summary.get("wandb")
    if not info:
        return Section(title, notes=["W&B logging was off for this search."])
    facts = [("mode", str(info.get("mode", "—"))), ("folder", str(info.get("dir", "—")))]
    if info.get("mode") == "offline" and info.get("sync_command"):
        facts.append(("upload with (from the experiment folder)", str(info["sync_command"])))
    runs = logged_runs_table(wandb_dir(summary, experiment_dir))
    if runs is None:
        return Section(title, facts=facts, notes=["No offline W&B runs found on disk."])
    return Section(title, facts=facts, tables=[runs])


def logged_runs_table(folder: Path | None) -> Table | None:
    """What the offline runs on disk recorded, read back from their logs."""
    runs = find_runs(folder) if folder is not None and folder.is_dir() else []
    if not runs:
        return None
    rows: list[tuple[Any, ...]] = []
    for run_dir in runs:
        try:
            run = read_run(run_dir)
        except WandbLogError as err:
            rows.append((run_dir.name, "unreadable", str(err), "", "", ""))
            continue
        rows.append(
            (
                run.name,
                run.job_type,
                len(run.history),
                len(run.image_files),
                ", ".join(f"{a.name} ({a.type})" for a in run.artifacts),
                run.summary.get("end_reason", ""),
            )
        )
    return Table(["run", "job type", "steps logged", "images", "artifacts", "end reason"], rows)
