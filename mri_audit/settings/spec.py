"""A setting described once: its type, range, default, help and when it applies.

Every option of ``run``, ``map``, ``harden`` and ``report`` is a :class:`Setting` (see
:mod:`mri_audit.settings.catalog`). The command line's flags, the ``--config`` file's keys and the
library's keyword arguments all pass through :func:`check_value` and :func:`check_settings`, so
a bad value gets the same one-line :class:`~mri_audit.errors.UsageError` from each of them:
``--margin must be a number in (0, 1], got 20``. No torch or click here: the CLI imports it at
start-up.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mri_audit.errors import UsageError

__all__ = ["Setting", "check_value", "check_settings", "shown"]

KINDS = ("int", "float", "choice", "flag", "text", "path", "batch", "steps", "names", "texts")
"""int, float (finite), choice (one of ``choices``), flag (true/false), text (a string), path (a
string or ``os.PathLike``), batch (``auto`` or a positive integer), steps (``N`` or
``LOW-HIGH``), names (a comma-separated list of names), texts (repeatable strings)."""


@dataclass(frozen=True)
class Setting:
    """One option of a command, described once.

    Attributes:
        name: the library's keyword argument (and the ``--config`` key, with ``-`` or ``_``).
        kind: one of :data:`KINDS`.
        default: the default value (None: not set).
        help: the option's help text.
        low, high, low_open, high_open: the range of an ``int``/``float`` (None: unbounded).
        choices: the values of a ``choice``.
        hint: what a value means, said in an error (``a fraction: 0.2 is 20%``).
        flag: the command-line flag (default ``--`` + the name with dashes).
        dest: the click parameter's name when it is not ``name``.
        metavar: shown in ``--help``.
        multiple: the flag is repeatable (a list of values).
        required: the command needs it.
        applies: ``(values) -> None`` when the setting applies to the other settings' values,
            else the reason it would be ignored (``applies to --criterion paper, not erasure;
            remove it or choose --criterion paper``). Only a value other than the default is
            refused.
        cli: whether the command line (and ``--config``) has it.
        api: whether the library's entry point takes it as a keyword argument.
    """

    name: str
    kind: str
    default: Any = None
    help: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    hint: str = ""
    flag: str = ""
    dest: str = ""
    metavar: str | None = None
    multiple: bool = False
    required: bool = False
    applies: Callable[[Mapping[str, Any]], str | None] | None = field(default=None, compare=False)
    cli: bool = True
    api: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown setting kind {self.kind!r}")
        if not self.flag:
            object.__setattr__(self, "flag", "--" + self.name.replace("_", "-"))
        if not self.dest:
            object.__setattr__(self, "dest", self.name)

    @property
    def key(self) -> str:
        """The ``--config`` key (the flag without dashes)."""
        return self.flag.lstrip("-")

    def expected(self) -> str:
        """What the setting takes, in words (``a number in (0, 1]``, ``an integer >= 1``)."""
        if self.kind in ("int", "float"):
            what = "an integer" if self.kind == "int" else "a finite number"
            rng = self._range()
            if rng:
                what = ("an integer" if self.kind == "int" else "a number") + rng
        elif self.kind == "choice":
            what = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.kind == "flag":
            what = "true or false"
        elif self.kind == "batch":
            what = "'auto' or a positive integer"
        elif self.kind == "steps":
            what = "a whole number N >= 1 or a range LOW-HIGH with 1 <= LOW <= HIGH"
        elif self.kind == "names":
            what = "comma-separated names (or a list of them)"
        elif self.kind == "path":
            what = "a path"
        else:
            what = "a string" + (f" ({self.metavar})" if self.metavar else "")
        if self.multiple:
            what += " or a list of them"
        return what

    def _range(self) -> str:
        lo, hi = (None if v is None else _num(v) for v in (self.low, self.high))
        if lo is None and hi is None:
            return ""
        if lo is not None and hi is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f" in {left}{lo}, {hi}{right}"
        if lo is not None:
            return f" {'>' if self.low_open else '>='} {lo}"
        return f" {'<' if self.high_open else '<='} {hi}"

    def refuse(self, got: Any, what: str | None = None) -> UsageError:
        """The one-line error for a bad value of this setting."""
        hint = f" ({self.hint})" if self.hint else ""
        return UsageError(f"{self.flag} must be {what or self.expected()}{hint}, got {shown(got)}")


def _num(v: float) -> str:
    return str(v) if isinstance(v, int) else format(v, "g")


def shown(value: Any) -> str:
    """A value in an error message: strings quoted, numbers as written, types named."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (str, int, float)):
        return repr(value)
    if value is None:
        return "nothing"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, (dt.date, dt.time)):  # datetime is a date
        return f"a date/time ({value.isoformat()})"
    return f"a {type(value).__name__}"


