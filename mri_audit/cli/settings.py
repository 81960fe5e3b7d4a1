"""Click options made from the settings catalogue, and their values checked in one place.

Click passes every value through unchanged (:class:`Raw`): a flag's text or a ``--config``
file's value reaches :func:`checked`, which checks all of them with
:func:`mri_audit.settings.check_settings`, the function the library's entry points call too, so
the same bad value gets the same one-line error from a flag, a config key and a keyword argument.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import click

from mri_audit.settings import Setting, check_settings

__all__ = ["Raw", "checked", "config_option", "setting_options"]


class Raw(click.ParamType):
    """Any value, unchanged: checking is :func:`checked`'s (one message for every entry)."""

    name = "value"

    def __init__(self, setting: Setting) -> None:
        self.setting = setting

    def convert(self, value: Any, param, ctx) -> Any:
        return value

    def get_metavar(self, param, ctx=None) -> str | None:  # click >= 8.2 passes ctx
        s = self.setting
        if s.metavar:
            return s.metavar
        if s.kind == "choice":
            return "[" + "|".join(s.choices) + "]"
        return {"int": "INTEGER", "float": "FLOAT", "path": "PATH"}.get(s.kind, "TEXT")


def _option(s: Setting) -> Callable:
    kwargs: dict[str, Any] = {"help": s.help, "required": s.required}
    if s.kind == "flag":
        return click.option(s.flag, s.dest, is_flag=True, default=bool(s.default), **kwargs)
    default = s.default
    if isinstance(default, tuple) and not s.multiple:  # a names list: shown as written
        default = ",".join(default)
    if s.kind == "steps" and isinstance(default, tuple):
        default = "-".join(map(str, default))
    show = default not in (None, (), "") and not s.required
    return click.option(
        s.flag,
        s.dest,
        type=Raw(s),
        default=default,
        show_default=show,
        multiple=s.multiple,
        **kwargs,
    )


def setting_options(settings: Sequence[Setting], *, skip: Sequence[str] = ()) -> Callable:
    """A decorator adding a click option for every command-line setting (in catalogue order)."""
    chosen = [s for s in settings if s.cli and s.name not in skip]

    def apply(func: Callable) -> Callable:
        for s in reversed(chosen):
            func = _option(s)(func)
        return func

    return apply


def checked(settings: Sequence[Setting], opts: dict[str, Any]) -> dict[str, Any]:
    """The command's options checked and converted, keyed by click's names (``opts``' keys).

    Raises:
        UsageError: the first bad or inapplicable value (exit 2).
    """
    values = check_settings(settings, opts, by="dest", text=True)
    out = dict(opts)
    for s in settings:
        if s.cli:
            out[s.dest] = values[s.name]
    return out


def config_option(command: str, tables: dict | None = None) -> Callable:
    """``--config FILE``: TOML whose keys are the command's settings (flags still win)."""

    def load(ctx: click.Context, param: click.Parameter, value: str | None):
        if value is None:
            return None
        from mri_audit.cli.config_files import read_config
        from mri_audit.settings import COMMANDS

        settings = read_config(value, COMMANDS[command], tables=tables and tables())
        models = settings.pop("models", None)
        if models is not None:
            ctx.meta["mri_audit.models"] = models
        ctx.default_map = {**(ctx.default_map or {}), **settings}
        return value

    return click.option(
        "--config",
        type=click.Path(dir_okay=False),
        callback=load,
        is_eager=True,
        expose_value=False,
        help="TOML file whose keys are this command's options (e.g. accel = 8); flags win.",
    )
