"""One run of a search, start or resume: checks, Ray, the Tuner, then the export, summary, report and
W&B. `run_search` returns how it ended (orchestrator.outcomes.SearchOutcome); the CLI
(orchestrator.search) turns that into its last lines and exit code."""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import ray
from ray import tune
from rich.console import Console

from orchestrator.cluster import start_ray
from orchestrator.outcomes import SearchOutcome, SearchState, StopCause
from orchestrator.preflight import check_search
from orchestrator.report import write_report
from orchestrator.report.page import REPORT
from orchestrator.results import EXPORT_DIR, SUMMARY_FILE, export_best, render_summary, summarize_trials, write_summary
from orchestrator.spec import SPEC_FILE, SearchSpec, format_duration, save_spec
from orchestrator.storage import ExperimentPlace
from orchestrator.tracking.report import publish_wandb_report
from orchestrator.tracking.runs import (
    check_online_or_fallback,
    log_search_run,
    resolve_wandb_mode,
    sync_command,
    wandb_hint,
)
from orchestrator.trials.endings import SearchStop, TrialEndings, signals_stop_the_search
from orchestrator.trials.ray_output import RAY_LOG, route_ray_logs
from orchestrator.trials.study import ARTIFACT_DIR, STUDY_FILE, dashboard_command
from orchestrator.trials.trainable import TrialSettings, scratch_dir
from orchestrator.tuner import build_tuner, make_trainable, resolve_epochs, restore_tuner, search_callbacks
from trainer.errors import UserError, storage_advice
from trainer.files import check_output_folder

