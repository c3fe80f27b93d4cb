"""Weights & Biases logging behind a three-method interface, so training code never branches on W&B.

Modes: "off" (nothing), "offline" (runs written under the experiment's WANDB_DIR, uploaded later
with `sync_command`) and "online". Online is chosen only when a key is configured and the server
answers a short probe: with a key but no network, `wandb.init` would block about 100 s per run and
then fail, and a search must never hang on its logging.

Nothing here reads an API key's value into a config, a summary or a file: keys are only checked
for presence, and wandb itself picks them up from the environment or ~/.netrc.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import wandb
from wandb.errors import AuthenticationError
from wandb.sdk.lib import wbauth
from wandb.sdk.wandb_run import Run

from orchestrator.compat import log_table_as_run_file
from orchestrator.outcomes import EndReason
from orchestrator.tracking.offline import wait_until_complete
from trainer.errors import UserError
from trainer.names import METRICS

MODES = ("off", "offline", "online")
DEFAULT_BASE_URL = "https://api.wandb.ai"
PROBE_TIMEOUT_S = 3.0
FLUSH_TIMEOUT_S = 10.0
# WANDB_MODE values wandb accepts, in our three words ("run" and "shared" are wandb's online variants).
ENV_MODES = {
    "disabled": "off",
    "offline": "offline",
    "dryrun": "offline",
    "online": "online",
    "run": "online",
    "shared": "online",
}
STEP_METRIC = "epoch"
TRIAL_SUMMARIES = {f"val_{m.name}": m.direction for m in METRICS}
RUNS_FOLDER = "wandb"  # wandb.init(dir=D) writes its runs into D/wandb/
MODEL_REGISTRY = "wandb-registry-model"  # online only: where the search run links the exported model


# ---------------------------------------------------------------------------------------------
# choosing the mode


def resolve_wandb_mode(requested: str | None) -> str:
    """Pick "off", "offline" or "online": an explicit request wins, then WANDB_MODE, then online only with a key."""
    if requested is not None:
        if requested not in MODES:
            raise UserError(f"W&B mode must be one of {', '.join(MODES)} (got {requested!r})")
        return requested
    env_mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if env_mode:
        if env_mode not in ENV_MODES:
            raise UserError(f"WANDB_MODE={env_mode!r} is not a W&B mode; use one of {', '.join(ENV_MODES)}")
        return ENV_MODES[env_mode]
    return "online" if api_key_configured(wandb_base_url()) else "offline"


def wandb_base_url() -> str:
    return (os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")


def api_key_configured(base_url: str) -> bool:
    """Whether wandb would find credentials, looked up where wandb 0.31 looks (wbauth.authenticate):
    WANDB_API_KEY, WANDB_IDENTITY_TOKEN_FILE, then the netrc entry for the server's host ($NETRC,
    ~/.netrc or ~/_netrc). Only presence is checked; the key's value is never kept."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    try:
        return wbauth.read_netrc_auth(host=base_url) is not None
    except AuthenticationError:  # a malformed key: wandb.init would refuse it, so it is not usable
        return False


def check_online_or_fallback(mode: str, base_url: str | None = None) -> str:
    """For "online": no key, or a server that does not answer within a few seconds -> one warning line
    and "offline" (wandb would otherwise prompt for a key, or block for minutes). Other modes pass through."""
    if mode != "online":
        return mode
    url = base_url or wandb_base_url()
    if not api_key_configured(url):
        problem = "no W&B API key is configured (run `wandb login`)"
    elif not server_reachable(url):
        problem = f"W&B server {url} is unreachable"
    else:
        return mode
    print(f"warning: {problem}; logging offline instead (upload later with `wandb sync`)", flush=True)
    return "offline"


