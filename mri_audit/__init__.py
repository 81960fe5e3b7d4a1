"""mri-audit: audit PyTorch MRI reconstruction models for false negatives (FNAF attacks).

The library entry points are :func:`audit` (``mri_audit.audit(model, ...) -> AuditResult``) and
:func:`harden` (``mri_audit.harden(model, ..., out=...) -> HardenResult``); the command line
(``mri-audit run``, ``mri-audit harden``) calls them.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "audit", "AuditResult", "harden", "HardenResult", "Reconstructor"]


def __getattr__(name: str):
    # Torch and ART are slow to import; load them only when asked for (the CLI starts fast).
    if name == "audit":  # the subpackage, which is callable: mri_audit.audit(model, ...)
        import importlib

        return importlib.import_module("mri_audit.audit")
    if name == "AuditResult":
        from mri_audit.audit.result import AuditResult

        return AuditResult
    if name == "harden":  # the subpackage, which is callable: mri_audit.harden(model, ...)
        import importlib

        return importlib.import_module("mri_audit.harden")
    if name == "HardenResult":
        from mri_audit.harden.result import HardenResult

        return HardenResult
    if name == "Reconstructor":
        from mri_audit.models.estimator import Reconstructor

        return Reconstructor
    raise AttributeError(f"module 'mri_audit' has no attribute {name!r}")
