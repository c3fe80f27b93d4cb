"""ASHA with the reference trials kept out of its rungs (`search.rank_references: false`, or
`search.warm_start`).

ASHA stops a trial whose val SSIM at a rung falls below the top 1/reduction_factor of what the trials
that reached that rung recorded. The L1-only reference (orchestrator.trials.references) learns faster
in its first epochs than any trial with a discriminator, so where it ranks with them it raises every
rung's cut-off, and adversarial trials are stopped for being adversarial, not for being bad (issue 22:
on a 64-px task all 14 searched trials were stopped by epoch 8 while the L1-only reference won).
Here the references run their course: ASHA neither stops them nor records their results, so the
searched trials are ranked among themselves. The plateau stop and the time budget still end them.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from orchestrator.spec import SearchSpec
from orchestrator.trials.references import reference_of


class ReferencesApart(ASHAScheduler):
    """ASHAScheduler for the searched trials only; reference trials always continue."""

    def __init__(self, spec: SearchSpec, **asha: Any) -> None:
        super().__init__(**asha)
        self.spec = spec  # pickled with the scheduler: a resumed search tells the references apart the same way

    def is_reference(self, trial: Any) -> bool:
        return reference_of(trial.config, self.spec) is not None

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if self.is_reference(trial):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        if self.is_reference(trial):
            self.on_trial_remove(tune_controller, trial)  # forget the trial without recording its result
            return
        super().on_trial_complete(tune_controller, trial, result)
