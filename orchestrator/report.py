"""One self-contained HTML page per search: `python -m orchestrator.report EXPERIMENT_DIR [--wandb MODE]`.

Reads the experiment's summary.json (written by the search at its end), best/model_card.json and
best/samples.png, and writes EXPERIMENT_DIR/report.html: every plot and image is embedded as a
base64 PNG, there is no external CSS or JavaScript, so the file can be mailed or archived alone.
With `--wandb online` it also builds a W&B Report of the same search (needs the network and the
wandb-workspaces package; without them it says so in one line and writes the HTML anyway).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import html
import io
import json
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import optuna
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

from orchestrator.wandb_logging import MODES, api_key_configured, server_reachable, sync_command, wandb_base_url
from orchestrator.wandb_offline import WandbLogError, find_runs, read_run
from trainer.errors import UserError, exits_cleanly_on_user_error

SUMMARY = "summary.json"
REPORT = "report.html"
CARD = Path("best") / "model_card.json"
SAMPLES = Path("best") / "samples.png"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METRIC = "best_val_ssim"
STATUS_COLORS = {
    "finished": "#1b9e77",
    "stopped_asha": "#7570b3",
    "stopped_plateau": "#d95f02",
    "failed": "#e7298a",
}
OTHER_STATUS_COLOR = "#888888"
MIN_TRIALS_FOR_IMPORTANCE = 4  # below this PED-ANOVA's top-10% quantile is one trial: noise, not importance
TEST_METRICS = (("SSIM", "test_ssim", "higher"), ("PSNR (dB)", "test_psnr", "higher"), ("MAE", "test_mae", "lower"))
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.6em; text-align: left; }
th { background: #f4f4f4; } tr.best td { background: #fff6d5; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; } img.samples { min-width: min(480px, 100%); image-rendering: pixelated; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: 0.9em; }
code { background: #f4f4f4; padding: 0.1em 0.3em; word-break: break-all; } .note { color: #555; }
"""


# ---------------------------------------------------------------------------------------------
# loading


def load_summary(experiment_dir: Path) -> dict[str, Any]:
    """The search's summary.json, checked enough that every section below can rely on its shape."""
    experiment_dir = Path(experiment_dir)
    if not experiment_dir.is_dir():
        raise UserError(f"{experiment_dir}: experiment folder not found")
    path = experiment_dir / SUMMARY
    if not path.is_file():
        raise UserError(f"{path}: not found; is {experiment_dir} the folder of a finished search?")
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("trials"), list) or "name" not in summary:
        raise UserError(f"{path}: not a search summary (needs at least name and a trials list)")
    bad = [i for i, t in enumerate(summary["trials"]) if not isinstance(t, dict) or "trial_id" not in t]
    if bad:
        raise UserError(f"{path}: trials[{bad[0]}] is not a trial entry (needs trial_id)")
    return summary


def load_card(experiment_dir: Path) -> dict[str, Any] | None:
    path = Path(experiment_dir) / CARD
    try:
        card = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return card if isinstance(card, dict) else None


def load_png(path: Path) -> bytes | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return data if data.startswith(PNG_MAGIC) else None


# ---------------------------------------------------------------------------------------------
# small HTML helpers: everything that reaches the page passes through esc()


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """Values for people: None as a dash, floats to `digits` decimals (significant digits when tiny or huge)."""
    if value is None:
        return "—"
    if not isinstance(value, float) or not math.isfinite(value):
        return str(value)
    if abs(value) < 1e-3 or abs(value) >= 1e5:
        return f"{value:.{digits}g}"
    return f"{value:.{digits}f}".rstrip("0").rstrip(".")


def html_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], highlight: Sequence[bool] | None = None) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cells = "".join(
            f'<td class="num">{esc(fmt(v))}</td>'
            if isinstance(v, (int, float)) and not isinstance(v, bool)
            else f"<td>{esc(fmt(v))}</td>"
            for v in row
        )
        cls = ' class="best"' if highlight is not None and highlight[i] else ""
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure(png: bytes, alt: str, caption: str, css_class: str = "") -> str:
    cls = f' class="{esc(css_class)}"' if css_class else ""
    img = f'<img{cls} src="{png_data_uri(png)}" alt="{esc(alt)}">'
    return f"<figure>{img}<figcaption>{esc(caption)}</figcaption></figure>"


