"""Population-based training (`search.pbt`): Ray Tune's PopulationBasedTraining over the searched
trials, with the reference trials outside the population.

Every `pbt_interval` epochs (SearchSpec.pbt_epochs), a searched trial in the bottom quarter of the
population by val SSIM continues from the latest checkpoint of one in the top quarter, with that
trial's values perturbed (x0.8 or x1.2, or drawn anew from the space; kept within the space), instead
of being stopped as ASHA would: a trial that started badly inherits what a better one learned
(Jaderberg et al. 2017; PBT improved GANs there). The trainer continues such a checkpoint with the
new values (trainer.loop.train's `retune`) and records the schedule each trial's weights were
trained with in its checkpoints, which the export's card shows.

The references (orchestrator.trials.references) are not in the population: neither copied nor
replaced, they run their course as the baselines the export is measured against.

PBT asks for no searcher; Tune refuses one, since a searcher would learn from results of values it
did not suggest. Here the searcher only suggests where the population starts (the references, then
the space's points) and learns nothing from PBT's changes: the search's Optuna study records each
trial's last values and its schedule (orchestrator.trials.study), not the values it was suggested.
"""

from __future__ import annotations

from typing import Any

from ray import tune
from ray.tune import Checkpoint
from ray.tune.experiment import Trial
from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler

from orchestrator.compat import checkpoint_to_continue, continue_from, trial_storage
from orchestrator.outcomes import METRIC, MODE
from orchestrator.spec import Param, SearchSpec
from orchestrator.trials.references import reference_of

QUANTILE = 0.25  # Tune's default: the bottom quarter copies the top quarter
RESAMPLE_PROBABILITY = 0.25  # Tune's default: how often a value is drawn anew, not perturbed


def mutation(param: Param) -> Any:
    """What PBT perturbs or redraws a searched value from: a Tune domain, or the list of choices
    (PBT then moves to a neighbouring choice)."""
    if param.type == "categorical":
        return list(param.choices)
    if param.type == "int":
        sample = tune.lograndint if param.log else tune.randint
        return sample(int(param.low), int(param.high) + 1)
    return (tune.loguniform if param.log else tune.uniform)(param.low, param.high)


class PopulationApart(PopulationBasedTraining):
    """PBT for the searched trials; reference trials always continue and are never copied."""

    def __init__(self, spec: SearchSpec, epochs: int) -> None:
        super().__init__(
            time_attr="epoch",
            metric=METRIC,
            mode=MODE,
            perturbation_interval=spec.pbt_epochs,
            hyperparam_mutations={name: mutation(param) for name, param in spec.space.items()},
            quantile_fraction=QUANTILE,
            resample_probability=RESAMPLE_PROBABILITY,
            custom_explore_fn=self.within_space,
        )
        self.spec = spec  # pickled with the scheduler: a resumed search tells the references apart the same way
        self.epochs = epochs

    def within_space(self, config: dict[str, Any]) -> dict[str, Any]:
        """A perturbed value outside the space (x1.2 at its top) is moved to the space's edge."""
        return {**config, **{name: param.nearest(config[name]) for name, param in self.spec.space.items()}}

    def is_reference(self, trial: Any) -> bool:
        return reference_of(trial.config, self.spec) is not None

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        if not self.is_reference(trial):
            super().on_trial_add(WithoutSearcher(tune_controller), trial)

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        """A waiting reference first (they run their course, from the start of the search); then PBT's
        choice among the population: the trial that has trained least."""
        for trial in tune_controller.get_trials():
            if trial.status in (Trial.PENDING, Trial.PAUSED) and self.is_reference(trial):
                return trial
        return super().choose_trial_to_run(tune_controller)

    def _exploit(self, tune_controller: Any, trial: Any, trial_to_clone: Any) -> None:
        """Tune's exploit (new values, the other trial's latest checkpoint to continue from), with that
        checkpoint copied into the copying trial's own folder. Tune points the trial at the other
        trial's folder, and the copying trial may wait its turn for epochs: meanwhile the other trial's
        checkpoint limit, or checkpoint retention once it has ended, deletes that checkpoint."""
        super()._exploit(tune_controller, trial, trial_to_clone)
        continue_from(trial, own_copy(checkpoint_to_continue(trial), trial, trial_to_clone.trial_id))

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        # A trial's last epoch is no time for a look: copied now, it would have no epoch left to train
        # with its new values, and its final checkpoint would be copied into trials with none left either.
        if self.is_reference(trial) or result.get("epoch", 0) >= self.epochs:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


COPY_PREFIX = "checkpoint_copy_"  # a "checkpoint_" folder: retention deletes it with the others at the trial's end


def own_copy(checkpoint: Checkpoint, trial: Any, donor_id: str) -> Checkpoint:
    """`checkpoint` (another trial's) copied into `trial`'s folder, on the same storage. The trial's
    earlier copies go: it has trained since, and checkpointed each epoch, so nothing continues from them."""
    import pyarrow.fs

    fs, folder = trial_storage(trial)
    for info in fs.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True)):
        if info.type.name == "Directory" and info.base_name.startswith(COPY_PREFIX):
            fs.delete_dir(info.path)
    path = f"{folder}/{COPY_PREFIX}{donor_id}_{checkpoint.path.rstrip('/').rsplit('/', 1)[-1]}"
    fs.create_dir(path)
    pyarrow.fs.copy_files(checkpoint.path, path, source_filesystem=checkpoint.filesystem, destination_filesystem=fs)
    return Checkpoint(path, filesystem=fs)


class WithoutSearcher:
    """The tune controller as PBT's on_trial_add sees it: with no search algorithm, so that PBT accepts
    the searcher that suggests where the population starts (the module's docstring says why that is
    sound). Everything else is the controller's own."""

    search_alg = None

    def __init__(self, controller: Any) -> None:
        self._controller = controller

    def __getattr__(self, name: str) -> Any:
        return getattr(self._controller, name)
