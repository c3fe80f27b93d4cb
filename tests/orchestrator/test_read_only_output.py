"""A read-only or immutable output folder (trainer --out, search --storage-path) is named in one line
before any work starts: no data decoded, no Ray started, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_checks import one_line_exit_2
from search_cli import TINY

from orchestrator import search
from trainer import train as train_cli
from trainer.errors import UserError
from trainer.files import check_output_folder


def test_train_refuses_a_read_only_out_before_training(
    read_only_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = read_only_folder / "run"
    err = one_line_exit_2(train_cli.main, ["--data", "builtin:glyphs", "--size", "32", "--out", str(out)], capsys)
    assert f"--out {out}: {read_only_folder} is not writable (read-only); choose another --out" in err
    assert not any(read_only_folder.iterdir())


def test_a_search_refuses_a_read_only_storage_path_before_ray_starts(
    read_only_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--config", str(TINY), "--storage-path", str(read_only_folder), "--name", "x"]
    err = one_line_exit_2(search.main, argv, capsys)
    assert f"--storage-path {read_only_folder / 'x'}: {read_only_folder} is not writable (read-only)" in err
    assert not any(read_only_folder.iterdir())


def test_a_folder_whose_mode_says_writable_but_that_takes_no_file_is_refused() -> None:
    """/proc: mode 0555, yet access() tells root it may write there; only creating a file tells."""
    with pytest.raises(UserError, match="/proc is not writable"):
        check_output_folder(Path("/proc/run"), "--out")