def section(title: str, body: str) -> str:
    return f"<section><h2>{esc(title)}</h2>{body}</section>"


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def figure_png(fig: Figure) -> bytes:
    """Figures are built without pyplot: no global state, no display; PNG output renders with Agg."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


# ---------------------------------------------------------------------------------------------
# the search's data, as the sections need it


def scored(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trials that reached at least one validation: the only ones with a value to plot or rank."""
    return [t for t in trials if isinstance(t.get(METRIC), (int, float)) and math.isfinite(t[METRIC])]


def best_trial_id(summary: dict[str, Any]) -> str | None:
    best = summary.get("best")
    if isinstance(best, dict) and best.get("trial_id") is not None:
        return str(best["trial_id"])
    ranked = scored(summary["trials"])
    return str(max(ranked, key=lambda t: t[METRIC])["trial_id"]) if ranked else None


def status_color(status: str) -> str:
    return STATUS_COLORS.get(status, OTHER_STATUS_COLOR)


def status_handles(statuses: Iterable[str]) -> list[Line2D]:
    return [Line2D([], [], color=status_color(s), marker="o", linestyle="", label=s) for s in sorted(set(statuses))]


BEST_STAR = {"marker": "*", "color": "gold", "markeredgecolor": "black", "markersize": 16}


def param_names(summary: dict[str, Any]) -> list[str]:
    """Searched parameters: the space's order, then any a trial has that the space does not name."""
    space = summary.get("space") or {}
    names = list(space)
    for trial in summary["trials"]:
        names += [p for p in trial.get("params", {}) if p not in names]
    return names


def is_categorical(spec: dict[str, Any] | None, values: list[Any]) -> bool:
    if spec is not None:
        return spec.get("type") == "categorical"
    return any(isinstance(v, str) or isinstance(v, bool) for v in values)


def category_positions(spec: dict[str, Any] | None, values: list[Any]) -> list[Any]:
    """The categories in the space's order (or first-seen order), used as x positions 0..n-1."""
    choices = list((spec or {}).get("choices") or [])
    return choices + [v for v in dict.fromkeys(values) if v not in choices]


# ---------------------------------------------------------------------------------------------
# plots


def plot_val_ssim(trials: list[dict[str, Any]], best_id: str | None) -> bytes | None:
    curves = [(t, [h for h in t.get("history", []) if isinstance(h.get("val_ssim"), (int, float))]) for t in trials]
    curves = [(t, h) for t, h in curves if h]
    if not curves:
        return None
    fig = Figure(figsize=(9, 4.5))
    ax = fig.subplots()
    for trial, history in curves:
        epochs = [h["epoch"] for h in history]
        values = [h["val_ssim"] for h in history]
        is_best = str(trial["trial_id"]) == best_id
        color = "black" if is_best else status_color(trial.get("status", ""))
        ax.plot(
            epochs,
            values,
            color=color,
            linewidth=2.5 if is_best else 1.2,
            alpha=1.0 if is_best else 0.75,
            zorder=3 if is_best else 2,
        )
        if trial.get("status") != "finished":  # where a stopped or failed trial ended
            ax.plot(epochs[-1], values[-1], marker="x", color=color, markersize=7)
        if is_best and trial.get("best_epoch") in epochs:
            ax.plot(trial["best_epoch"], values[epochs.index(trial["best_epoch"])], zorder=4, **BEST_STAR)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation SSIM")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    handles = status_handles(t.get("status", "") for t, _ in curves)
    handles.append(Line2D([], [], color="gray", marker="x", linestyle="", label="trial ended early"))
    if best_id is not None:
        handles.append(Line2D([], [], color="black", linewidth=2.5, label=f"best trial ({best_id})"))
    ax.legend(handles=handles, fontsize=8, loc="lower right")
    return figure_png(fig)


