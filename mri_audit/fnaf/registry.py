"""Attacks registered through the ``mri_audit.attacks`` entry-point group.

mri-audit's own attacks are declared in its ``pyproject.toml`` exactly as a third party would
declare one in theirs; this module never imports the ``attacks`` package directly.
"""

from __future__ import annotations

import inspect
import logging
from importlib.metadata import EntryPoint, entry_points

from mri_audit.errors import UsageError

__all__ = ["GROUP", "available_attacks", "load_attack", "attack_parameters"]

GROUP = "mri_audit.attacks"
logger = logging.getLogger(__name__)


def available_attacks() -> dict[str, EntryPoint]:
    """Registered attack names and their entry points, sorted by name."""
    eps = {ep.name: ep for ep in entry_points(group=GROUP)}
    return dict(sorted(eps.items()))


def load_attack(name: str) -> type:
    """The attack class registered under ``name``.

    Raises:
        UsageError: no attack has that name (the message lists the known ones), or its entry
            point cannot be loaded.
    """
    known = available_attacks()
    if name not in known:
        listing = ", ".join(known) or "none (is mri-audit installed? try `pip install -e .`)"
        raise UsageError(f"unknown attack {name!r}; known attacks: {listing}")
    try:
        return known[name].load()
    except Exception as err:  # a broken third-party plugin must not crash the CLI
        raise UsageError(
            f"attack {name!r} ({known[name].value}) failed to load: {type(err).__name__}: {err}"
        ) from err


def attack_parameters(cls: type) -> dict[str, object]:
    """Keyword parameters of an attack class and their defaults (merged over its bases)."""
    params: dict[str, object] = {}
    for klass in reversed(cls.__mro__):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind is p.KEYWORD_ONLY:
                params[p.name] = p.default
    return params
