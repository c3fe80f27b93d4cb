"""The report's plots, each a PNG (bytes): val SSIM per epoch, parameters against best val SSIM,
parallel coordinates and parameter importance. Trials are coloured and marked by how they ended."""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from orchestrator.outcomes import METRIC, SEARCH_METRIC, EndReason
from orchestrator.report.load import scored
from orchestrator.report.text import fmt


@dataclass(frozen=True)
class Style:
    color: str
    marker: str  # where the trial's line ends, and on each epoch of a trial that ended early


STATUS_STYLES = {
    EndReason.FINISHED: Style("#1b9e77", "o"),
    EndReason.STOPPED_ASHA: Style("#7570b3", "v"),
    EndReason.STOPPED_PLATEAU: Style("#d95f02", "s"),
    EndReason.STOPPED_BUDGET: Style("#66a61e", "D"),
    EndReason.INTERRUPTED: Style("#a6761d", "P"),
    EndReason.FAILED: Style("#e7298a", "X"),
}
OTHER_STYLE = Style("#888888", "o")
BEST_STAR = {"marker": "*", "color": "gold", "markeredgecolor": "black", "markersize": 16}
# The val SSIM axis starts at this quantile of all epochs' values: early epochs of every trial sit far
# below the good trials, and scaling to them squeezes the trials that matter into the top of the plot.
CURVES_LOW_QUANTILE = 0.25
LINE_DASHES = ("-.", "--", ":")  # the baseline, the paper's settings, L1 only: val SSIM as horizontal lines


def style(status: str) -> Style:
    return STATUS_STYLES.get(status, OTHER_STYLE)


def status_handles(statuses: Iterable[str]) -> list[Line2D]:
    present = set(statuses)
    order = [s for s in STATUS_STYLES if s in present] + sorted(present - set(STATUS_STYLES))
    return [Line2D([], [], color=style(s).color, marker=style(s).marker, linestyle="", label=s) for s in order]


def figure_png(fig: Figure) -> bytes:
    """Figures are built without pyplot: no global state, no display; PNG output renders with Agg."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def is_categorical(spec: dict[str, Any] | None, values: list[Any]) -> bool:
    if spec is not None:
        return spec.get("type") == "categorical"
    return any(isinstance(v, str) or isinstance(v, bool) for v in values)


def category_positions(spec: dict[str, Any] | None, values: list[Any]) -> list[Any]:
    """The categories in the space's order (or first-seen order), used as positions 0..n-1."""
    choices = list((spec or {}).get("choices") or [])
    return choices + [v for v in dict.fromkeys(values) if v not in choices]


def short_number(value: float, _position: object = None) -> str:
    """Tick labels as short as the value allows (1e-05, 0.0003, 50): long decimals overlap."""
    return f"{value:g}"


def curves_y_limits(curves: list[list[float]], lines: Sequence[float] = ()) -> tuple[float, float]:
    """From the low quantile of the curves' values to their top, widened to show every line (the
    baseline above all: trials far under it is the plot's message, not something to clip away)."""
    values = np.concatenate([np.asarray(c, dtype=float) for c in curves])
    low, high = float(np.quantile(values, CURVES_LOW_QUANTILE)), float(values.max())
    low, high = min([low, *lines]), max([high, *lines])
    pad = 0.06 * (high - low) or 0.01
    return low - pad, high + pad