def plot_param_scatter(summary: dict[str, Any], names: list[str], best_id: str | None) -> bytes | None:
    trials = scored(summary["trials"])
    if not trials or not names:
        return None
    space = summary.get("space") or {}
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    for ax, name in zip(axes.flat, names, strict=False):  # axes beyond the names stay hidden
        present = [t for t in trials if name in t.get("params", {})]
        xs = scatter_axis(ax, space.get(name), [t["params"][name] for t in present])
        ys = [t[METRIC] for t in present]
        ax.scatter(xs, ys, c=[status_color(t.get("status", "")) for t in present], s=40, edgecolors="white", zorder=2)
        for x, y, t in zip(xs, ys, present, strict=True):
            if str(t["trial_id"]) == best_id:
                ax.plot([x], [y], zorder=3, **BEST_STAR)
        ax.set_xlabel(name)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("best val SSIM")
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    handles = status_handles(t.get("status", "") for t in trials)
    if best_id is not None:
        handles.append(Line2D([], [], linestyle="", label="best trial", **BEST_STAR))
    fig.legend(handles=handles, loc="outside upper center", ncols=len(handles), fontsize=8)
    return figure_png(fig)


def scatter_axis(ax: Axes, spec: dict[str, Any] | None, values: list[Any]) -> list[float]:
    """Set up one parameter's x axis (categories, log or linear over the searched range); the x positions."""
    if is_categorical(spec, values):
        categories = category_positions(spec, values)
        ax.set_xticks(range(len(categories)), [str(c) for c in categories])
        ax.set_xlim(-0.5, len(categories) - 0.5)
        # a small fixed offset per trial keeps trials of one category from hiding each other
        return [categories.index(v) + 0.08 * ((i % 5) - 2) for i, v in enumerate(values)]
    low, high = (spec or {}).get("low", min(values)), (spec or {}).get("high", max(values))
    if (spec or {}).get("log"):
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlim(low / 1.15, high * 1.15)
    elif high > low:
        margin = 0.05 * (high - low)
        ax.set_xlim(low - margin, high + margin)
    return list(values)


def axis_position(value: Any, spec: dict[str, Any] | None, column: list[Any]) -> float:
    """A parameter value mapped to [0, 1] along its parallel-coordinates axis."""
    if is_categorical(spec, column):
        categories = category_positions(spec, column)
        return categories.index(value) / max(1, len(categories) - 1)
    transform = np.log10 if spec and spec.get("log") else (lambda v: v)
    low = spec.get("low", min(column)) if spec else min(column)
    high = spec.get("high", max(column)) if spec else max(column)
    lo, hi = float(transform(low)), float(transform(high))
    return 0.5 if hi == lo else (float(transform(value)) - lo) / (hi - lo)


def plot_parallel_coordinates(summary: dict[str, Any], names: list[str]) -> bytes | None:
    trials = [t for t in scored(summary["trials"]) if all(n in t.get("params", {}) for n in names)]
    if len(trials) < 2 or not names:
        return None
    space = summary.get("space") or {}
    scores = [t[METRIC] for t in trials]
    lo, hi = min(scores), max(scores)
    columns = {n: [t["params"][n] for t in trials] for n in names}
    fig = Figure(figsize=(max(6, 1.8 * (len(names) + 1)), 4))
    ax = fig.subplots()
    cmap = matplotlib.colormaps["viridis"]
    for order in np.argsort(scores):  # best drawn last, on top
        trial = trials[order]
        ys = [axis_position(trial["params"][n], space.get(n), columns[n]) for n in names]
        ys.append(0.5 if hi == lo else (trial[METRIC] - lo) / (hi - lo))
        ax.plot(range(len(ys)), ys, color=cmap(ys[-1]), alpha=0.85, linewidth=1.5)
    labels = []
    for n in names:
        spec = space.get(n)
        if is_categorical(spec, columns[n]):
            labels.append(f"{n}\n{' / '.join(map(str, category_positions(spec, columns[n])))}")
        else:
            low = spec.get("low", min(columns[n])) if spec else min(columns[n])
            high = spec.get("high", max(columns[n])) if spec else max(columns[n])
            labels.append(f"{n}{' (log)' if spec and spec.get('log') else ''}\n{fmt(low, 3)} .. {fmt(high, 3)}")
    labels.append(f"best val SSIM\n{fmt(lo)} .. {fmt(hi)}")
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_yticks([0, 1], ["low", "high"])
    for x in range(len(labels)):
        ax.axvline(x, color="#999", linewidth=0.8)
    ax.set_ylim(-0.05, 1.05)
    fig.colorbar(ScalarMappable(norm=Normalize(lo, hi), cmap=cmap), ax=ax, label="best val SSIM")
    return figure_png(fig)


