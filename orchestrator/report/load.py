"""What the report reads from an experiment folder, checked so that the page and plots can rely on its shape.

summary.json (orchestrator.results writes it), the export's card and samples (trainer.export names them),
the parameter importances of the Optuna study in optuna.db (orchestrator.trials.study owns that format) and the
offline W&B runs on disk.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc

from orchestrator.outcomes import SEARCH_METRIC
from orchestrator.results import EXPORT_DIR, SUMMARY_FILE
from orchestrator.trials.references import L1_ONLY_SETTING
from orchestrator.trials.study import STUDY_FILE, load_study
from trainer import export
from trainer.errors import UserError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MIN_TRIALS_FOR_IMPORTANCE = 4  # below this PED-ANOVA's top-10% quantile is one trial: noise, not importance


@dataclass(frozen=True)
class Experiment:
    """One search's results, as the report shows them."""

    folder: Path
    summary: dict[str, Any]  # summary.json, checked by load_summary
    card: dict[str, Any] | None  # best/model_card.json; None when nothing was exported
    samples: bytes | None  # best/samples.png
    importances: dict[str, float] | str  # parameter -> importance, or a sentence saying why there are none


def load_experiment(folder: Path) -> Experiment:
    folder = Path(folder)
    summary = load_summary(folder)
    return Experiment(
        folder=folder,
        summary=summary,
        card=load_card(folder),
        samples=load_png(folder / EXPORT_DIR / export.SAMPLES),
        importances=param_importances(folder, str(summary["name"])),
    )


def load_summary(experiment_dir: Path) -> dict[str, Any]:
    """The search's summary.json, checked enough that every section can rely on its shape."""
    experiment_dir = Path(experiment_dir)
    if not experiment_dir.is_dir():
        raise UserError(f"{experiment_dir}: experiment folder not found")
    path = experiment_dir / SUMMARY_FILE
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
    path = Path(experiment_dir) / EXPORT_DIR / export.CARD
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


def param_importances(experiment_dir: Path, study_name: str) -> dict[str, float] | str:
    """Optuna's importances over the study's COMPLETE trials (finished and early-stopped ones, valued by
    their best val SSIM: what TPE learned from), or a sentence saying why there are none."""
    path = Path(experiment_dir) / STUDY_FILE
    if not path.is_file():  # checked first: opening a missing SQLite file would create it
        return f"No Optuna study ({STUDY_FILE}) in the experiment folder, so there is nothing to rank."
    try:
        study = load_study(experiment_dir, study_name)
        trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    except KeyError:  # the file holds no study of that name
        return f"{STUDY_FILE} holds no study named {study_name!r}, so there is nothing to rank."
    except sqlalchemy.exc.SQLAlchemyError as err:  # damaged: the study is derived, the rest of the report is not
        return f"{STUDY_FILE} cannot be read ({getattr(err, 'orig', None) or err}), so there is nothing to rank."
    if not any(t.params for t in trials):
        return "No searched parameters are recorded, so there is nothing to rank."
    if len(trials) < MIN_TRIALS_FOR_IMPORTANCE:
        return (
            f"Parameter importance needs at least {MIN_TRIALS_FOR_IMPORTANCE} trials in the Optuna study that "
            f"ended with a validation SSIM (searched trials; the L1-only reference is not in the study, as it "
            f"fixes gan_weight instead of searching); the study has {len(trials)}."
        )
    if len({t.value for t in trials}) == 1:
        return "Every trial reached the same best validation SSIM, so no parameter made a difference to rank."
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            importances = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError) as err:  # e.g. trials that searched different parameters
        return f"Parameter importance could not be computed: {err}"
    if any("importances will be equal" in str(w.message) for w in caught):
        return "The trials are too alike for Optuna to tell the parameters apart (it would rank them all equal)."
    return importances


def wandb_dir(summary: dict[str, Any], experiment_dir: Path) -> Path | None:
    """The folder the search's W&B runs are in (summary.json keeps it relative to the experiment folder)."""
    folder = (summary.get("wandb") or {}).get("dir")
    if not folder:
        return None
    path = Path(folder)
    return path if path.is_absolute() else Path(experiment_dir) / path


# ---------------------------------------------------------------------------------------------
# the search's data, as the page and plots need it


def scored(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trials that reached at least one validation: the only ones with a value to plot or rank."""
    return [t for t in trials if isinstance(t.get(SEARCH_METRIC), (int, float)) and math.isfinite(t[SEARCH_METRIC])]


def best_trial_id(summary: dict[str, Any]) -> str | None:
    best = summary.get("best")
    if isinstance(best, dict) and best.get("trial_id") is not None:
        return str(best["trial_id"])
    ranked = scored(summary["trials"])
    return str(max(ranked, key=lambda t: t[SEARCH_METRIC])["trial_id"]) if ranked else None


def param_names(summary: dict[str, Any]) -> list[str]:
    """Searched parameters: the space's, in its order. A trial's params can hold more: the L1-only
    reference's fixed gan_weight (references.L1_ONLY_SETTING), a setting and not a searched parameter.
    A summary without its space gives the names its trials hold, less that setting."""
    if summary.get("space"):
        return list(summary["space"])
    names = (name for trial in summary["trials"] for name in trial.get("params", {}))
    return list(dict.fromkeys(name for name in names if name not in L1_ONLY_SETTING))
