"""User-facing errors: one line that names the file or field and says what to do."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C

F = TypeVar("F", bound=Callable[..., object])


class UserError(Exception):
    """Bad input (data, config, paths). CLIs print the message alone and exit with code 2."""


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the run cannot continue from this state."""


def exits_cleanly_on_user_error(main: F) -> F:
    """Wrap a CLI entry point: a UserError becomes `error: <message>` on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(EXIT_USAGE) from None

    return wrapper  # type: ignore[return-value]
