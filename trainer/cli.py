"""What every command line of the project shares: one-line errors, and flags derived from a config
dataclass, so each setting's name, default and help text live once, on its field."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any, NoReturn, get_args, get_type_hints

from trainer.errors import UserError


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse prints usage plus a message and exits 2; make that the project's one-line UserError."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see --help)")


def flag(name: str) -> str:
    """How messages name a setting's flag: its field name with dashes (batch_size -> --batch-size).
    Commands accept the field name itself too (--batch_size), which their usage lines show, one
    spelling per flag, as the YAML spec and the checkpoint spell it."""
    return f"--{name.replace('_', '-')}"


def add_dataclass_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    title: str,
    only: tuple[str, ...] | None = None,
    types: dict[str, tuple[Callable[[str], Any], str]] | None = None,
    defaults: dict[str, Any] | None = None,
) -> None:
    """One flag per field of `cls` (or of the fields named in `only`), from the field's metadata
    (trainer.config.opt). Unset flags stay absent from the namespace (argparse.SUPPRESS), so the
    dataclass supplies every default and a caller can tell what the user actually passed. `types`
    gives a field's flag another parser and metavar, where a command accepts more than the field's type;
    `defaults` the values the help names, where a command's defaults come from elsewhere (a spec file)."""
    hints = get_type_hints(cls)
    group = parser.add_argument_group(title)
    for field in dataclasses.fields(cls):
        if only is not None and field.name not in only:
            continue
        default = (defaults or {}).get(field.name, field.default)
        kwargs: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS}
        choices = get_args(hints[field.name])
        flag_type = field.metadata.get("flag_type") or type(field.default)
        metavar = field.metadata.get("metavar") or flag_type.__name__.upper()
        flag_type, metavar = (types or {}).get(field.name, (flag_type, metavar))
        if isinstance(field.default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif choices:
            kwargs["choices"] = choices
        else:
            kwargs["type"] = flag_type
            kwargs["metavar"] = metavar
        names = [f"--{field.name}"] + ([flag(field.name)] if "_" in field.name else [])
        if isinstance(field.default, bool):  # its usage would list all four spellings: the dashed pair is unlisted
            group.add_argument(names[0], help=f"{field.metadata['help']} (default: {default})", **kwargs)
            if len(names) > 1:
                group.add_argument(names[1], help=argparse.SUPPRESS, **kwargs)
        else:
            group.add_argument(*names, help=f"{field.metadata['help']} (default: {default})", **kwargs)


def given_flags(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of `cls` the user passed as flags (add_dataclass_flags leaves the others absent)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
