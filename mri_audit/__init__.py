"""mri-audit: audit PyTorch MRI reconstruction models for false negatives (FNAF attacks)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "Reconstructor"]


def __getattr__(name: str):
    # The estimator pulls in ART (slow to import); load it only when asked for.
    if name == "Reconstructor":
        from mri_audit.models.estimator import Reconstructor

        return Reconstructor
    raise AttributeError(f"module 'mri_audit' has no attribute {name!r}")
