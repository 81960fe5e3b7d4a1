"""The keyword arguments of :func:`mri_audit.audit`, checked as the CLI's flags are.

Every setting that ``mri-audit run`` has goes through :func:`mri_audit.settings.check_settings`
(one line per bad value, the same line the flag and the ``--config`` key get); the library-only
arguments (models as objects, ``compare``, ``model_args`` as a dict, ``attack_options``) are
checked by their type here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from mri_audit.errors import UsageError
from mri_audit.models.entries import ModelEntry
from mri_audit.settings import RUN, check_settings, shown

__all__ = ["KEYWORDS", "SETTINGS", "check_keywords", "check_model_args", "model_entry"]

KEYWORDS = frozenset(s.name for s in RUN if s.api) - {"model"}
SETTINGS = (
    *("accel", "center_fraction", "mask_type", "attacks", "criterion", "margin"),
    *("min_recovery", "threshold", "ip_epsilon", "candidates", "feature", "feature_steps"),
    *("feature_size", "feature_width", "window", "insert", "seed", "precision"),
)
"""The keyword arguments that become the audit's configuration (with ``attack_options``)."""


def model_entry(
    model: Any, name: str | None = None, weights: str | None = None, what: str = "model"
) -> ModelEntry:
    if isinstance(model, ModelEntry):
        return model if name is None else model._replace(name=name)
    if isinstance(model, (str, Path)) and str(model).strip():
        return ModelEntry(str(model), name, None if weights is None else str(weights))
    if isinstance(model, nn.Module):
        return ModelEntry(model, name, None if weights is None else str(weights))
    if isinstance(model, tuple) and len(model) == 2:  # (spec, weights)
        return model_entry(model[0], name, model[1], what)
    raise UsageError(
        f"{what} must be a spec (path/to/file.py:Name, package.module:Name or a .pt2 or "
        f"TorchScript file), an nn.Module, a (spec, weights) pair or a ModelEntry, got "
        f"{shown(model)}"
    )


def check_model_args(model_args: Any) -> None:
    """``model_args``: a dict ``{"key": value}`` or a list of ``"key=value"`` strings.

    Raises:
        UsageError: anything else, as one line.
    """
    if (
        isinstance(model_args, str)
        or not isinstance(model_args, (Mapping, Sequence))
        or (not isinstance(model_args, Mapping) and not all(isinstance(a, str) for a in model_args))
    ):
        raise UsageError(
            "model_args must be a dict {'key': value} or a list of 'key=value' strings, got "
            f"{shown(model_args)}"
        )


def check_keywords(values: dict[str, Any], model_args: Any, compare: Any, attack_options: Any):
    """The keyword arguments of :func:`audit` checked as the CLI's flags are (one
    :class:`UsageError` line each), and the library-only ones by their type.

    Returns:
        the checked settings (by keyword name), ``compare`` as a list.
    """
    data = values.get("data")
    dataset = data is not None and not isinstance(data, (str, os.PathLike, int, float, bool))
    if dataset:  # a dataset object (mri_audit.data), not a path
        values = {**values, "data": None}
    checked = check_settings(RUN, values)
    if dataset:
        checked["data"] = data
    if isinstance(compare, (str, Path, nn.Module, ModelEntry)):
        compare = [compare]
    elif not isinstance(compare, Sequence):
        raise UsageError(f"compare must be a list of models, got {shown(compare)}")
    check_model_args(model_args)
    options = attack_options or {}
    if not isinstance(options, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Mapping) for k, v in options.items()
    ):
        raise UsageError(
            "attack_options must be a dict {attack: {parameter: value}}, e.g. "
            f"{{'fnaf-pgd': {{'steps': 20}}}}, got {shown(attack_options)}"
        )
    stray = sorted(set(options) - set(checked["attacks"]))
    if stray:
        raise UsageError(
            f"attack_options names {stray[0]!r}, which is not among attacks "
            f"({', '.join(checked['attacks'])}); add it to attacks or remove its options"
        )
    return checked, list(compare)