def server_reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the server answers an HTTP request within `timeout` seconds. A 5xx answer (a proxy
    or gateway that could not reach it) counts as unreachable. The request runs in a daemon thread
    so a slow DNS lookup, which has no timeout of its own, cannot hold the caller any longer."""
    done = threading.Event()
    status: list[int] = []

    def probe() -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout) as response:
                status.append(response.status)
        except urllib.error.HTTPError as err:  # an answer, with an error status
            status.append(err.code)
        except (OSError, ValueError):
            pass
        finally:
            done.set()

    threading.Thread(target=probe, daemon=True, name="wandb-probe").start()
    done.wait(timeout)
    return bool(status) and status[0] < 500


def sync_command(experiment_dir: Path | str = ".") -> str:
    """The command that uploads an experiment's offline runs (it skips runs already synced). It runs from
    the experiment folder, wherever that has moved: the model artifact names its files relative to it
    (model_artifact). "." gives the command alone (summary.json's); another folder, `cd FOLDER && ...`.
    No interpreter path: one absolute path would tie the folder's text to this machine (wandb_hint)."""
    command = f"wandb sync {RUNS_FOLDER}"
    return command if str(experiment_dir) == "." else f"cd {shlex.quote(str(experiment_dir))} && {command}"


def wandb_hint() -> str:
    """Where this environment's `wandb` command is, when the shell's `wandb` is another one or none
    (a venv that is not activated); "" when `wandb` already names it. For the terminal, not for files."""
    ours = Path(sys.executable).parent / "wandb"
    if not ours.is_file() or shutil.which("wandb") == str(ours):
        return ""
    return f" (`wandb` is {shlex.quote(str(ours))} in this environment)"


# ---------------------------------------------------------------------------------------------
# loggers


class RunLogger(Protocol):
    def log_metrics(self, metrics: dict[str, Any], epoch: int) -> None: ...

    def log_image(self, key: str, image: np.ndarray, epoch: int, caption: str = "") -> None:
        """Log an image for the epoch whose metrics were logged last."""
        ...

    def finish(self, summary: dict[str, Any]) -> None:
        """Close the run. summary["end_reason"] == "failed" marks the run as failed."""
        ...


class NullLogger:
    """W&B off: every call does nothing."""

    def log_metrics(self, metrics: dict[str, Any], epoch: int) -> None:
        pass

    def log_image(self, key: str, image: np.ndarray, epoch: int, caption: str = "") -> None:
        pass

    def finish(self, summary: dict[str, Any]) -> None:
        pass


class WandbRunLogger:
    """One W&B run, charted against the epoch (define_trial_metrics), one history row per reported epoch.

    The W&B step is the epoch while epochs only grow, and the next step after the run's last row when
    an epoch comes again: W&B drops a row logged below its latest step, and a trial that continues
    another trial's earlier checkpoint (search.pbt) reports epochs it had already reported (checked
    offline: rows logged at steps 1, 2, 3, 4, 2, 3, 4, 5 kept 1 to 5, the repeated 2 to 4 lost)."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.step = run.step - 1  # the run's last row: a resumed online run goes on after its rows
        self.epoch = 0  # the epoch of that row

    def log_metrics(self, metrics: dict[str, Any], epoch: int) -> None:
        self.step, self.epoch = max(epoch, self.step + 1), epoch
        self.run.log(metrics, step=self.step)

    def log_image(self, key: str, image: np.ndarray, epoch: int, caption: str = "") -> None:
        # Tune reports an epoch's result before its checkpoint, so the image follows its metrics
        step = self.step if epoch == self.epoch else max(epoch, self.step + 1)
        self.run.log({key: wandb.Image(image, caption=caption or None)}, step=step)

    def finish(self, summary: dict[str, Any]) -> None:
        self.run.summary.update(summary)
        finish_run(self.run, exit_code=1 if summary.get("end_reason") == EndReason.FAILED else 0)


def finish_run(run: Run, exit_code: int = 0) -> None:
    """run.finish(), then wait until the run's log is on disk. In wandb 0.31 finish() can return while
    wandb-core still buffers the end of the `.wandb` log (seen here: a 150 KB log cut at 128 KiB), and a
    Tune worker may be killed, or the report read the log, right after a trial ends."""
    log = Path(run.sync_dir) / f"run-{run.id}.wandb"
    run.finish(exit_code=exit_code)
    if not wait_until_complete(log, FLUSH_TIMEOUT_S):
        print(f"warning: W&B log {log} is still incomplete after {FLUSH_TIMEOUT_S:.0f} s", flush=True)


def start_run(
    mode: str,
    *,
    project: str,
    group: str,
    name: str,
    job_type: str,
    wandb_dir: Path | str,
    config: dict[str, Any] | None = None,
    run_id: str | None = None,
) -> Run:
    """wandb.init with this project's settings. `wandb_dir` becomes WANDB_DIR: runs land in its wandb/ folder."""
    Path(wandb_dir).mkdir(parents=True, exist_ok=True)  # wandb silently falls back to a temp dir otherwise
    settings = wandb.Settings(
        console="off",  # Ray already captures worker output; a second capture only duplicates it
        x_disable_stats=True,  # no system-metrics sampler thread per trial
        silent=True,  # no banner per trial; the search prints the sync command once
        # The installed packages are the same for every run of a search: its own run records them.
        # Listing them was most of a trial run's start (profiled in benchmarks.driver).
        x_save_requirements=job_type != "trial",
    )
    return wandb.init(
        project=project,
        group=group,
        name=name,
        job_type=job_type,
        config=config,
        dir=str(wandb_dir),
        mode=mode,
        id=run_id,
        resume="allow" if run_id else None,
        reinit="create_new",  # a reused Ray worker, or the driver, may still hold another run
        settings=settings,
    )


def trial_run_id(project: str, group: str, name: str) -> str:
    """A W&B run id fixed by (project, group, trial): a retried or restored trial continues its own
    run instead of starting a second one with the same name."""
    return hashlib.sha256(f"{project}\0{group}\0{name}".encode()).hexdigest()[:16]


def open_trial_logger(
    mode: str, project: str, group: str, name: str, config: dict[str, Any], wandb_dir: Path | str
) -> RunLogger:
    """The trial's logger. If W&B cannot start, the trial trains on without it: logging is never worth a trial."""
    if mode == "off":
        return NullLogger()
    try:
        run = start_run(
            mode,
            project=project,
            group=group,
            name=name,
            job_type="trial",
            wandb_dir=wandb_dir,
            config=config,
            run_id=trial_run_id(project, group, name),
        )
    except Exception as err:  # any wandb failure: warn once, keep training
        print(
            f"warning: W&B run for trial {name} could not start ({type(err).__name__}: {err}); not logging it",
            flush=True,
        )
        return NullLogger()
    define_trial_metrics(run)
    return WandbRunLogger(run)


def define_trial_metrics(run: Run) -> None:
    """Charts against epochs, and run-table summaries that mean what a reader expects: the best val
    SSIM and MAE of the trial (the exported epoch's), not the last epoch's."""
    run.define_metric(STEP_METRIC)
    run.define_metric("*", step_metric=STEP_METRIC)
    for name, summary in TRIAL_SUMMARIES.items():
        run.define_metric(name, step_metric=STEP_METRIC, summary=summary)


# ---------------------------------------------------------------------------------------------
# the search's own run


def log_search_run(
    mode: str,
    project: str,
    group: str,
    wandb_dir: Path | str,
    trials: list[dict[str, Any]],
    export_dir: Path | None,
    card: dict[str, Any] | None,
    config: dict[str, Any] | None = None,
) -> None:
    """One run (job_type "search") with the search's `config` (space and settings), a table of all trials
    and the exported generator as a "model" artifact, linked to the model registry when online.

    `trials` are summary.json trial entries: trial_id, status, reason, params, epochs, best_val_ssim, best_epoch.
    """
    if mode == "off":
        return
    run = start_run(
        mode,
        project=project,
        group=group,
        name=f"{group}-search",
        job_type="search",
        wandb_dir=wandb_dir,
        config=config,
    )
    try:
        log_table_as_run_file(run, "trials", trials_table(trials))
        summary: dict[str, Any] = {"num_trials": len(trials)}
        scored = [t for t in trials if t.get("best_val_ssim") is not None]
        if scored:
            best = max(scored, key=lambda t: t["best_val_ssim"])
            summary.update(best_trial=best["trial_id"], best_val_ssim=best["best_val_ssim"])
        run.summary.update(summary)
        if export_dir is not None and Path(export_dir).is_dir():
            # offline, wandb sync uploads the files later from the folder; online, wandb-core uploads them now
            relative_to = Path(wandb_dir) if mode == "offline" else None
            artifact = model_artifact(group, Path(export_dir), card, relative_to)
            run.log_artifact(artifact)
            if mode == "online":
                link_to_registry(run, artifact, project)
    finally:
        finish_run(run)


def model_artifact(
    group: str, export_dir: Path, card: dict[str, Any] | None, relative_to: Path | None
) -> wandb.Artifact:
    """The exported generator as a "model" artifact whose files are the export's own. wandb's default
    would copy them into its staging folder under ~/.local/share/wandb (about 117 MB a search, never
    cleaned) and record that absolute path; an export is written once, atomically, so its files can be
    referenced in place ("immutable"). Offline, their paths are written relative to the experiment
    folder (`relative_to`), so they still name the files after the folder moves: `wandb sync wandb`
    runs from the folder (sync_command), and wandb-core opens an entry's local path as given."""
    artifact = wandb.Artifact(artifact_name(group), type="model", metadata=card or {})
    artifact.add_dir(str(export_dir), policy="immutable")
    if relative_to is not None:
        for entry in artifact.manifest.entries.values():
            entry.local_path = os.path.relpath(entry.local_path, relative_to)
    return artifact


def link_to_registry(run: Run, artifact: wandb.Artifact, collection: str) -> None:
    """Link the model to the W&B Registry; servers without a registry refuse, and then the logged
    artifact is all there is (one warning line, the search is not failed for it)."""
    try:
        artifact.wait()
        run.link_artifact(artifact, f"{MODEL_REGISTRY}/{collection}")
    except Exception as err:  # the server's refusal comes in several wandb error types
        print(f"warning: W&B could not link the model to {MODEL_REGISTRY}/{collection} ({err})", flush=True)


TABLE_LEADING = ("trial_id", "status")
TABLE_TRAILING = ("epochs", "best_val_ssim", "best_epoch", "reason")


def trials_table(trials: list[dict[str, Any]]) -> wandb.Table:
    """wandb.Table: trial_id, status, one column per searched parameter, epochs, best val SSIM, best epoch, reason."""
    params = list(dict.fromkeys(name for t in trials for name in t.get("params", {})))
    rows = [
        [t.get(c) for c in TABLE_LEADING]
        + [t.get("params", {}).get(p) for p in params]
        + [t.get(c) for c in TABLE_TRAILING]
        for t in trials
    ]
    return wandb.Table(columns=[*TABLE_LEADING, *params, *TABLE_TRAILING], data=rows, allow_mixed_types=True)


def artifact_name(group: str) -> str:
    """W&B artifact names allow letters, digits, '-', '_' and '.'."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{group}-best-generator")
