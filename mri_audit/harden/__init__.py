"""FNAF-robust fine-tuning: the library entry point, trainer, losses, weight blends, resume.

This package is also the entry point itself: ``mri_audit.harden(model, ...)`` calls
:func:`mri_audit.harden.api.harden` (the package is callable), and returns a
:class:`~mri_audit.harden.result.HardenResult`. ``mri-audit harden`` parses its options into
that call and prints what it returns.
"""

from __future__ import annotations

import sys
import types


class _CallablePackage(types.ModuleType):
    """``mri_audit.harden`` is both this package and the function :func:`.api.harden`."""

    def __call__(self, *args, **kwargs):
        from mri_audit.harden.api import harden

        return harden(*args, **kwargs)

    @property
    def __signature__(self):
        import inspect

        from mri_audit.harden.api import harden

        return inspect.signature(harden)


sys.modules[__name__].__class__ = _CallablePackage
