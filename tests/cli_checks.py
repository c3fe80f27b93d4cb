"""How the tests check a command's answer to bad input: one line starting `error: `, exit code 2."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from trainer.errors import EXIT_USAGE


def one_line_exit_2(main: Callable[[list[str]], object], argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run a CLI's main in this process; its one error line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err
