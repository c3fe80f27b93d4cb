"""User-facing errors: one line that names the file or field and says what to do."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import reprlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C (128 + SIGINT)
EXIT_TERMINATED = 143  # ... and by SIGTERM (128 + SIGTERM), what clusters and schedulers send

F = TypeVar("F", bound=Callable[..., object])
SHOWN_CHARS = 80  # the most of one value an error message echoes

# repr that stops early at every level: echoing a value of a million items must not cost its repr
_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel = 3
_SHORT_REPR.maxlist = _SHORT_REPR.maxtuple = _SHORT_REPR.maxdict = _SHORT_REPR.maxset = 8
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = SHOWN_CHARS


def cut(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text` or its start, marked as cut: an error message stays one readable line."""
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def shown(value: Any) -> str:
    """repr(value) as an error message echoes it: short, whatever the size of the value."""
    return cut(_SHORT_REPR.repr(value))


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


class Terminated(BaseException):
    """SIGTERM, raised where the program is, as Python raises KeyboardInterrupt for SIGINT: without it
    the process dies at once, before `finally` blocks remove temporary files or a CLI can say how to
    resume. A BaseException like KeyboardInterrupt, so that `except Exception` cannot swallow it."""


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises Terminated (main thread only, as every signal handler)."""

    def on_sigterm(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Within the block, Ctrl-C and SIGTERM wait and arrive as it ends: for a step that must not be
    cut in two, such as creating a temporary file and renaming it, where a Terminated raised in
    between would leave the file behind (seen: a SIGTERM right after mkstemp). Python runs signal
    handlers in the main thread only, so elsewhere there is nothing to hold. Blocking the signals
    (pthread_sigmask) would not do: the kernel hands them to another thread, torch's for one."""
    held = (signal.SIGINT, signal.SIGTERM)
    # None: a handler that C code installed, which Python could not put back
    if threading.current_thread() is not threading.main_thread() or None in map(signal.getsignal, held):
        yield
        return
    arrived: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: arrived.append(signum)) for signum in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(arrived):
            if previous[signum] is not signal.SIG_IGN:
                signal.raise_signal(signum)  # now handled as it would have been


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