def plot_val_ssim(
    trials: list[dict[str, Any]],
    best_id: str | None,
    lines: list[tuple[str, float]],
) -> bytes | None:
    """Every trial's val SSIM per epoch; `lines` (label, value) are drawn across as dashed lines: the
    baseline's and the reference trials' val SSIM, so one sees which trials learned anything."""
    curves = [(t, [h for h in t.get("history", []) if isinstance(h.get(METRIC), (int, float))]) for t in trials]
    curves = [(t, h) for t, h in curves if h]
    if not curves:
        return None
    fig = Figure(figsize=(10, 4.8), layout="constrained")
    ax = fig.subplots()
    low, high = curves_y_limits([[h[METRIC] for h in history] for _, history in curves], [v for _, v in lines])
    for trial, history in curves:
        epochs = [h["epoch"] for h in history]
        values = [h[METRIC] for h in history]
        status = trial.get("status", "")
        is_best = str(trial["trial_id"]) == best_id
        look = style(status)
        color = "black" if is_best else look.color
        ended_early = status != EndReason.FINISHED
        # Finished trials underneath, trials that ended early on top with a marker on every epoch
        # (a short line hides under the long ones otherwise), the best trial above all.
        ax.plot(
            epochs,
            values,
            color=color,
            linewidth=2.5 if is_best else 1.2,
            alpha=1.0 if is_best else 0.8,
            marker=look.marker if ended_early else None,
            markersize=3.5,
            zorder=4 if is_best else 3 if ended_early else 2,
        )
        end = min(max(values[-1], low), high)  # an end below the axis sits on its edge, still visible
        ax.plot(
            epochs[-1],
            end,
            marker=look.marker,
            color=color,
            markeredgecolor="white",
            markersize=8,
            zorder=5,
            clip_on=False,
        )
        if is_best and trial.get("best_epoch") in epochs:
            ax.plot(trial["best_epoch"], values[epochs.index(trial["best_epoch"])], zorder=6, **BEST_STAR)
    handles = status_handles(t.get("status", "") for t, _ in curves)
    for (label, value), dash in zip(lines, LINE_DASHES):
        ax.axhline(value, color="0.35", linestyle=dash, linewidth=1.2, zorder=1)  # within the limits: they include it
        handles.append(Line2D([], [], color="0.35", linestyle=dash, label=f"{label}: {value:.3f}"))
    ax.set_ylim(low, high)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation SSIM")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    if best_id is not None:
        handles.append(Line2D([], [], color="black", linewidth=2.5, label=f"best trial ({best_id})"))
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, title="how the trial ended", title_fontsize=8)
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
    # finished trials first, so the markers of trials that ended early are drawn over them
    trials = sorted(trials, key=lambda t: t.get("status") != EndReason.FINISHED)
    for ax, name in zip(axes.flat, names, strict=False):  # axes beyond the names stay hidden
        present = [t for t in trials if name in t.get("params", {})]
        xs = scatter_axis(ax, space.get(name), [t["params"][name] for t in present])
        for x, t in zip(xs, present, strict=True):
            look = style(t.get("status", ""))
            ax.plot(
                [x],
                [t[SEARCH_METRIC]],
                linestyle="",
                marker=look.marker,
                markersize=7,
                color=look.color,
                markeredgecolor="white",
            )
            if str(t["trial_id"]) == best_id:
                ax.plot([x], [t[SEARCH_METRIC]], zorder=3, **BEST_STAR)
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
    if (spec or {}).get("log") and low > 0:
        ax.set_xscale("log")
        decades = math.log10(high / low)
        # at most six short labels whatever the range: 1-2-5 within a decade or so, 1-3 up to three, decades beyond
        subs = (1.0, 2.0, 5.0) if decades <= 1.2 else (1.0, 3.0) if decades <= 3 else (1.0,)
        ax.xaxis.set_major_locator(LogLocator(subs=subs, numticks=6))
        ax.xaxis.set_major_formatter(FuncFormatter(short_number))
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
    scores = [t[SEARCH_METRIC] for t in trials]
    lo, hi = min(scores), max(scores)
    columns = {n: [t["params"][n] for t in trials] for n in names}
    fig = Figure(figsize=(max(6, 1.8 * (len(names) + 1)), 4))
    ax = fig.subplots()
    cmap = matplotlib.colormaps["viridis"]
    for order in np.argsort(scores):  # best drawn last, on top
        trial = trials[order]
        ys = [axis_position(trial["params"][n], space.get(n), columns[n]) for n in names]
        ys.append(0.5 if hi == lo else (trial[SEARCH_METRIC] - lo) / (hi - lo))
        ax.plot(range(len(ys)), ys, color=cmap(ys[-1]), alpha=0.85, linewidth=1.5)
    labels = []
    for n in names:
        spec = space.get(n)
        if is_categorical(spec, columns[n]):
            labels.append(f"{n}\n{' / '.join(map(str, category_positions(spec, columns[n])))}")
        else:
            low = spec.get("low", min(columns[n])) if spec else min(columns[n])
            high = spec.get("high", max(columns[n])) if spec else max(columns[n])
            log = " (log)" if spec and spec.get("log") else ""
            labels.append(f"{n}{log}\n{fmt(low, 3)} .. {fmt(high, 3)}")
    labels.append(f"best val SSIM\n{fmt(lo)} .. {fmt(hi)}")
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_yticks([0, 1], ["low", "high"])
    for x in range(len(labels)):
        ax.axvline(x, color="#999", linewidth=0.8)
    ax.set_ylim(-0.05, 1.05)
    fig.colorbar(ScalarMappable(norm=Normalize(lo, hi), cmap=cmap), ax=ax, label="best val SSIM")
    return figure_png(fig)


def plot_importances(importances: dict[str, float]) -> bytes:
    names = list(importances)[::-1]  # largest on top
    fig = Figure(figsize=(6, 0.5 * len(names) + 1))
    ax = fig.subplots()
    ax.barh(names, [importances[n] for n in names], color="#4c72b0")
    ax.set_xlabel("importance (sums to 1)")
    ax.set_xlim(0, 1)
    ax.grid(axis="x", alpha=0.3)
    return figure_png(fig)
