"""User-facing errors: one line that names the file or field and says what to do."""

from __future__ import annotations

import errno
import functools
import os
import sys
from collections.abc import Callable
from typing import TypeVar

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C (128 + SIGINT)
EXIT_TERMINATED = 143  # ... and by SIGTERM (128 + SIGTERM), what clusters and schedulers send

F = TypeVar("F", bound=Callable[..., object])

# Storage that cannot take a write: errno -> what the user must do before resuming. A search stops at
# the first trial that meets one (the others would fail alike); a trial's failure reaches the driver
# as text, which names the errno by its strerror.
STORAGE_ERRNOS = {
    errno.ENOSPC: "free space",
    errno.EDQUOT: "free space within your disk quota",
    errno.EFBIG: "raise the file-size limit (ulimit -f)",
}


def storage_advice(failure: str | OSError) -> str | None:
    """What to do about a storage failure (a trial's failure text, or a command's own OSError); None
    when it is not one."""
    if isinstance(failure, OSError):
        return STORAGE_ERRNOS.get(failure.errno)
    return next((advice for code, advice in STORAGE_ERRNOS.items() if os.strerror(code) in failure), None)


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
