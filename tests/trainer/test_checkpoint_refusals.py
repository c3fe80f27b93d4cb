"""A checkpoint that is a crafted pickle is refused in one line that says what it tried to load,
without torch's page of advice (which ends in loading the file unchecked)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from trainer.checkpoint import RunState
from trainer.errors import UserError


class RunsACommand:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_pickle_that_names_code_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    path.write_bytes(pickle.dumps({"config": RunsACommand()}, protocol=2))
    with pytest.raises(UserError) as err:
        RunState.load(path)
    message = str(err.value)
    assert len(message.splitlines()) == 1 and len(message) < 400, message
    assert f"{path}: not a readable checkpoint (UnpicklingError: " in message and "GLOBAL posix.system" in message
    assert "weights_only" not in message and message.endswith("; use a file this trainer wrote")