console = Console()
# Tune's warning about the cost of a thing that costs little next to a training epoch. Its warning
# about slow callbacks stays on: no callback of ours may hold Tune's event loop (W&B runs on a thread).
QUIET_ENV = {"TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}
LOCK_FILE = ".driver.lock"  # held by the driver running the experiment; the kernel drops it if the driver dies
UPLOADED = (EXPORT_DIR, SUMMARY_FILE, REPORT, SPEC_FILE, STUDY_FILE, ARTIFACT_DIR)


@dataclass(frozen=True)
class RunOptions:
    """What one run of the driver is told besides the spec; unlike the spec, these may differ
    between the runs of one search (a --resume may log to W&B differently or join a cluster)."""

    address: str | None  # a Ray cluster to join; None starts Ray embedded
    resume: bool
    wandb: str | None  # off / offline / online; None: as the search started, else online when an API key is set
    wandb_project: str


def resume_command(place: ExperimentPlace) -> str:
    return shlex.join(
        ["python", "-m", "orchestrator.search", "--resume", "--name", place.name, "--storage-path", place.storage_path]
    )


def saved_summary(place: ExperimentPlace) -> dict[str, Any] | None:
    """summary.json as the search's last run left it; None before any run wrote one."""
    try:
        return json.loads(place.fetch(SUMMARY_FILE).read_text())
    except UserError:
        return None


@contextmanager
def held_by_this_driver(place: ExperimentPlace, new: bool) -> Iterator[None]:
    """The experiment's local folder, claimed for this driver: a new search creates it (two drivers
    started at once with one --name: the second is refused), and every run holds its lock while it
    runs. A new search that stops with a UserError before it wrote anything leaves no folder."""
    out_dir = place.out_dir
    check_output_folder(out_dir, "--storage-path")  # before Ray starts, and before the first write
    if new:
        taken = f"{place.path}: already exists; pass --resume to continue it or choose another --name"
        if place.exists():
            raise UserError(taken)
        try:
            out_dir.mkdir(parents=True)
        except FileExistsError:
            raise UserError(taken) from None
    with open(out_dir / LOCK_FILE, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"{out_dir}: another search driver is running this experiment; wait for it to end or stop it first"
            ) from None
        try:
            yield
        except UserError:
            if new and {p.name for p in out_dir.iterdir()} <= {LOCK_FILE}:
                shutil.rmtree(out_dir, ignore_errors=True)
            raise


def run_search(spec: SearchSpec, place: ExperimentPlace, run: RunOptions) -> SearchOutcome:
    """Run or resume the search in `place` (claimed with held_by_this_driver). Bad input raises
    UserError before Ray starts; every other way it ends is in the outcome."""
    os.environ.update(QUIET_ENV)
    out_dir = place.out_dir
    if run.resume and not tune.Tuner.can_restore(place.path):
        raise UserError(f"{place.path}: no search to resume there; check --storage-path and --name")
    resolved = resolve_epochs(spec)  # epochs: auto as a number; the spec saved for --resume keeps `auto`
    warnings = check_search(resolved, run.address)  # before anything is written or Ray starts
    if not run.resume:
        save_spec(spec, out_dir)
        place.upload((SPEC_FILE,), console)  # so that a driver on another machine can resume it
    spec = resolved

    wandb_mode = check_online_or_fallback(resolve_wandb_mode(run.wandb))
    cfg = spec.trial_config({})
    stop = SearchStop()
    callbacks = search_callbacks(spec, place.name, out_dir, wandb_mode, run.wandb_project, cfg.epochs, stop)
    budget = f", time budget {format_duration(spec.search.time_budget)}" if spec.search.time_budget else ""
    at_once = "all live, taking turns" if spec.search.pbt else f"{spec.search.max_concurrent} at a time"
    console.print(
        f"[bold]search[/] {place.name}: {spec.search.num_samples} trials of {spec.describe_epochs()} on {cfg.data} "
        f"({cfg.size} px), {at_once}{budget}; space: {', '.join(spec.space)}; "
        f"W&B {wandb_mode}\n  results: {place.path}\n  Ray's own log: {out_dir / RAY_LOG}"
    )
    for warning in warnings:
        console.print(f"[yellow]warning:[/] {warning}")

    ended = partial(SearchOutcome, resume_command=resume_command(place))
    started = time.time()
    restore_ray_logs = route_ray_logs(out_dir)
    started_ray = False
    try:
        started_ray = start_ray(run.address)
        # From here to the end, after Ray started (ray.init installs a SIGTERM handler of its own): a
        # signal during the trials stops them as a time budget would, and one after them ends the run.
        with signals_stop_the_search(stop):
            results, trials = run_trials(spec, place, run, callbacks, started_ray)
            # An interrupted search exports nothing: its best so far is not the search's result.
            best = None if stop.cause else export_best(results, trials, spec, out_dir / EXPORT_DIR, place.path)
            state = SearchState.INTERRUPTED if stop.cause else SearchState.FINISHED
            # Paths in the experiment's own files are relative to its folder, which may move.
            wandb_info = (
                None
                if wandb_mode == "off"
                else {"mode": wandb_mode, "project": run.wandb_project, "dir": ".", "sync_command": sync_command(".")}
            )
            summary = write_summary(out_dir, place.name, spec, state, trials, best, time.time() - started, wandb_info)
            if stop.cause:
                console.print(render_summary(summary))
                return ended(state=state, stop=stop.cause, detail=stop.detail, advice=stop.advice, summary=summary)
            log_search_run(
                wandb_mode,
                run.wandb_project,
                place.name,
                out_dir,  # wandb writes its runs into <dir>/wandb/
                trials,
                out_dir / EXPORT_DIR if best else None,
                best.get("card") if best else None,
                config={
                    "space": summary["space"],
                    "search": summary["search"],
                    "train": summary["fixed"],
                    "data": cfg.data,
                },
            )
            report = write_report(out_dir)
            report_url = publish_wandb_report(summary, out_dir) if wandb_mode == "online" else None
            place.upload(UPLOADED, console)
    except KeyboardInterrupt:  # a second signal, or one outside Tune's loop: Tune's last save stands
        return ended(state=SearchState.INTERRUPTED, stop=stop.cause or StopCause.CTRL_C)
    except OSError as err:  # the driver's own write; after a trial's storage failure, that one is the news
        advice = storage_advice(err)
        if advice is None:
            raise
        stop.request(StopCause.STORAGE, f"writing {err.filename or 'a file'}: {err.strerror}", advice)
        return ended(state=SearchState.INTERRUPTED, stop=stop.cause, detail=stop.detail, advice=stop.advice)
    finally:
        if started_ray and ray.is_initialized():
            ray.shutdown()
        restore_ray_logs()
    print_summary(summary, out_dir, report, report_url)
    return ended(state=state, summary=summary, exported=out_dir / EXPORT_DIR if best else None)


def run_trials(
    spec: SearchSpec, place: ExperimentPlace, run: RunOptions, callbacks: list[tune.Callback], started_ray: bool
) -> tuple[tune.ResultGrid, list[dict[str, Any]]]:
    """The trials run (or resume) until they end or the search's stop is requested; then Ray goes
    down when this driver started it (the export and the report need no Ray)."""
    out_dir = place.out_dir
    epochs = spec.trial_config({}).epochs
    trials: list[dict[str, Any]] = []
    try:
        settings = TrialSettings(
            fixed=spec.train,
            plateau=spec.plateau_rule(),
            image_every=spec.search.image_every,
            experiment=place.path,
            retune=spec.search.pbt,
        )
        trainable = make_trainable(spec, settings)
        if run.resume:
            console.print(f"resuming {place.path}")
            tuner = restore_tuner(place.path, spec, trainable, callbacks)
        else:
            tuner = build_tuner(spec, place.name, place.storage_path, trainable, epochs, callbacks)
        results = tuner.fit()
        trials = summarize_trials(results, epochs, TrialEndings.read(out_dir), spec.search.time_budget)
        return results, trials
    finally:
        if started_ray:
            ray.shutdown()
        for trial in trials:  # scratch folders of attempts killed before their own clean-up (on this machine)
            shutil.rmtree(scratch_dir(trial["trial_id"]), ignore_errors=True)


def print_summary(summary: dict[str, Any], out_dir: Path, report: Path, report_url: str | None) -> None:
    console.print(render_summary(summary))
    console.print(f"report: {report}")
    if report_url:
        console.print(f"W&B report: {report_url}")
    # markup off: "[dashboard]" is text, not a rich style; soft_wrap: commands stay on one copyable line
    console.print(
        f"Optuna study: {dashboard_command(out_dir)}  (pip install -e '.[dashboard]' installs it)",
        markup=False,
        soft_wrap=True,
    )
    wandb = summary["wandb"]
    if wandb and wandb["mode"] == "offline":
        console.print(f"W&B runs are offline; upload them with: {sync_command(out_dir)}{wandb_hint()}", soft_wrap=True)
