"""One validation layer for every setting of ``run``, ``map``, ``harden``, ``report`` and ``check``.

Each setting is described once (:class:`Setting`: type, range, default, help and when it
applies) in :mod:`mri_audit.settings.commands`; the CLI's flags (:mod:`mri_audit.cli.settings`),
the ``--config`` keys (:mod:`mri_audit.cli.config_files`) and the library's keyword arguments
(:func:`mri_audit.audit`) all pass through :func:`check_settings`, so a bad value gets the same
one-line :class:`~mri_audit.errors.UsageError` (exit 2) from each.
"""

from __future__ import annotations

from mri_audit.settings.commands import CHECK, COMMANDS, HARDEN, MAP, REPORT, RUN, VERIFY
from mri_audit.settings.spec import Setting, check_settings, check_value, shown

__all__ = [
    "CHECK",
    "COMMANDS",
    "HARDEN",
    "MAP",
    "REPORT",
    "VERIFY",
    "RUN",
    "Setting",
    "check_settings",
    "check_value",
    "shown",
]