def param_importances(summary: dict[str, Any], names: list[str]) -> dict[str, float] | str:
    """Optuna's importances over the trials with a value, or a sentence saying why there are none.
    Failed trials are left out, as optuna.db holds them (FAIL, no value): the same trials as the study."""
    space = summary.get("space") or {}
    trials = [
        t
        for t in scored(summary["trials"])
        if t.get("status") != "failed" and all(n in t.get("params", {}) for n in names)
    ]
    if not names or not space:
        return "No searched parameters are recorded, so there is nothing to rank."
    if len(trials) < MIN_TRIALS_FOR_IMPORTANCE:
        return (
            f"Parameter importance needs at least {MIN_TRIALS_FOR_IMPORTANCE} trials with a validation SSIM; "
            f"this search has {len(trials)}."
        )
    if len({t[METRIC] for t in trials}) == 1:
        return "Every trial reached the same best validation SSIM, so no parameter made a difference to rank."
    try:
        distributions = {n: distribution(space[n]) for n in names if n in space}
        with quiet_optuna():
            study = optuna.create_study(direction="maximize")
        for t in trials:
            params = {n: t["params"][n] for n in distributions}
            study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=t[METRIC]))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            importances = optuna.importance.get_param_importances(study)
    except (ValueError, KeyError, TypeError) as err:
        return f"Parameter importance could not be computed: {err}"
    if any("importances will be equal" in str(w.message) for w in caught):
        return "The trials are too alike for Optuna to tell the parameters apart (it would rank them all equal)."
    return importances


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna announces every new study on stderr; a report has no use for that line."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def distribution(spec: dict[str, Any]) -> optuna.distributions.BaseDistribution:
    """A summary.json space entry as the Optuna distribution the search sampled from."""
    kind = spec.get("type")
    if kind == "float":
        return optuna.distributions.FloatDistribution(spec["low"], spec["high"], log=bool(spec.get("log")))
    if kind == "int":
        return optuna.distributions.IntDistribution(int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")))
    if kind == "categorical":
        return optuna.distributions.CategoricalDistribution(list(spec["choices"]))
    raise ValueError(f"unknown parameter type {kind!r}")


def plot_importances(importances: dict[str, float]) -> bytes:
    names = list(importances)[::-1]  # largest on top
    fig = Figure(figsize=(6, 0.5 * len(names) + 1))
    ax = fig.subplots()
    ax.barh(names, [importances[n] for n in names], color="#4c72b0")
    ax.set_xlabel("importance (sums to 1)")
    ax.set_xlim(0, 1)
    ax.grid(axis="x", alpha=0.3)
    return figure_png(fig)


# ---------------------------------------------------------------------------------------------
# sections


def header_section(summary: dict[str, Any], best_id: str | None) -> str:
    trials = summary["trials"]
    counts = {}
    for t in trials:
        counts[t.get("status", "?")] = counts.get(t.get("status", "?"), 0) + 1
    best = summary.get("best") or {}
    best_text = "none (no trial completed a validation)"
    if best_id is not None:
        val = (best.get("val") or {}).get("val_ssim")
        trial = next((t for t in trials if str(t["trial_id"]) == best_id), {})
        ssim = val if val is not None else trial.get(METRIC)
        epoch = best.get("epoch", trial.get("best_epoch"))
        best_text = f"{best_id}: val SSIM {fmt(ssim)} at epoch {fmt(epoch)}"
    facts = [
        ("Data", summary.get("data", "—")),
        ("Trials", f"{len(trials)} ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))})"),
        ("Requested trials", summary.get("num_samples", "—")),
        ("Wall time", format_duration(summary.get("wall_seconds"))),
        ("Objective", f"{summary.get('metric', 'val_ssim')} ({summary.get('mode', 'max')})"),
        ("Best trial", best_text),
    ]
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in facts)
    fixed = summary.get("fixed") or {}
    fixed_html = ""
    if fixed:
        fixed_html = (
            "<details><summary>Fixed training settings</summary>"
            + html_table(["setting", "value"], sorted(fixed.items()))
            + "</details>"
        )
    return f"<header><h1>Search report: {esc(summary['name'])}</h1><table>{rows}</table>{fixed_html}</header>"


