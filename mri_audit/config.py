"""``--config`` files: TOML whose keys are a command's options (flags given win)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mri_audit.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["read_config"]


def read_config(path: str | Path, command: click.Command) -> dict:
    """Read a config file and check its keys and value types against ``command``'s options.

    Keys may use dashes or underscores (``max-slices`` or ``max_slices``); values are checked
    with the option's own type, so a wrong type fails here with the key named.
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
        name = aliases.get(key.replace("-", "_"))
        if name is None:
            known = ", ".join(sorted(o.replace("_", "-") for o in aliases))
            raise UsageError(f"unknown key {key!r} in config file {path}; known keys: {known}")
        param = params[name]
        if isinstance(value, dict):
            raise UsageError(f"config key {key!r} in {path} must be a value, not a table")
        if param.multiple:
            value = value if isinstance(value, list) else [value]
        elif isinstance(value, list):
            value = ",".join(str(v) for v in value) if name == "attack_list" else value
        try:
            if param.multiple:
                [param.type.convert(v, param, None) for v in value]
            elif param.is_flag:
                if not isinstance(value, bool):
                    raise click.BadParameter(f"expected true or false, got {value!r}")
            else:
                param.type.convert(value, param, None)
        except click.BadParameter as err:
            raise UsageError(f"config key {key!r} in {path}: {err.message}") from None
        out[name] = value
    return out
