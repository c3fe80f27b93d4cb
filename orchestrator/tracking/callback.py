"""One W&B run per trial, written by the driver from what the trials report to Tune.

Logging from the driver rather than inside the trials is deliberate: Ray ends a trial that the
scheduler stops at once, and a W&B run living in that worker would lose what it had not flushed
(seen here: ASHA-stopped trials left empty offline runs). The driver sees every result, every
checkpoint (with its sample panel) and every ending, whatever the node the trial ran on.

The W&B work itself (opening a run: about a second; logging; decoding the panel PNG; finishing and
waiting for the log to reach disk) runs on one background thread. Tune calls its callbacks on its
event loop, and every second spent there delays every trial's next decision: opening runs inside
on_trial_result blocked it up to 2.1 s on each trial's first result. The callback methods only put
events on the thread's queue; one thread in arrival order keeps each trial's events in order.

The one thing read on Tune's loop is the panel file's bytes (tens of KB), when the checkpoint is
reported: the thread can be several epochs behind, and by then Tune (it keeps two checkpoints) or the
retention (at the trial's end) may have deleted the checkpoint, panel and all (seen: a 3-epoch
trial's run held only its last panel).
"""

from __future__ import annotations

import io
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from ray import tune

from orchestrator.outcomes import EPOCH_KEYS, PROGRESS_KEYS, Ending, end_reason, error_line
from orchestrator.results import saved_best
from orchestrator.tracking.runs import RunLogger, open_trial_logger
from orchestrator.trials.endings import TrialEndings
from orchestrator.trials.trainable import read_panel

LOGGED_KEYS = EPOCH_KEYS + PROGRESS_KEYS
PANEL_CAPTION = "input | output | target"
VALUES_PREFIX = "values/"
DRAIN_NOTICE_S = 1.0  # at the end, say what we wait for once the wait is long enough to notice
DRAIN_PROGRESS_EVERY_S = 10.0


# The events the callback hands to the worker thread, in the order Tune reported them.
@dataclass(frozen=True)
class OpenRun:
    trial_id: str
    config: dict[str, Any]


@dataclass(frozen=True)
class LogMetrics:
    trial_id: str
    metrics: dict[str, Any]
    epoch: int


@dataclass(frozen=True)
class LogPanel:
    trial_id: str
    png: bytes  # the panel file as saved; decoded on the worker thread, off Tune's loop
    epoch: int


@dataclass(frozen=True)
class FinishRun:
    trial_id: str
    summary: dict[str, Any]


Event = OpenRun | LogMetrics | LogPanel | FinishRun


class WandbWorker:
    """The thread that owns the open W&B runs and does all W&B and panel-file work, one event at a time."""

    def __init__(self, mode: str, project: str, group: str, wandb_dir: str) -> None:
        self.mode, self.project, self.group, self.wandb_dir = mode, project, group, wandb_dir
        self.events: queue.Queue[Event] = queue.Queue()
        self.runs: dict[str, RunLogger] = {}
        # daemon: a driver that dies must not hang on its logger; on_experiment_end drains it first
        self.thread = threading.Thread(target=self.work, name="wandb-trial-logger", daemon=True)
        self.thread.start()

    def work(self) -> None:
        while True:
            event = self.events.get()
            try:
                self.handle(event)
            except Exception as err:  # one failed W&B call must not stop the logging of every other trial
                print(f"warning: W&B {type(event).__name__} for trial {event.trial_id} failed: {err}", flush=True)
            finally:
                self.events.task_done()

    def handle(self, event: Event) -> None:
        if isinstance(event, OpenRun):
            self.runs[event.trial_id] = open_trial_logger(
                self.mode, self.project, self.group, event.trial_id, event.config, self.wandb_dir
            )
        elif isinstance(event, LogMetrics):
            self.runs[event.trial_id].log_metrics(event.metrics, epoch=event.epoch)
        elif isinstance(event, LogPanel):
            panel = np.asarray(Image.open(io.BytesIO(event.png)).convert("RGB"))
            self.runs[event.trial_id].log_image("val_samples", panel, epoch=event.epoch, caption=PANEL_CAPTION)
        else:
            self.runs.pop(event.trial_id).finish(event.summary)

    def drain(self) -> None:
        """Wait until every queued event is done, with a progress line when that takes a while."""
        started = time.monotonic()
        next_notice = started + DRAIN_NOTICE_S
        while self.events.unfinished_tasks:
            time.sleep(0.05)
            if time.monotonic() < next_notice:
                continue
            next_notice += DRAIN_PROGRESS_EVERY_S
            print(
                f"W&B: {self.events.qsize()} events still to write, {len(self.runs)} runs open "
                f"({time.monotonic() - started:.0f} s so far)",
                flush=True,
            )


