"""Audits: the library entry point, journal, identity, statistics, verdict, distributed runs,
the feature-recovery map.

This package is also the entry point itself: ``mri_audit.audit(model, ...)`` calls
:func:`mri_audit.audit.api.audit` (the package is callable), and returns an
:class:`~mri_audit.audit.result.AuditResult`.
"""

from __future__ import annotations

import sys
import types


class _CallablePackage(types.ModuleType):
    """``mri_audit.audit`` is both this package and the function :func:`.api.audit`."""

    def __call__(self, *args, **kwargs):
        from mri_audit.audit.api import audit

        return audit(*args, **kwargs)

    @property
    def __signature__(self):
        import inspect

        from mri_audit.audit.api import audit

        return inspect.signature(audit)


sys.modules[__name__].__class__ = _CallablePackage
