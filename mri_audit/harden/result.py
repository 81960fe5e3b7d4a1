"""The result of :func:`mri_audit.harden`: plain data about the kept weights and how they were
chosen, and the before/after audit."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mri_audit.audit.result import AuditResult

__all__ = ["HardenResult"]


@dataclass(frozen=True)
class HardenResult:
    """What a hardening run chose, on what figures, and the before/after audit.

    Every validation entry is a dict with ``epoch``, ``ssim``, ``nmse``, ``psnr``, ``rs_rate``
    and ``pgd_rate`` (the validation ``fnaf-rs`` and ``fnaf-pgd`` rates on the held-out
    ``select`` slices, :mod:`mri_audit.harden.validation`) and ``attack_rate`` (the
    ``fnaf-pgd`` rate, which the kept weights are chosen by); an epoch's entry
    also has ``train_loss`` and ``train_hits``, a blend's ``alpha``. These are the lines
    ``mri-audit harden`` prints and the card's ``summary``.

    Attributes:
        out: the kept weights (a state dict).
        original: the starting weights the before/after audit compares with (``weights``, or
            ``<out>.start.pt`` for a model given without them).
        card: ``<out>.json`` (None on the other processes of a ``torchrun`` job).
        checkpoint: ``<out>.ckpt`` when it is kept (``keep_checkpoint``, or a before/after
            audit that did not pass), else None.
        report_out: the before/after audit's folder (None with ``no_report``).
        config: the run's settings as stored in the checkpoint and the card.
        start: the validation of the starting weights.
        history: one validation entry per epoch, in order.
        blends: the validation entries of the ``interpolate`` blends, in order.
        best: the kept entry (``fallback: True`` when nothing met the tolerances and the last
            epoch was kept).
        seconds: the training's wall time in this call (a resumed run's earlier time is not
            counted).
        audit: the before/after audit of the kept weights against the original (None with
            ``no_report``).
    """

    out: Path
    original: Path
    card: Path | None
    checkpoint: Path | None
    report_out: Path | None
    config: dict[str, Any]
    start: dict[str, Any]
    history: list[dict[str, Any]]
    blends: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    audit: AuditResult | None = None

    @property
    def validation(self) -> list[dict[str, Any]]:
        """Every validation entry in the order it was made: the start (``epoch`` 0), each epoch,
        then the blends."""
        return [{"epoch": 0, **self.start}, *self.history, *self.blends]

    @property
    def summary(self) -> dict[str, Any]:
        """The card's ``summary``: ``start``, ``history``, ``blends`` and ``best``."""
        return {
            "start": self.start,
            "history": self.history,
            "blends": self.blends,
            "best": self.best,
        }

    @property
    def selected_epoch(self) -> int:
        """The epoch of the kept weights (a blend's: the epoch blended with the start)."""
        return int(self.best["epoch"])

    @property
    def blend(self) -> float | None:
        """The kept blend's weight ``a`` of ``(1-a)*start + a*final``; None for an epoch."""
        return self.best.get("alpha")

    @property
    def fallback(self) -> bool:
        """Whether nothing stayed within the SSIM and NMSE tolerances (the last epoch is kept)."""
        return bool(self.best.get("fallback"))

    @property
    def attack_rate_before(self) -> float:
        """The starting weights' validation ``fnaf-pgd`` attack rate (a fraction)."""
        return float(self.start["attack_rate"])

    @property
    def attack_rate_after(self) -> float:
        """The kept weights' validation ``fnaf-pgd`` attack rate (a fraction)."""
        return float(self.best["attack_rate"])

    @property
    def ssim_before(self) -> float:
        """The starting weights' validation SSIM."""
        return float(self.start["ssim"])

    @property
    def ssim_after(self) -> float:
        """The kept weights' validation SSIM."""
        return float(self.best["ssim"])

    @property
    def nmse_before(self) -> float:
        """The starting weights' validation NMSE."""
        return float(self.start["nmse"])

    @property
    def nmse_after(self) -> float:
        """The kept weights' validation NMSE."""
        return float(self.best["nmse"])

    @property
    def before_after(self) -> dict[str, Any] | None:
        """The before/after audit's ``clean`` metrics and ``attacks`` per model (as the card
        stores them), or None without that audit."""
        if self.audit is None or self.audit.results is None:
            return None
        return {"clean": self.audit.results["clean"], "attacks": self.audit.results["attacks"]}

    @property
    def exit_code(self) -> int:
        """The CLI's exit status: the before/after audit's (0 without one)."""
        return 0 if self.audit is None else self.audit.exit_code