def curves_section(summary: dict[str, Any], best_id: str | None) -> str:
    png = plot_val_ssim(summary["trials"], best_id)
    if png is None:
        return section("Validation SSIM per epoch", note("No trial completed an epoch."))
    caption = (
        "Each line is one trial, coloured by how it ended; x marks where a trial stopped early, "
        "the star the best trial's best epoch."
    )
    return section("Validation SSIM per epoch", figure(png, "validation SSIM per epoch for every trial", caption))


def parameters_section(summary: dict[str, Any], names: list[str], best_id: str | None) -> str:
    scatter = plot_param_scatter(summary, names, best_id)
    if scatter is None:
        return section("Parameters", note("No trial with a validation SSIM to plot."))
    unscored = len(summary["trials"]) - len(scored(summary["trials"]))
    caption = (
        "Each searched parameter against the trial's best validation SSIM, coloured by how the trial ended; "
        "the star is the best trial."
    )
    if unscored:
        caption += f" {unscored} trial(s) without a validation SSIM are not shown."
    body = figure(scatter, "searched parameters against best validation SSIM", caption)
    parallel = plot_parallel_coordinates(summary, names)
    if parallel is not None:
        body += figure(
            parallel,
            "parallel coordinates of the searched parameters",
            "Parallel coordinates: one line per trial, coloured by its best validation SSIM.",
        )
    return section("Parameters", body)


def importance_section(summary: dict[str, Any], names: list[str]) -> str:
    importances = param_importances(summary, names)
    title = "Parameter importance"
    if isinstance(importances, str):
        return section(title, note(importances))
    explanation = (
        "Optuna's default evaluator (PED-ANOVA) on the trials' best validation SSIM: how differently each "
        "parameter is distributed among the top trials compared with all trials. Few trials make this rough."
    )
    table = html_table(["parameter", "importance"], [(n, v) for n, v in importances.items()])
    return section(title, note(explanation) + figure(plot_importances(importances), "parameter importance", "") + table)


def samples_section(samples: bytes | None, best_id: str | None) -> str:
    if samples is None:
        return section("Best trial's test samples", note("No best/samples.png was exported."))
    caption = f"Trial {best_id}: each row is one test image, input | output | target."
    return section("Best trial's test samples", figure(samples, "input | output | target samples", caption, "samples"))


def test_metrics_section(best: dict[str, Any] | None) -> str:
    title = "Test metrics against the identity baseline"
    if not best or not best.get("test"):
        return section(title, note("No test metrics: the search exported no model."))
    test, identity = best["test"], best.get("identity_test") or {}
    rows = []
    for label, key, better in TEST_METRICS:
        model, base = test.get(key), identity.get(key)
        diff = model - base if model is not None and base is not None else None
        wins = None if diff is None else ("yes" if (diff > 0) == (better == "higher") and diff != 0 else "no")
        rows.append((label, better, model, base, diff, wins))
    explanation = (
        "The identity baseline outputs its input unchanged; a model that does not beat it has learned nothing useful."
    )
    headers = ["metric", "better", "best model", "identity baseline", "model − baseline", "beats baseline"]
    return section(title, note(explanation) + html_table(headers, rows))


