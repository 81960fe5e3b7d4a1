"""What ``harden`` cannot train, refused in one line before any training."""

from __future__ import annotations

from pathlib import Path

from mri_audit.errors import ModelError

__all__ = ["refuse_program", "refuse_untrainable"]

_PROGRAMS = (
    "harden fine-tunes a Python model class; TorchScript and exported (.pt2) models cannot be "
    "trained here: pass path/to/file.py:Name with --weights"
)


def refuse_program(spec: str) -> None:
    """TorchScript and ``.pt2`` programs cannot be trained: refused before the data is read or
    the model dry-run (a program that does not fit the data would otherwise fail first)."""
    from mri_audit.models.loading import PROGRAM_SUFFIXES

    target, sep, _ = spec.rpartition(":")
    target = target if sep and not (len(target) == 1 and target.isalpha()) else spec
    program = Path(target).suffix.lower() in PROGRAM_SUFFIXES
    if program or (not sep and Path(spec).is_file() and Path(spec).suffix.lower() != ".py"):
        raise ModelError(_PROGRAMS)


def refuse_untrainable(opened) -> None:
    """After the dry run: a program (whatever its file name) or a stochastic model.

    Raises:
        ModelError: one line naming why and what to do instead.
    """
    from mri_audit.models.exported import PROGRAM_KINDS

    if opened.loaded.kind in PROGRAM_KINDS:
        raise ModelError(_PROGRAMS)
    est = opened.estimator
    if est.call.stochastic:
        raise ModelError(
            f"{est.name} is stochastic (two runs of one input differ by "
            f"{est.behaviour.stochastic_gap:.1e} of the output's range): hardening a sampler is "
            "out of scope here; audit it with mri-audit run, which averages its samples"
        )
