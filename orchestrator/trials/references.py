"""Reference trials: what a search's best trial is measured against.

Every search first runs the paper's settings (Isola et al. 2017: lambda_l1 100, dropout 0.5, lr 2e-4
for G and D, beta1 0.5; TrainConfig's defaults) as Optuna's first, enqueued trial, so TPE learns
from it like from any trial. Unless `search.l1_reference: false`, the second trial is the same
settings without the discriminator (gan_weight 0): the L1-only model, which shows whether the GAN
helps at all on this data. That one is not a point of the searched space: `ReferenceSearcher`
hands it to Tune itself and keeps it from Optuna, and it is not written into the Optuna study
(orchestrator.trials.study). Both keep their best generator on disk (orchestrator.trials.retention), are scored on
the test split after the search, and compete for the export like any trial (orchestrator.results):
the model card says which kind won.

With `search.warm_start`, the L1-only reference runs first and the paper's settings beside it, both
from random weights and both kept from Optuna; every searched trial waits for the L1-only reference
to end and then fine-tunes its best generator (`init_generator` in the trial's config: the
checkpoint's folder within the experiment, or "" when that trial failed and the search goes on from
scratch). Optuna's enqueued paper point then is the first fine-tune, a searched trial like the rest.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from ray.tune.search import Searcher

from orchestrator.spec import SearchSpec
from trainer.names import METRIC_NAMES

PAPER, L1_ONLY = "paper", "l1_only"
SEARCHED = "searched"  # a trial TPE suggested: the kind of trial that is no reference
L1_ONLY_SETTING = {"gan_weight": 0.0}  # the only difference between the two references
INIT_GENERATOR = "init_generator"  # in a warm-started trial's config: where its generator starts
LABELS = {PAPER: "paper's settings", L1_ONLY: "L1 only (paper's settings, no discriminator)"}
KIND_LABELS = {**LABELS, SEARCHED: "a trial the search suggested"}


def is_l1_reference(params: dict[str, Any], searched: Iterable[str]) -> bool:
    """Tune's config holds the searched parameters, and gan_weight in the L1-only reference only."""
    return "gan_weight" in params and "gan_weight" not in searched


def reference_of(params: dict[str, Any], spec: SearchSpec) -> str | None:
    """PAPER, L1_ONLY or None for a trial's parameters."""
    if is_l1_reference(params, spec.space):
        return L1_ONLY
    if INIT_GENERATOR in params:  # a fine-tune, at the paper's point or any other
        return None
    point = spec.paper_point()
    return PAPER if point and all(params.get(name) == value for name, value in point.items()) else None


def in_study(params: dict[str, Any], searched: Iterable[str], warm_start: bool) -> bool:
    """Whether a trial is a point that Optuna suggested (and the study holds): not the L1-only
    reference, and with warm_start not the paper reference either (only fine-tunes are)."""
    return INIT_GENERATOR in params if warm_start else not is_l1_reference(params, searched)


def warm_start_source(trial_dir_name: str, checkpoint_dir_name: str) -> str:
    """A checkpoint's place within the experiment folder (local or remote: the trial resolves it)."""
    return f"{trial_dir_name}/{checkpoint_dir_name}"


def kind_of(params: dict[str, Any], spec: SearchSpec) -> str:
    """PAPER, L1_ONLY or SEARCHED: what kind of trial these parameters make."""
    return reference_of(params, spec) or SEARCHED


def kind_label(params: dict[str, Any], spec: SearchSpec) -> str:
    """What the card, summary and report call the kind of a trial: a searched trial with gan_weight 0
    (a space that searches gan_weight) trained without the discriminator, and says so."""
    kind = kind_of(params, spec)
    if kind == SEARCHED and params.get("gan_weight") == 0:
        return f"{KIND_LABELS[SEARCHED]}, without the discriminator (gan_weight 0)"
    if kind == SEARCHED and params.get(INIT_GENERATOR):
        return f"{KIND_LABELS[SEARCHED]}, fine-tuned from the L1-only reference's best generator"
    return KIND_LABELS[kind]


