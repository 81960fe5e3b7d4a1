"""``--config`` files: TOML whose keys are a command's settings (flags given win).

Every value is checked here, before any work, by the same function that checks a flag's value
and the library's keyword arguments (:func:`mri_audit.settings.check_value`): a key names a
setting, a value has its type and range, and nothing TOML allows but no setting takes gets
through — ``inf`` and ``nan``, dates and times, tables (``[[compare]]`` included) and arrays where
one value is expected. Each refusal is one :class:`~mri_audit.errors.UsageError` line naming the
key and the file, then the setting's own message.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mri_audit.errors import UsageError
from mri_audit.settings import Setting, check_value

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["read_config"]


def read_config(
    path: str | Path,
    settings: Sequence[Setting],
    tables: Mapping[str, Callable[[Any, str], Any]] | None = None,
) -> dict[str, Any]:
    """Read a config file and check its keys and values against a command's settings.

    Keys may use dashes or underscores (``max-slices`` or ``max_slices``), and the library's
    keyword names are accepted too (``mask_type`` for ``mask``).

    Args:
        path: the TOML file.
        settings: the command's settings (:data:`mri_audit.settings.COMMANDS`).
        tables: keys that hold tables rather than a setting's value (``models`` for ``run``),
            each with the function that checks and converts it (``(value, path) -> value``).

    Returns:
        ``{click parameter name: value}``, ready for ``ctx.default_map``.

    Raises:
        UsageError: an unreadable file, invalid TOML, an unknown key, or a value the setting
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
    known = [s for s in settings if s.cli]
    aliases: dict[str, Setting] = {}
    for s in known:
        aliases.setdefault(s.name, s)
        aliases[s.key.replace("-", "_")] = s
    out = {}
    for key, value in data.items():
        if tables and key in tables:
            out[key] = tables[key](value, str(path))
            continue
        setting = aliases.get(key.replace("-", "_"))
        is_tables = isinstance(value, list) and any(isinstance(v, dict) for v in value)
        if key == "compare" and tables and "models" in tables and is_tables:
            raise UsageError(
                f"config file {path}: write the models to compare as [[models]] tables "
                "(spec = ..., name = ..., weights = ..., args = {...}, input = ...), the "
                "first one being the main model; [[compare]] is not a key"
            )
        if setting is None:
            if isinstance(value, dict):
                raise UsageError(
                    f"config file {path} has a table [{key}]; write this command's options as "
                    "keys at the top of the file (e.g. accel = 8), not in a table"
                )
            names = ", ".join(sorted(s.key for s in known))
            raise UsageError(f"unknown key {key!r} in config file {path}; known keys: {names}")
        try:
            check_value(setting, value)
        except UsageError as err:
            raise UsageError(f"config key {key!r} in {path}: {err}") from None
        if setting.multiple and not isinstance(value, list):
            value = [value]
        out[setting.dest] = value
    return out
