"""Disk per trial: what of a trial's checkpoints stays once the trial has ended.

While a trial runs, Tune keeps its two latest checkpoints (orchestrator.tuner.checkpoint_config
says why two); each holds the full state to continue from (`last.pt`: G, D, both optimizers, RNG),
the best epoch's generator (`best_generator.pt`) and the split. Once the trial has ended, nothing
will continue it, so only the latest checkpoint stays, without the full state, and only the
`keep_generators` best trials keep their best generator (the one the export takes, and the ones a
user may want to evaluate later), and so do the reference trials, which are scored on the test split
after the search (orchestrator.trials.references). `keep_full_state` keeps everything. Failed and interrupted trials
keep everything: `--resume` continues them from `last.pt`. (With `search.pbt`, no trial copies an ended
one: PBT's population is the trials still running or paused; a trial's copy of another's checkpoint,
orchestrator.trials.population's `checkpoint_copy_*`, goes with its older checkpoints.)

At 64 px with ngf 32 a full checkpoint is about 90 MB and a generator 29 MB; at 256 px with ngf 64,
about 870 MB and 218 MB.
"""

from __future__ import annotations

from typing import Any

from ray import tune

from orchestrator.compat import trial_storage
from orchestrator.outcomes import Ending
from orchestrator.spec import SearchSpec
from orchestrator.trials.endings import TrialEndings
from orchestrator.trials.references import reference_of
from trainer.checkpoint import BEST_GENERATOR, LAST


class CheckpointRetention(tune.Callback):
    def __init__(self, endings: TrialEndings, spec: SearchSpec) -> None:
        self.endings = endings
        self.spec = spec
        self.kept: dict[str, tuple[float, str]] = {}  # ended trial -> (best val SSIM, checkpoint path)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.trim(trial)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for trial in trials:  # trials the time budget ended get no on_trial_complete
            if self.endings.ended.get(trial.trial_id) == Ending.BUDGET and trial.trial_id not in self.kept:
                self.trim(trial)

    @staticmethod
    def drop_older_checkpoints(trial: Any) -> None:
        """Every checkpoint folder of the ended trial but its latest: the one before it that Tune
        kept, and, for a trial the budget stopped, the checkpoint of an epoch whose result the driver
        never processed (Tune keeps no record of it, so nothing would ever delete it)."""
        import pyarrow.fs

        fs, folder = trial_storage(trial)
        registered = trial.checkpoint.path if trial.checkpoint is not None else None
        for info in fs.get_file_info(pyarrow.fs.FileSelector(folder)):
            if info.type.name == "Directory" and info.base_name.startswith("checkpoint_") and info.path != registered:
                fs.delete_dir(info.path)

    def trim(self, trial: Any) -> None:
        checkpoint = trial.checkpoint
        if checkpoint is None or self.spec.search.keep_full_state:
            return
        self.drop_older_checkpoints(trial)
        fs = checkpoint.filesystem
        delete(fs, f"{checkpoint.path}/{LAST}")
        if reference_of(trial.config, self.spec) is not None:
            return  # its generator is scored on test after the search, whatever its rank
        self.kept[trial.trial_id] = ((trial.last_result or {}).get("best_val_ssim", float("-inf")), checkpoint.path)
        # best first, ties to the smallest trial id as the export breaks them (PBT copies make ties)
        ranked = sorted(self.kept.items(), key=lambda item: (-item[1][0], item[0]))
        for _, (_, path) in ranked[self.spec.search.keep_generators :]:
            delete(fs, f"{path}/{BEST_GENERATOR}")

    def get_state(self) -> dict[str, Any]:
        return {"kept": dict(self.kept)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.kept = {k: tuple(v) for k, v in state["kept"].items()}


def delete(fs: Any, path: str) -> None:
    """Delete a file on Tune's storage (local or remote); a file already gone is fine."""
    if fs.get_file_info(path).type.name == "File":
        fs.delete_file(path)
