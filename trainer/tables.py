"""Metric tables for people at a terminal: a model beside its baseline, and volumes per subject."""

from __future__ import annotations

from rich.table import Table

from trainer.evaluation import VolumeScores
from trainer.names import BASELINE_LABELS, METRIC_BY_NAME, METRICS


def comparison_table(
    title: str,
    model: dict[str, float],
    baseline: dict[str, float] | None,
    prefix: str,
    baseline_label: str = "identity (output = input)",
) -> Table:
    """Model metrics next to a baseline (by default identity: output = input), when there is one."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("model", justify="right")
    if baseline is not None:
        table.add_column(baseline_label, justify="right")
        table.add_column("model better?", justify="center")
    for metric in METRICS:
        key = f"{prefix}_{metric.name}"
        row = [metric.label, f"{model[key]:.4f}"]
        if baseline is not None:
            better = metric.beats(model[key], baseline[key])
            row += [f"{baseline[key]:.4f}", "[green]yes[/green]" if better else "[red]no[/red]"]
        table.add_row(*row)
    return table


def volume_table(scores: VolumeScores, title: str) -> Table:
    """One row per subject and the mean: MAE (the headline number), PSNR, SSIM, each beside the baseline."""
    metrics = [METRIC_BY_NAME[name] for name in ("mae", "psnr", "ssim")]
    table = Table(title=f"{title}; base = {BASELINE_LABELS[scores.baseline_name]}")
    table.add_column("subject")
    for metric in metrics:
        table.add_column(metric.label, justify="right")
        table.add_column("base", justify="right")
    rows = [(subject, scores.model[subject], scores.baseline[subject]) for subject in scores.model]
    rows.append(("mean", scores.mean(scores.model), scores.mean(scores.baseline)))
    for subject, model, baseline in rows:
        table.add_row(subject, *(f"{values[m.name]:.4g}" for m in metrics for values in (model, baseline)))
    return table