def reference_records(trials: list[dict[str, Any]], spec: SearchSpec) -> dict[str, dict[str, Any]]:
    """PAPER and L1_ONLY -> what the summary and the model card show of that trial (those that ran):
    its id, end, params and the val metrics of its best epoch (orchestrator.results adds "test")."""
    records = {}
    for trial in trials:
        kind = reference_of(trial["params"], spec)
        if kind is None or kind in records:
            continue
        best = next((row for row in trial["history"] if row.get("epoch") == trial["best_epoch"]), {})
        records[kind] = {
            "label": LABELS[kind],
            "trial_id": trial["trial_id"],
            "status": trial["status"],
            "params": trial["params"],
            "best_epoch": trial["best_epoch"],
            "val": {k: best[k] for k in (f"val_{m}" for m in METRIC_NAMES) if k in best},
        }
    return records


class ReferenceSearcher(Searcher):
    """Wraps the Optuna searcher: its first suggestion is the enqueued paper point, which this wrapper
    then hands out a second time with gan_weight 0 (the L1-only reference) before asking Optuna
    again. Results of that trial never reach Optuna, which does not know it.

    With `warm_paper` (search.warm_start; the paper point), the wrapper hands out the L1-only
    reference and then the paper reference itself, keeps both from Optuna, and gives Optuna's
    suggestions out only once the L1-only reference ended, each with that trial's latest checkpoint
    (which holds its best generator) as its `init_generator`."""

    def __init__(
        self, searcher: Searcher, l1_reference: bool, warm_paper: dict[str, Any] | None = None, learns: bool = True
    ) -> None:
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher = searcher
        # False with search.pbt: a trial's results then come from values PBT chose, not the ones suggested
        self.learns = learns
        self.paper: dict[str, Any] | None = None  # the first suggestion, once made
        self.l1_pending = l1_reference
        self.l1_trial: str | None = None
        self.warm_paper = warm_paper
        self.paper_trial: str | None = None  # the paper reference, when the wrapper hands it out (warm start)
        self.l1_checkpoint: str = ""  # the L1-only reference's latest checkpoint, as its results name it
        self.warm_from: str | None = None  # what fine-tunes start from, once the L1-only reference ended

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return self.searcher.set_max_concurrency(max_concurrent)

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.warm_paper is not None:
            return self._suggest_warm(trial_id)
        if self.paper is not None and self.l1_pending:
            self.l1_pending, self.l1_trial = False, trial_id
            return {**self.paper, **L1_ONLY_SETTING}
        suggestion = self.searcher.suggest(trial_id)
        if self.paper is None and isinstance(suggestion, dict):
            self.paper = suggestion
        return suggestion

    def _suggest_warm(self, trial_id: str) -> dict | str | None:
        if self.l1_trial is None:
            self.l1_pending, self.l1_trial = False, trial_id
            return {**self.warm_paper, **L1_ONLY_SETTING}
        if self.paper_trial is None:
            self.paper_trial = trial_id
            return dict(self.warm_paper)
        if self.warm_from is None:
            return None  # Tune asks again later: the fine-tunes wait for the L1-only reference
        suggestion = self.searcher.suggest(trial_id)
        return {**suggestion, INIT_GENERATOR: self.warm_from} if isinstance(suggestion, dict) else suggestion

    def _is_reference(self, trial_id: str) -> bool:
        return trial_id in (self.l1_trial, self.paper_trial)

    def _note_checkpoint(self, trial_id: str, result: dict | None) -> None:
        """The L1-only reference's latest checkpoint: Tune keeps it when the trial ends, and it holds
        the trial's best generator (orchestrator.trials.retention)."""
        if trial_id == self.l1_trial and result and result.get("checkpoint_dir_name") and result.get("trial_dir_name"):
            self.l1_checkpoint = warm_start_source(result["trial_dir_name"], result["checkpoint_dir_name"])

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._note_checkpoint(trial_id, result)
        if self.learns and not self._is_reference(trial_id):
            self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self._note_checkpoint(trial_id, result)  # a trial's last result comes with its completion only
        if trial_id == self.l1_trial and self.warm_paper is not None:
            # A failed reference leaves nothing to fine-tune: the search goes on from random weights ("").
            self.warm_from = "" if error else self.l1_checkpoint
        if self.learns and not self._is_reference(trial_id):
            self.searcher.on_trial_complete(trial_id, result=result, error=error)

    # Tune saves a wrapper's state with get_state (the wrapped searcher, found through `.searcher`,
    # saves itself), as it does for its own ConcurrencyLimiter.
    def get_state(self) -> dict[str, Any]:
        return copy.deepcopy({k: v for k, v in self.__dict__.items() if k != "searcher"})

    def set_state(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
