"""``--config`` files: TOML whose keys are a command's options (flags given win).

Every value is checked here, before any work, against the option's own type: a key names an
option, a value has the option's type (an integer, a finite number, true or false, a string),
and nothing TOML allows but no option takes gets through — ``inf`` and ``nan``, dates and times,
tables (``[[compare]]`` included) and arrays where one value is expected. Each refusal is one
:class:`~mri_audit.errors.UsageError` line naming the key, the file and what is expected.
"""

from __future__ import annotations

import datetime as dt
import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

from mri_audit.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["read_config"]

# Options whose one value may be written as a TOML array (joined with commas).
_COMMA_LISTS = frozenset({"attack_list"})


def read_config(
    path: str | Path,
    command: click.Command,
    tables: Mapping[str, Callable[[Any, str], Any]] | None = None,
) -> dict[str, Any]:
    """Read a config file and check its keys and values against ``command``'s options.

    Keys may use dashes or underscores (``max-slices`` or ``max_slices``).

    Args:
        path: the TOML file.
        command: the click command whose options the keys name.
        tables: keys that hold tables rather than an option's value (``models`` for ``run``),
            each with the function that checks and converts it (``(value, path) -> value``).

    Returns:
        ``{option name: value}``, ready for ``ctx.default_map``.

    Raises:
        UsageError: an unreadable file, invalid TOML, an unknown key, or a value the option
            does not take (exit 2), in one line naming the key, the file and what is expected.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read config file {path}: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"config file {path} is not valid TOML: {err}") from None
    params = {
        p.name: p
        for p in command.params
        if isinstance(p, click.Option) and p.expose_value and p.name
    }
    aliases = {
        opt.lstrip("-").replace("-", "_"): name for name, p in params.items() for opt in p.opts
    }
    out = {}
    for key, value in data.items():
        if tables and key in tables:
            out[key] = tables[key](value, str(path))
            continue
        name = aliases.get(key.replace("-", "_"))
        is_tables = isinstance(value, list) and any(isinstance(v, dict) for v in value)
        if key == "compare" and tables and "models" in tables and is_tables:
            raise UsageError(
                f"config file {path}: write the models to compare as [[models]] tables "
                "(spec = ..., name = ..., weights = ..., args = {...}, input = ...), the "
                "first one being the main model; [[compare]] is not a key"
            )
        if name is None:
            if isinstance(value, dict):
                raise UsageError(
                    f"config file {path} has a table [{key}]; write this command's options as "
                    "keys at the top of the file (e.g. accel = 8), not in a table"
                )
            known = ", ".join(sorted(o.replace("_", "-") for o in aliases))
            raise UsageError(f"unknown key {key!r} in config file {path}; known keys: {known}")
        out[name] = _check(key, value, params[name], path)
    return out


def _check(key: str, value: Any, param: click.Option, path: Path) -> Any:
    """The value for ``param`` from the config, or a one-line :class:`UsageError`."""

    def refuse(got: str) -> UsageError:
        return UsageError(f"config key {key!r} in {path}: expected {_expected(param)}, got {got}")

    if param.multiple:
        array = isinstance(value, list)
        items = value if array else [value]
        for item in items:
            problem = _problem(item, param, element=array)
            if problem:
                raise refuse(problem)
        _convert(key, items, param, path)
        return items
    if isinstance(value, list) and param.name in _COMMA_LISTS:
        for item in value:
            if not isinstance(item, str):
                raise refuse(f"an array holding {_shown(item)}")
        value = ",".join(value)
    problem = _problem(value, param, element=False)
    if problem:
        raise refuse(problem)
    _convert(key, [value], param, path)
    return value


def _problem(value: Any, param: click.Option, *, element: bool) -> str | None:
    """What is wrong with one TOML value for ``param`` (in words), or None."""
    if isinstance(value, dict):
        return "a table" if not element else "an array of tables"
    if isinstance(value, list):
        return "an array" if not element else "an array of arrays"
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return f"a TOML date/time ({value.isoformat()})"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # inf, -inf, nan
    kind = _kind(param)
    if kind == "flag":
        return None if isinstance(value, bool) else _shown(value)
    if isinstance(value, bool):
        return _shown(value)
    if kind == "int":
        return None if isinstance(value, int) else _shown(value)
    if kind == "float":
        return None if isinstance(value, (int, float)) else _shown(value)
    if kind in ("path", "choice") or (kind == "string" and param.multiple):
        return None if isinstance(value, str) else _shown(value)
    return None if isinstance(value, (str, int, float)) else _shown(value)


def _convert(key: str, values: list[Any], param: click.Option, path: Path) -> None:
    """Check ranges and choices with the option's own type."""
    if _kind(param) == "flag":
        return
    try:
        for v in values:
            param.type.convert(v, param, None)
    except click.BadParameter as err:
        raise UsageError(f"config key {key!r} in {path}: {err.message}") from None


def _kind(param: click.Option) -> str:
    t = param.type
    if param.is_flag:
        return "flag"
    if isinstance(t, click.types.IntParamType):
        return "int"
    if isinstance(t, click.types.FloatParamType):
        return "float"
    if isinstance(t, click.Path):
        return "path"
    if isinstance(t, click.Choice):
        return "choice"
    if isinstance(t, click.types.StringParamType):
        return "string"
    return "other"


def _expected(param: click.Option) -> str:
    """What ``param`` takes, in words (``a finite number in 0<x<=1``, ``true or false``)."""
    t, kind = param.type, _kind(param)
    if kind == "flag":
        return "true or false"
    if kind in ("int", "float"):
        what = "an integer" if kind == "int" else "a finite number"
        if isinstance(t, click.types._NumberRangeBase) and (t.min, t.max) != (None, None):
            what += f" ({t._describe_range()})"
    elif kind == "path":
        what = "a path (a string)"
    elif kind == "choice":
        what = "one of " + ", ".join(repr(str(c)) for c in t.choices)
    elif kind == "string":
        what = "a string"
        if param.metavar:
            what += f" ({param.metavar})"
    else:
        what = getattr(t, "description", None) or f"a value ({t.name})"
    if param.multiple:
        what += " or an array of them"
    elif param.name in _COMMA_LISTS:
        what += " or an array of strings"
    return what


def _shown(value: Any) -> str:
    """A TOML value in words, for an error message."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__