def _number(s: Setting, value: Any, text: bool) -> float | int:
    raw = value  # what the user wrote, for the message
    if isinstance(value, bool) or not isinstance(
        value, (int, float, str) if text else (int, float)
    ):
        raise s.refuse(raw)
    if isinstance(value, str):
        try:
            value = int(value.strip()) if s.kind == "int" else float(value.strip())
        except ValueError:
            raise s.refuse(raw) from None
    if s.kind == "int" and not isinstance(value, int):
        raise s.refuse(raw)
    if isinstance(value, float) and not math.isfinite(value):
        raise s.refuse(raw)
    lo, hi = s.low, s.high
    if lo is not None and (value < lo or (s.low_open and value == lo)):
        raise s.refuse(raw)
    if hi is not None and (value > hi or (s.high_open and value == hi)):
        raise s.refuse(raw)
    return float(value) if s.kind == "float" else value


def _steps(s: Setting, value: Any) -> int | tuple[int, int]:
    if isinstance(value, (tuple, list)) and len(value) == 2:
        low, high = value
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value) and 1 <= low <= high:
            return (low, high)
        raise s.refuse(list(value) if isinstance(value, list) else value)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise s.refuse(value)
    text = str(value).strip()
    try:
        if "-" in text.lstrip("-") and not text.startswith("-"):
            low, high = (int(v) for v in text.split("-", 1))
            if 1 <= low <= high:
                return (low, high)
        elif int(text) >= 1:
            return int(text)
    except ValueError:
        pass
    raise s.refuse(value)


def _names(s: Setting, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        items = [p for v in value for p in v.split(",")]
    else:
        raise s.refuse(value)
    names = tuple(v.strip() for v in items if v.strip())
    if not names:
        raise s.refuse(value, "at least one name" + (f" ({s.metavar})" if s.metavar else ""))
    return names


def check_value(s: Setting, value: Any, *, text: bool = False) -> Any:
    """``value`` of setting ``s`` checked and converted: a native value from a config file or a
    keyword argument, or (``text=True``) a flag's text, which may spell a number.

    Returns:
        the value in its type: int, float, str, bool, a tuple of names, ``(low, high)``, or
        None (a setting whose default is None, not given).

    Raises:
        UsageError: a value of the wrong type, out of range, NaN or infinite, in one line
            naming the flag, what it takes and what it got.
    """
    if value is None:
        if (s.default is None or s.kind == "batch") and not s.required:
            return None
        raise s.refuse(value)
    if s.multiple:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            value = [value]
        single = Setting(**{**s.__dict__, "multiple": False})
        return tuple(check_value(single, v, text=text) for v in value)
    k = s.kind
    if k in ("int", "float"):
        return _number(s, value, text)
    if k == "flag":
        if isinstance(value, bool):
            return value
        raise s.refuse(value)
    if k == "choice":
        if isinstance(value, str) and value in s.choices:
            return value
        raise s.refuse(value)
    if k == "batch":
        if isinstance(value, str) and value.strip().lower() == "auto":
            return None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        if text and isinstance(value, str) and value.strip().isdigit() and int(value) >= 1:
            return int(value)
        raise s.refuse(value)
    if k == "steps":
        return _steps(s, value)
    if k == "names":
        return _names(s, value)
    if k == "path":
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if isinstance(value, str) and value.strip():
            return value
        raise s.refuse(value)
    if isinstance(value, str):  # text
        return value
    raise s.refuse(value)


def check_settings(
    settings: Sequence[Setting], values: Mapping[str, Any], *, by: str = "name", text: bool = False
) -> dict[str, Any]:
    """Check every value, then refuse any set to something other than its default where it
    does not apply (it would be silently ignored).

    Args:
        settings: the command's settings.
        values: their values, keyed by ``name`` (the library) or ``dest`` (click's ``opts``);
            a missing key takes the default.
        by: ``"name"`` or ``"dest"``.
        text: the values may be a flag's text (``"0.2"``); defaults are always native.

    Returns:
        every setting's checked value, keyed by ``name``.

    Raises:
        UsageError: the first bad or inapplicable value, in one line.
    """
    settings = [s for s in settings if (s.cli if by == "dest" else s.api)]
    out: dict[str, Any] = {}
    for s in settings:
        key = getattr(s, by)
        out[s.name] = check_value(s, values.get(key, s.default), text=text)
    for s in settings:
        if s.applies is None:
            continue
        default = None if s.default is None else check_value(s, s.default)
        if out[s.name] != default:
            reason = s.applies(out)
            if reason:
                raise UsageError(f"{s.flag} {reason}")
    return out
