"""A live rich table of the search's trials, in place of Ray Tune's raw status tables."""

from __future__ import annotations

from typing import Any

from ray import tune
from rich.console import Console
from rich.live import Live
from rich.table import Table

from orchestrator.outcomes import METRIC, end_reason
from orchestrator.trials.endings import TrialEndings

SHOWN_PARAMS = ("lambda_l1", "dropout", "lr_G", "lr_D")
STATUS_STYLE = {"RUNNING": "cyan", "TERMINATED": "green", "ERROR": "red", "PENDING": "dim", "PAUSED": "yellow"}


TABLE_WIDTH = 120  # wide enough for every column even where rich cannot ask the terminal (CI logs)
TABLE_CHROME_LINES = 8  # title, header, borders and caption around the rows
RUNNING_FIRST = {"RUNNING": 0, "PAUSED": 1, "TERMINATED": 2, "ERROR": 3, "PENDING": 4}


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1e}" if 0 < abs(value) < 1e-2 else f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return "" if value is None else str(value)


class LiveTrialTable(tune.Callback):
    """A table kept live in a terminal; elsewhere (CI logs, files) one line per event, and the full
    table at the end. Pickled with Tune's experiment state, so the console objects are created lazily
    and dropped on pickling.

    The live table is drawn by rich's refresh thread (2 per second), never per event, and holds only
    the rows the screen shows: running trials first, then the best ended ones. Rendering all 500
    rows of a large search took 360 ms, each time, holding the GIL that Tune's event loop needs."""

    def __init__(self, params: tuple[str, ...], epochs: int, endings: TrialEndings) -> None:
        self.params = tuple(p for p in SHOWN_PARAMS if p in params) + tuple(p for p in params if p not in SHOWN_PARAMS)
        self.epochs = epochs
        self._console: Console | None = None
        self._live: Live | None = None
        self._trials: list[Any] = []  # Tune's trial list, as of the last event; the live table reads it
        # Tune calls on_trial_complete / on_trial_error before it sets the trial's final status, and
        # neither when the time budget ends the search: the endings record says what happened.
        self.endings = endings

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_console": None, "_live": None, "_trials": []}

    @property
    def console(self) -> Console:
        if self._console is None:
            self._console = Console(width=max(Console().width, TABLE_WIDTH))
        return self._console

    def status(self, trial: Any) -> str:
        """Why a trial ended, once it has."""
        ending = self.endings.ended.get(trial.trial_id)
        if ending is None:
            return trial.status.lower()
        result = trial.last_result or {}
        return end_reason(result.get("epoch", 0), self.epochs, bool(result.get("plateau_stop")), ending)

    def table(self, trials: list[Any], max_rows: int | None = None) -> Table:
        table = Table(title="pix2pix-tune search", title_justify="left", expand=False)
        if max_rows is not None and len(trials) > max_rows:
            counts: dict[str, int] = {}
            for trial in trials:
                counts[trial.status.lower()] = counts.get(trial.status.lower(), 0) + 1
            table.caption = f"{max_rows} of {len(trials)} trials shown (running, then the best): " + ", ".join(
                f"{n} {status}" for status, n in sorted(counts.items())
            )
            trials = sorted(
                trials,
                key=lambda t: (RUNNING_FIRST.get(t.status, 5), -(t.last_result or {}).get("best_val_ssim", -1)),
            )[:max_rows]
        for column in ("trial", "status", *self.params, "epoch", "val SSIM", "best"):
            table.add_column(column, justify="left" if column in ("trial", "status") else "right")
        best_overall = max((t.last_result.get("best_val_ssim", -1) for t in trials if t.last_result), default=None)
        for trial in trials:
            result = trial.last_result or {}
            best = result.get("best_val_ssim")
            table.add_row(
                trial.trial_id,
                f"[{STATUS_STYLE.get(trial.status, '')}]{self.status(trial)}[/]",
                *(format_value(trial.config.get(p)) for p in self.params),
                f"{result.get('epoch', 0)}/{self.epochs}",
                format_value(result.get(METRIC)),
                ("[bold green]" if best is not None and best == best_overall else "") + format_value(best),
            )
        return table

    def screen_table(self) -> Table:
        return self.table(self._trials, max(1, self.console.height - TABLE_CHROME_LINES))

    def redraw(self, trials: list[Any], line: str) -> None:
        self._trials = trials
        if not self.console.is_terminal:
            self.console.print(line, highlight=False)
        elif self._live is None:
            self._live = Live(console=self.console, refresh_per_second=2, get_renderable=self.screen_table)
            self._live.start()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        params = ", ".join(f"{p}={format_value(trial.config.get(p))}" for p in self.params)
        # A trial that reported before goes on: a retry, a resumed search, or its turn again under PBT
        # (maybe from another trial's checkpoint, with new values)
        verb = "continues" if trial.has_reported_at_least_once else "started"
        self.redraw(trials, f"trial {trial.trial_id} {verb}: {params}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        line = (
            f"trial {trial.trial_id} epoch {result.get('epoch')}/{self.epochs}: "
            f"val SSIM {format_value(result.get('val_ssim'))} (best {format_value(result.get('best_val_ssim'))})"
        )
        self.redraw(trials, line)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.redraw(trials, f"trial {trial.trial_id} {self.status(trial)}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.redraw(trials, f"trial {trial.trial_id} {self.status(trial)}")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self._live is not None:  # the last live frame goes; the full table stays on the screen
            self._live.transient = True
            self._live.stop()
            self._live = None
        self.console.print(self.table(trials))
