"""The keyword arguments of :func:`mri_audit.harden`, checked as ``mri-audit harden``'s flags are.

Every setting that ``mri-audit harden`` has goes through :func:`mri_audit.settings.check_settings`
with :data:`~mri_audit.settings.HARDEN` (one line per bad value, the same line the flag and the
``--config`` key get); the library-only forms (the model as a path, ``model_args`` as a dict)
are checked by their type here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from mri_audit.errors import UsageError
from mri_audit.models.entries import ModelEntry, with_arguments
from mri_audit.settings import HARDEN, check_settings, shown

__all__ = ["KEYWORDS", "check_keywords"]

KEYWORDS = frozenset(s.name for s in HARDEN if s.api) - {"model"}
"""The keyword arguments of :func:`mri_audit.harden` that are settings of ``HARDEN``."""


def _spec(model: Any) -> str:
    if isinstance(model, (str, os.PathLike)) and str(os.fspath(model)).strip():
        return str(os.fspath(model))
    raise UsageError(
        "model must be a spec (path/to/file.py:Name or package.module:Name; harden trains a "
        f"Python model class and loads it again for the before/after audit), got {shown(model)}"
    )


def _model_args(spec: str, model_args: Any) -> dict[str, Any]:
    """The constructor's keyword arguments: ``["k=v"]`` parsed as ``--model-arg`` values are,
    or a dict as it is."""
    from mri_audit.audit.keywords import check_model_args

    check_model_args(model_args)
    if isinstance(model_args, Mapping):
        bad = [k for k in model_args if not (isinstance(k, str) and k.isidentifier())]
        if bad:
            raise UsageError(f"model_args keys must be Python identifiers, got {shown(bad[0])}")
        return dict(model_args)
    (entry,) = with_arguments([ModelEntry(spec)], list(model_args))
    return dict(entry.args)


def check_keywords(model: Any, values: Mapping[str, Any], model_args: Any) -> dict[str, Any]:
    """The arguments of :func:`mri_audit.harden` checked as the CLI's flags are (one
    :class:`UsageError` line each), and the library-only ones by their type.

    Args:
        model: the model's spec.
        values: the keyword arguments named in :data:`KEYWORDS`.
        model_args: ``["k=v"]`` or ``{"k": v}``.

    Returns:
        every setting by name: ``model`` the spec, ``model_args`` a dict, ``accel`` a tuple,
        ``feature_steps_range`` a ``(low, high)`` pair.
    """
    spec = _spec(model)
    checked = check_settings(HARDEN, {**values, "model": spec})
    checked["model_args"] = _model_args(spec, model_args)
    steps = checked["feature_steps_range"]
    checked["feature_steps_range"] = steps if isinstance(steps, tuple) else (steps, steps)
    checked.update(_evaluation(checked))
    return checked


def _evaluation(c: Mapping[str, Any]) -> dict[str, int]:
    """The validation attacks' budget: by default 3x the training's candidates and 4x its inner
    steps (at least the 33 candidates and 32 steps of a strong audit); a weaker one is refused,
    since a defence is judged by an attack stronger than the one it was trained against."""
    low_candidates, low_steps = 3 * c["candidates"], 4 * c["inner_steps"]
    candidates = c["val_candidates"] or max(33, low_candidates)
    steps = c["val_steps"] or max(32, low_steps)
    if candidates < low_candidates:
        raise UsageError(
            f"--val-candidates {candidates} is below 3x --candidates ({low_candidates}): "
            "validate with an attack stronger than the training's"
        )
    if steps < low_steps:
        raise UsageError(
            f"--val-steps {steps} is below 4x --inner-steps ({low_steps}): validate with an "
            "attack stronger than the training's"
        )
    return {"val_candidates": candidates, "val_steps": steps}
