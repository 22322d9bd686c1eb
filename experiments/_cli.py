"""Command lines built from an experiment's config dataclass, and one-line errors.

Every field of the config becomes a flag (``train_size`` -> ``--train-size``;
booleans get ``--x/--no-x``; tuples take several values), so the config
object stays the single place where settings and defaults live. Errors the
user can fix (bad values, missing files, a run directory holding another run)
print one line and exit with status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import operator
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

# OSError covers unwritable or clashing output paths, folders where files are expected and failed downloads
# (lld_jax.data.DownloadError): its message names the path.
USER_ERRORS = (ValueError, OSError, FloatingPointError)


def parse_gamma(s: str) -> str | float:
    """ROLL's gamma from the command line: ``max`` or a percentage."""
    return "max" if s == "max" else float(s)


def _optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return functools.reduce(operator.or_, rest), True
    return tp, False


def _converter(tp: Any) -> Callable[[str], Any]:
    if tp in (int, float, str):
        return tp
    if set(typing.get_args(tp)) == {str, float}:  # "max" | float: gamma
        return parse_gamma
    raise TypeError(f"no command-line conversion for {tp}")


def config_parser(
    cls: type, description: str, *, positional: Sequence[str] = (), presets: dict[str, dict[str, Any]] | None = None
) -> argparse.ArgumentParser:
    """An argparse parser with one flag per field of the dataclass ``cls`` (defaults from ``cls()``).

    ``presets`` (name -> field values) are shown as the default of the fields
    they fill (left at None on the command line).
    """
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        if f.name in positional:
            continue
        tp, optional = _optional(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        filled = {name: values[f.name] for name, values in (presets or {}).items() if f.name in values}
        if default is None and filled:
            shown = ", ".join(f"{name} {value}" for name, value in filled.items())
            help_text = f.metadata.get("help", "") + f" (default: the preset's: {shown})"
        else:
            help_text = f.metadata.get("help", "") + f" (default: {default})"
        if tp is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif typing.get_origin(tp) is tuple:
            item = _converter(typing.get_args(tp)[0])
            p.add_argument(flag, type=item, nargs="*", default=default, help=help_text)  # empty: an empty tuple (validated by the config)
        else:
            conv = _converter(tp)
            if optional:
                conv = (lambda c: lambda s: None if s.lower() == "none" else c(s))(conv)
            p.add_argument(flag, type=conv, default=default, help=help_text)
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return p


def config_from_args(cls: type, args: argparse.Namespace) -> Any:
    """The config dataclass from parsed arguments (tuples restored)."""
    hints = typing.get_type_hints(cls)
    kw = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name)
        if typing.get_origin(_optional(hints[f.name])[0]) is tuple and value is not None:
            value = tuple(value)
        kw[f.name] = value
    return cls(**kw)


def _one_line(err: BaseException) -> str:
    """The error's message on one line; an OSError says what failed on which path."""
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.strerror or type(err).__name__}: {err.filename!r} ({type(err).__name__}); check the path and its permissions."
    return " ".join(str(err).split())


def run(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> Any:
    """Runs ``main(argv)``; a user error prints ``error: ...`` and exits with status 2 (``--debug``: traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return main(argv)
    except USER_ERRORS as err:
        if "--debug" in argv:
            raise
        print(f"error: {_one_line(err)}", file=sys.stderr)
        raise SystemExit(2) from err
