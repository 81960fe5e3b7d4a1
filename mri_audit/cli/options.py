"""Click types for the commands whose options are not settings of the catalogue (``data synth``);
``run``, ``map``, ``harden``, ``report`` and ``check`` make theirs from
:mod:`mri_audit.settings` (see :mod:`mri_audit.cli.settings`)."""

from __future__ import annotations

import math

import click


class _Finite:
    """Refuses ``inf`` and ``nan``, which Python's ``float()`` (and click) accept."""

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)  # type: ignore[misc]
        if isinstance(rv, float) and not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)  # type: ignore[attr-defined]
        return rv


class FiniteFloat(_Finite, click.types.FloatParamType):
    """A float option that refuses ``inf`` and ``nan``."""


class FiniteFloatRange(_Finite, click.FloatRange):
    """:class:`click.FloatRange` that also refuses ``nan`` (which passes every bound) and
    ``inf``."""
