"""Degradation attacks: bounded perturbations that lower image quality (not FNAF attacks).

A degradation attack inserts no feature, so it has no criterion, hit or control and is never part
of a FNAF attack rate or verdict; it reports SSIM, NMSE and PSNR before and after (DESIGN §5).
:meth:`DegradationAttack.attack` is final: it runs the subclass's :meth:`_perturb` with the model
frozen, reconstructs clean and perturbed k-space and measures the change.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import torch

from mri_audit.fnaf.features import SliceContext
from mri_audit.models.art_setup import EvasionAttack
from mri_audit.models.estimator import Reconstructor
from mri_audit.mri.metrics import nmse_from_sums, psnr_from_sums, slice_sums, ssim

__all__ = ["DegradationAttack", "DegradationResult", "degradation_records", "METRICS"]

METRICS = ("ssim", "nmse", "psnr")


class DegradationResult(NamedTuple):
    """Per-slice quality before and after the perturbation.

    Shape:
        every tensor of ``values`` is ``(B,)``: ``ssim_clean``, ``ssim_adv``, ``nmse_*``,
        ``psnr_*`` and ``perturbation`` (L2 norm relative to the undersampled k-space).
    """

    values: dict[str, torch.Tensor]


class DegradationAttack(EvasionAttack):
    """Base of degradation attacks on the acquired k-space.

    Args:
        estimator: the :class:`Reconstructor` under attack.
        seed: audit seed (for attacks that draw).
        batch_size: slices per batch.
        verbose: log progress.
    """

    name = "degradation"
    kind = "degradation"
    needs_gradients = True
    attack_params = EvasionAttack.attack_params + ["seed", "batch_size", "verbose"]
    _estimator_requirements = (Reconstructor,)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "attack" in cls.__dict__:
            raise TypeError(
                f"{cls.__name__} overrides DegradationAttack.attack: implement _perturb"
            )

    def __init__(
        self, estimator: Reconstructor, *, seed: int = 0, batch_size: int = 16, verbose=False
    ) -> None:
        super().__init__(estimator=estimator)
        self.seed, self.batch_size, self.verbose = seed, batch_size, verbose
        self._check_params()

    def _check_params(self) -> None:
        if not isinstance(self.seed, numbers.Integral):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.batch_size, numbers.Integral) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")

    def _perturb(self, ctx: SliceContext) -> torch.Tensor:
        """The perturbed undersampled k-space (zero off the acquired lines).

        Shape:
            returns ``(B, coils, H, W)`` complex.
        """
        raise NotImplementedError

    def attack(self, ctx: SliceContext, engine=None) -> DegradationResult:
        """Perturb each slice and measure the reconstruction's change (final)."""
        with self.estimator.cropping(ctx.target_shape):  # this batch's size
            return self._measure(ctx, self._perturb(ctx))

    def _measure(self, ctx: SliceContext, adv: torch.Tensor) -> DegradationResult:
        est = self.estimator
        masked = ctx.kspace * ctx.mask
        with est.evaluation(), est.cropping(ctx.target_shape), torch.inference_mode():
            nlf = ctx.num_low_frequencies
            clean = est.reconstruct(masked, ctx.mask, num_low_frequencies=nlf)
            attacked = est.reconstruct(adv * ctx.mask, ctx.mask, num_low_frequencies=nlf)
        values = {
            "perturbation": torch.linalg.vector_norm((adv - masked).flatten(1), dim=1)
            / torch.linalg.vector_norm(masked.flatten(1), dim=1).clamp_min(1e-30)
        }
        for tag, recon in (("clean", clean.float()), ("adv", attacked.float())):
            sums = slice_sums(recon, ctx.target)
            values[f"ssim_{tag}"] = ssim(recon, ctx.target, ctx.data_range)
            values[f"nmse_{tag}"] = nmse_from_sums(sums["sq_err"], sums["sq_norm"])
            values[f"psnr_{tag}"] = psnr_from_sums(
                sums["sq_err"], sums["num_pixels"], ctx.data_range
            )
        return DegradationResult(values)

    def generate(self, x, y=None, *, mask=None, volumes=None, slices=None, **kwargs):
        """ART entry point: the perturbed undersampled k-space of each fully-sampled slice.

        Args:
            x: fully-sampled k-space as a real view (numpy or torch).
            y: ignored (the target is the slice's own fully-sampled magnitude).
            mask, volumes, slices: as :meth:`mri_audit.fnaf.attack.FnafAttack.generate`.

        Returns:
            the perturbed undersampled k-space, same shape and type as ``x``; the measured
            degradation is in :attr:`last_result`.

        Shape:
            x: ``(B, coils, H, W, 2)``.
        """
        from mri_audit.fnaf.art_input import context_from_x

        ctx, is_numpy = context_from_x(self.estimator, x, mask=mask, volumes=volumes, slices=slices)
        adv = self._perturb(ctx)
        self.last_result = self._measure(ctx, adv)
        out = torch.view_as_real(adv * ctx.mask)
        return out.cpu().numpy() if is_numpy else out


def degradation_records(ctx: SliceContext, result: DegradationResult) -> list[dict]:
    """Plain per-slice records of a degradation result (one host transfer per value)."""
    host = {k: v.tolist() for k, v in result.values.items()}
    return [
        {"volume": v, "slice": int(s), "found": False, "hit": False, "control_hit": False}
        | {k: vals[i] for k, vals in host.items()}
        for i, (v, s) in enumerate(zip(ctx.volumes, ctx.slices.tolist(), strict=True))
    ]
