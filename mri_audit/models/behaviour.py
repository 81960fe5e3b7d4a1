"""The dry run's two behaviour checks: is the model stochastic, does it couple batch items?

On the slice the dry run already uses, before any attack:

- *determinism*: the same input twice, torch's global generator in two different states;
- *batch coupling*: the slice alone, then the same slice first in a batch with another input.

A difference larger than :data:`TOLERANCE` of the clean output's range means the model is
stochastic, or couples its batch items. The tolerance is far above what kernels' own
nondeterminism reaches (float32 rounding, a GPU's atomic additions and algorithm choices: a few
1e-7 of the range, 1e-5 at worst with TF32 on Ampere and later), and far below the noise of any
sampler (a posterior sampler's spread is a few percent of the range). A model may declare
either (``mri_audit_stochastic = True``, ``mri_audit_batch_coupled = True``, or ``False``); the
declaration decides, and a check that contradicts it is a one-line warning.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch

__all__ = ["Behaviour", "TOLERANCE", "DEFAULT_SAMPLES", "probe_behaviour", "declared"]

logger = logging.getLogger(__name__)

TOLERANCE = 1e-4
"""Largest difference (a share of the clean output's range) that still counts as equal."""

DEFAULT_SAMPLES = 8
"""Reconstructions per input that an audit averages for a stochastic model (``--samples``)."""


class Behaviour(NamedTuple):
    """What the dry run found (and the model declared).

    Attributes:
        stochastic: the model is audited as stochastic (keyed noise, several samples).
        coupled: the model is audited as batch-coupled (one item per forward pass).
        stochastic_gap: largest difference of two runs of one input, as a share of the
            output's range.
        coupled_gap: largest difference of a slice alone and in a batch (None: not measurable,
            a stochastic model without ``generator=`` runs one item at a time anyway).
        declared_stochastic, declared_coupled: the model's own declarations (None: none).
        generator: ``forward`` takes ``generator=`` (per-item generators, stays batched).
    """

    stochastic: bool
    coupled: bool
    stochastic_gap: float
    coupled_gap: float | None
    declared_stochastic: bool | None
    declared_coupled: bool | None
    generator: bool

    def to_dict(self) -> dict:
        """The record in ``results.json`` (the model's ``behaviour``)."""
        return {**self._asdict(), "tolerance": TOLERANCE}

    def describe(self, samples: int) -> str:
        """One line for ``check`` and the report: what the audit does with the model."""
        kind = []
        if self.stochastic:
            kind.append(f"stochastic ({samples} samples)")
        if self.coupled:
            kind.append("batch-coupled (run one at a time)")
        label = ", ".join(kind) or "deterministic"
        coupled = "not measured" if self.coupled_gap is None else f"{self.coupled_gap:.1e}"
        return (
            f"{label}: two runs of one input differ by {self.stochastic_gap:.1e} of the "
            f"output's range, a slice alone and in a batch by {coupled} (tolerance "
            f"{TOLERANCE:g})"
        )

    def warnings(self, name: str) -> list[str]:
        """One line per declaration the checks contradict."""
        out = []
        measured_s = self.stochastic_gap > TOLERANCE
        if self.declared_stochastic is not None and self.declared_stochastic != measured_s:
            out.append(
                f"{name} declares mri_audit_stochastic = {self.declared_stochastic}, but two runs "
                f"of one input differ by {self.stochastic_gap:.1e} of the output's range "
                f"(tolerance {TOLERANCE:g}); audited as declared"
            )
        gap = self.coupled_gap
        if self.declared_coupled is not None and gap is not None:
            if self.declared_coupled != (gap > TOLERANCE):
                out.append(
                    f"{name} declares mri_audit_batch_coupled = {self.declared_coupled}, but a "
                    f"slice alone and in a batch differ by {gap:.1e} of the output's range "
                    f"(tolerance {TOLERANCE:g}); audited as declared"
                )
        return out


def declared(model: torch.nn.Module, attribute: str) -> bool | None:
    """A model's declaration (``True``/``False``), looking through wrappers; None when absent."""
    for obj in (model, getattr(model, "module", None), getattr(model, "_orig_mod", None)):
        value = getattr(obj, attribute, None) if obj is not None else None
        if isinstance(value, bool):
            return value
    return None


def _gap(a: torch.Tensor, b: torch.Tensor, scale: float) -> float:
    return float((a.float() - b.float()).abs().max()) / scale


def probe_behaviour(estimator, masked: torch.Tensor, mask: torch.Tensor, nlf) -> Behaviour:
    """Run the two checks on one slice and set ``estimator.call`` from them.

    Call inside :meth:`Reconstructor.evaluation` and ``torch.no_grad()``.

    Shape:
        masked: ``(1, coils, H, W)`` complex; mask: ``(1, 1, 1, W)``.
    """
    call = estimator.call
    call.stochastic = call.coupled = False

    def run(x: torch.Tensor, seed: int) -> torch.Tensor:
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            torch.manual_seed(seed)
            return estimator.reconstruct(x, mask.expand(x.shape[0], *mask.shape[1:]), **_nlf(nlf))

    first = run(masked, 11)
    scale = max(float(first.max() - first.min()), 1e-12)
    stochastic_gap = _gap(first, run(masked, 12), scale)
    model = estimator.model
    said_s, said_c = (
        declared(model, "mri_audit_stochastic"),
        declared(model, "mri_audit_batch_coupled"),
    )
    stochastic = said_s if said_s is not None else stochastic_gap > TOLERANCE
    other = torch.flip(masked, dims=(-2,)) * 0.5 + masked.roll(7, dims=-2) * 0.5
    pair = torch.cat([masked, other])
    coupled_gap: float | None = None
    if not stochastic:
        coupled_gap = _gap(run(masked, 11), run(pair, 11)[:1], scale)
    elif call.generator:  # per-item generators: the same noise alone and in the batch
        call.stochastic = True
        try:
            with call.noise([5]):
                alone = run(masked, 11)
            with call.noise([5, 6]):
                together = run(pair, 13)[:1]
        finally:
            call.stochastic = False
        coupled_gap = _gap(alone, together, scale)
    coupled = said_c if said_c is not None else bool(coupled_gap and coupled_gap > TOLERANCE)
    call.stochastic, call.coupled = bool(stochastic), bool(coupled)
    estimator.samples = DEFAULT_SAMPLES if stochastic else 1
    return Behaviour(
        stochastic=bool(stochastic),
        coupled=bool(coupled),
        stochastic_gap=stochastic_gap,
        coupled_gap=coupled_gap,
        declared_stochastic=said_s,
        declared_coupled=said_c,
        generator=call.generator,
    )


def _nlf(nlf) -> dict:
    return {"num_low_frequencies": nlf}