class WandbTrialLogger(tune.Callback):
    """Pickled with Tune's experiment state, so the worker (its thread, queue and open runs) is dropped
    on pickling and started again on first use; a restored search reopens each trial's run (same run
    id, resumed) when the trial reports again."""

    def __init__(
        self,
        mode: str,
        project: str,
        group: str,
        wandb_dir: str,
        fixed: dict[str, Any],
        epochs: int,
        endings: TrialEndings,
        values: tuple[str, ...] = (),
    ):
        self.mode, self.project, self.group, self.wandb_dir = mode, project, group, wandb_dir
        self.fixed, self.epochs, self.endings = fixed, epochs, endings
        # Searched values charted every epoch as values/<name> (search.pbt changes them during a trial;
        # the run's config keeps the ones it started with)
        self.values = values
        self._worker: WandbWorker | None = None
        self._open: set[str] = set()  # trials whose run the worker has been told to open

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_worker": None, "_open": set()}

    def send(self, trial: Any, event: Event) -> None:
        if self._worker is None:
            self._worker = WandbWorker(self.mode, self.project, self.group, self.wandb_dir)
        if trial.trial_id not in self._open:
            self._open.add(trial.trial_id)
            config = {**self.fixed, **trial.config, "trial_id": trial.trial_id}
            self._worker.events.put(OpenRun(trial.trial_id, config))
        self._worker.events.put(event)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        metrics = {k: result[k] for k in LOGGED_KEYS if k in result}
        metrics.update({f"{VALUES_PREFIX}{name}": trial.config[name] for name in self.values if name in trial.config})
        self.send(trial, LogMetrics(trial.trial_id, metrics, epoch=int(result["epoch"])))

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        png = read_panel(checkpoint)  # now, while the checkpoint surely exists (module docstring)
        if png is not None:
            self.send(trial, LogPanel(trial.trial_id, png, epoch=int(trial.last_result.get("epoch", 0))))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.finish(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.finish(trial)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for trial in trials:  # the time budget or Ctrl-C ended these: no on_trial_complete came
            if trial.trial_id in self._open:
                self.finish(trial)
        if self._worker is not None:
            self._worker.drain()

    def finish(self, trial: Any) -> None:
        """Queue the run's end with its summary, taken now: the trial's record may change later."""
        result = trial.last_result or {}
        ending = self.endings.ended.get(trial.trial_id)
        reason = end_reason(result.get("epoch", 0), self.epochs, bool(result.get("plateau_stop")), ending)
        saved = trial.latest_checkpoint_result
        best_val_ssim, best_epoch = saved_best(saved.metrics if saved else None)
        summary = {
            "best_val_ssim": best_val_ssim,
            "best_epoch": best_epoch,
            "epochs": result.get("epoch", 0),
            # str: W&B would store the enum by its name (FINISHED), not its value
            "end_reason": str(reason),
        }
        if ending == Ending.ERROR:
            summary["error"] = error_line(trial.get_error())
        if trial.trial_id in self.endings.retries:
            summary["retries"] = len(self.endings.retries[trial.trial_id])
        self.send(trial, FinishRun(trial.trial_id, {k: v for k, v in summary.items() if v is not None}))
        self._open.discard(trial.trial_id)
