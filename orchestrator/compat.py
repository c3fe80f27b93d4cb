"""Where the search reaches past the public APIs of the libraries it pins, and of its own past.

Every private Ray or W&B name the orchestrator uses is read or written here, and nowhere else, so
that an upgrade of the pinned versions has one module to check; tests/orchestrator/test_compat.py
has a fast canary for each, failing with the name that moved.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

# Modules that moved when the code was arranged by purpose. Tune pickles a search's callbacks and
# searcher by module path (tuner.pkl, searcher-state-*.pkl), so a search started before the move
# resumes only while the old paths import.
MOVED_MODULES = {
    "orchestrator.endings": "orchestrator.trials.endings",
    "orchestrator.progress": "orchestrator.trials.progress",
    "orchestrator.ray_output": "orchestrator.trials.ray_output",
    "orchestrator.references": "orchestrator.trials.references",
    "orchestrator.retention": "orchestrator.trials.retention",
    "orchestrator.search_limits": "orchestrator.trials.limits",
    "orchestrator.study": "orchestrator.trials.study",
    "orchestrator.trainable": "orchestrator.trials.trainable",
    "orchestrator.wandb_callback": "orchestrator.tracking.callback",
    "orchestrator.wandb_logging": "orchestrator.tracking.runs",
    "orchestrator.wandb_offline": "orchestrator.tracking.offline",
}


def accept_pickles_from_before_the_move() -> None:
    """Let the old module paths name the modules they moved to, for unpickling a resumed search."""
    for old, new in MOVED_MODULES.items():
        sys.modules.setdefault(old, importlib.import_module(new))


def log_table_as_run_file(run: Any, key: str, table: Any) -> None:
    """Log a wandb.Table as the run's own media file (`files/media/table/`, a "table-file" in its
    history), the form W&B shows in the run's workspace. A table logged unbound is also wrapped into a
    "run_table" artifact whose one file wandb 0.31 copies into its staging folder under
    ~/.local/share/wandb and records by absolute path: outside the experiment, never cleaned, and lost
    to `wandb sync` once the folder moves. Binding it first (Media.bind_to_run, undocumented) skips that."""
    table.bind_to_run(run, key, 0)
    run.log({key: table})