def trials_section(summary: dict[str, Any], names: list[str], best_id: str | None) -> str:
    trials = sorted(summary["trials"], key=lambda t: (t.get(METRIC) is None, -(t.get(METRIC) or 0.0)))
    headers = ["trial", "status", *names, "epochs run", "best val SSIM", "best epoch", "reason"]
    rows = [
        [
            t["trial_id"],
            t.get("status"),
            *(t.get("params", {}).get(n) for n in names),
            t.get("epochs"),
            t.get(METRIC),
            t.get("best_epoch"),
            t.get("reason", ""),
        ]
        for t in trials
    ]
    return section("All trials", html_table(headers, rows, [str(t["trial_id"]) == best_id for t in trials]))


def card_section(card: dict[str, Any] | None) -> str:
    if card is None:
        return ""
    rows = [(key, compact(value)) for key, value in card.items()]
    return section("Exported model (best/model_card.json)", html_table(["field", "value"], rows))


def compact(value: Any) -> str:
    """A model-card value on one line: nested dicts as key=value, lists comma-separated, numbers rounded."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={compact(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(compact(v) for v in value)
    return fmt(value)


def wandb_section(summary: dict[str, Any], experiment_dir: Path) -> str:
    info = summary.get("wandb")
    if not info:
        return section("Weights & Biases", note("W&B logging was off for this search."))
    facts = [("mode", info.get("mode", "—")), ("folder", info.get("dir", "—"))]
    if info.get("mode") == "offline" and info.get("sync_command"):
        facts.append(("upload with (from the experiment folder)", info["sync_command"]))
    rows = "".join(f"<tr><th>{esc(k)}</th><td><code>{esc(v)}</code></td></tr>" for k, v in facts)
    return section("Weights & Biases", f"<table>{rows}</table>" + logged_runs_table(wandb_dir(summary, experiment_dir)))


def wandb_dir(summary: dict[str, Any], experiment_dir: Path) -> Path | None:
    folder = (summary.get("wandb") or {}).get("dir")
    if not folder:
        return None
    path = Path(folder)
    return path if path.is_absolute() else Path(experiment_dir) / path


def logged_runs_table(folder: Path | None) -> str:
    """What the offline runs on disk recorded, read back from their logs."""
    runs = find_runs(folder) if folder is not None and folder.is_dir() else []
    if not runs:
        return note("No offline W&B runs found on disk.")
    rows = []
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
    return html_table(["run", "job type", "steps logged", "images", "artifacts", "end reason"], rows)


def render_report(
    summary: dict[str, Any], card: dict[str, Any] | None, samples: bytes | None, experiment_dir: Path
) -> str:
    best_id = best_trial_id(summary)
    names = param_names(summary)
    sections = [
        header_section(summary, best_id),
        curves_section(summary, best_id),
        parameters_section(summary, names, best_id),
        importance_section(summary, names),
        samples_section(samples, best_id),
        test_metrics_section(summary.get("best")),
        trials_section(summary, names, best_id),
        card_section(card),
        wandb_section(summary, experiment_dir),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(summary['name'])}: search report</title><style>{STYLE}</style></head>"
        f"<body>{''.join(sections)}</body></html>\n"
    )


def write_report(experiment_dir: Path) -> Path:
    """Write EXPERIMENT_DIR/report.html and return its path."""
    experiment_dir = Path(experiment_dir)
    summary = load_summary(experiment_dir)
    page = render_report(summary, load_card(experiment_dir), load_png(experiment_dir / SAMPLES), experiment_dir)
    path = experiment_dir / REPORT
    tmp = path.with_name(f".{REPORT}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)  # a reader never sees half a report
    return path


# ---------------------------------------------------------------------------------------------
# the W&B Report (online only)


def build_wandb_report(summary: dict[str, Any], project: str, entity: str | None) -> Any:
    """The search as a W&B Report: its trial runs (the group) in a line plot, parameter views and media."""
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    group = summary["name"]
    space = summary.get("space") or {}
    names = param_names(summary)
    runset = wr.Runset(
        project=project,
        name=f"{group} trials",
        filters=[expr.Metric("Group") == group, expr.Metric("JobType") == "trial"],
        **({"entity": entity} if entity else {}),
    )
    log_scale = {n: bool((space.get(n) or {}).get("log")) for n in names}
    panels = [
        wr.LinePlot(title="Validation SSIM per epoch", y=["val_ssim"]),
        wr.ParallelCoordinatesPlot(
            columns=[wr.ParallelCoordinatesPlotColumn(metric=wr.Config(n), log=log_scale[n] or None) for n in names]
            + [wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(METRIC))],
        ),
        wr.ParameterImportancePlot(with_respect_to=METRIC),
        *(
            wr.ScatterPlot(
                title=f"{n} vs best val SSIM", x=wr.Config(n), y=wr.SummaryMetric(METRIC), log_x=log_scale[n] or None
            )
            for n in names
        ),
        wr.MediaBrowser(title="Validation samples: input | output | target", media_keys=["val_samples"]),
    ]
    intro = f"Search {group} on {summary.get('data', '?')}: {len(summary['trials'])} trials"
    blocks = [
        wr.P(text=f"{intro}; best trial {best_trial_id(summary) or 'none'}."),
        wr.PanelGrid(runsets=[runset], panels=panels),
    ]
    return wr.Report(
        project=project,
        title=f"Search {group}",
        description="Ray Tune + Optuna search of Pix2Pix hyperparameters",
        blocks=blocks,
        **({"entity": entity} if entity else {}),
    )


def wandb_project(summary: dict[str, Any], experiment_dir: Path) -> str | None:
    """The project the search logged to: from summary.json, else from the runs on disk."""
    info = summary.get("wandb") or {}
    if info.get("project"):
        return str(info["project"])
    folder = wandb_dir(summary, experiment_dir)
    for run_dir in find_runs(folder) if folder is not None and folder.is_dir() else []:
        try:
            return read_run(run_dir).project or None
        except WandbLogError:
            continue
    return None


def publish_wandb_report(summary: dict[str, Any], experiment_dir: Path) -> str | None:
    """Save the W&B Report and return its URL; otherwise print one line saying why not, and return None."""
    try:
        import wandb_workspaces.reports.v2  # noqa: F401 - only checking that it is installed
    except ImportError:
        print("W&B report skipped: the wandb-workspaces package is not installed (pip install wandb-workspaces)")
        return None
    url = wandb_base_url()
    project = wandb_project(summary, experiment_dir)
    if project is None:
        problem = "the W&B project of this search is unknown (no project in summary.json and no runs on disk)"
    elif not api_key_configured(url):
        problem = "no W&B API key is configured (run `wandb login`)"
    elif not server_reachable(url):
        problem = f"the W&B server {url} is unreachable"
    else:
        problem = None
    if problem is not None:
        print(f"W&B report skipped: {problem}; the HTML report is written anyway")
        return None
    entity = (summary.get("wandb") or {}).get("entity") or os.environ.get("WANDB_ENTITY")
    try:
        report = build_wandb_report(summary, project, entity)
        report.save()
    except Exception as err:  # any failure of the remote save: one line, the HTML report stands
        print(f"W&B report not saved: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        return None
    return str(report.url)


# ---------------------------------------------------------------------------------------------
# command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.report", description="Write EXPERIMENT_DIR/report.html for a finished search."
    )
    parser.add_argument("experiment_dir", type=Path, help="the search's experiment folder (it holds summary.json)")
    parser.add_argument(
        "--wandb",
        choices=MODES,
        default=None,
        help="online: also build a W&B Report of the search (needs the network); default: the search's own mode",
    )
    return parser.parse_args(argv)


@exits_cleanly_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    path = write_report(args.experiment_dir)
    print(f"report: {path}")
    summary = load_summary(args.experiment_dir)
    mode = args.wandb or (summary.get("wandb") or {}).get("mode", "off")
    if mode == "online":
        report_url = publish_wandb_report(summary, args.experiment_dir)
        if report_url:
            print(f"W&B report: {report_url}")
    elif mode == "offline" and summary.get("wandb"):
        print(f"W&B runs are offline; upload them with: {sync_command(Path(args.experiment_dir).resolve())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
