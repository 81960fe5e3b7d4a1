"""``kspace-pgd``: ART's own ProjectedGradientDescent on the acquired k-space lines."""

from __future__ import annotations

import numbers

import numpy as np
import torch

from mri_audit.attack import AttackResult, FnafAttack
from mri_audit.engine import FnafEngine
from mri_audit.features import SliceContext
from mri_audit.metrics import ssim


class KspacePGD(FnafAttack):
    """Bounded L2 noise on the acquired k-space lines, found by ART's PGD; reports degradation.

    The budget of each slice is ``eps`` times the L2 norm of its undersampled k-space. The attack
    maximises the reconstruction's MSE against the fully-sampled target and reports SSIM, NMSE
    and PSNR before and after. It inserts no feature, so it has no FNAF hit or control.

    Args:
        eps: perturbation budget relative to the k-space norm.
        eps_step: step size as a fraction of the budget.
        max_iter: PGD iterations.
    """

    name = "kspace-pgd"
    kind = "degradation"
    needs_gradients = True
    attack_params = FnafAttack.attack_params + ["eps", "eps_step", "max_iter"]

    def __init__(
        self, estimator, *, eps: float = 0.05, eps_step: float = 0.25, max_iter: int = 10, **kw
    ):
        self.eps, self.eps_step, self.max_iter = eps, eps_step, max_iter
        super().__init__(estimator, **kw)

    def _check_params(self) -> None:
        super()._check_params()
        for name in ("eps", "eps_step"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if not isinstance(self.max_iter, numbers.Integral) or self.max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {self.max_iter!r}")

    def attack(self, ctx: SliceContext, engine: FnafEngine | None = None) -> AttackResult:
        from art.attacks.evasion import ProjectedGradientDescent

        est = self.estimator
        b = ctx.num_slices
        masked = ctx.kspace * ctx.mask
        x = torch.view_as_real(masked).detach().cpu().numpy().astype(np.float32)
        y = ctx.target.detach().cpu().numpy()
        budget = self.eps * np.linalg.norm(x.reshape(b, -1), axis=1)
        budget = np.maximum(budget, 1e-12).reshape(b, 1, 1, 1, 1).astype(np.float32)
        lines = np.broadcast_to(ctx.mask.cpu().numpy()[:, :, :, :, None], x.shape).astype(
            np.float32
        )
        pgd = ProjectedGradientDescent(
            est,
            norm=2,
            eps=budget,
            eps_step=budget * self.eps_step,
            max_iter=self.max_iter,
            num_random_init=0,
            targeted=False,
            batch_size=b,
            verbose=False,
        )
        x_adv = pgd.generate(x, y=y, mask=lines)
        adv = torch.view_as_complex(torch.as_tensor(x_adv, device=est.device).contiguous())
        with est.evaluation(), torch.inference_mode():
            clean = est.reconstruct(masked, ctx.mask, num_low_frequencies=ctx.num_low_frequencies)
            attacked = est.reconstruct(
                adv * ctx.mask, ctx.mask, num_low_frequencies=ctx.num_low_frequencies
            )
        extra = {
            "perturbation": torch.linalg.vector_norm((adv - masked).flatten(1), dim=1)
            / torch.linalg.vector_norm(masked.flatten(1), dim=1).clamp_min(1e-30)
        }
        for tag, recon in (("clean", clean.float()), ("adv", attacked.float())):
            err = (recon - ctx.target).square().flatten(1)
            extra[f"ssim_{tag}"] = ssim(recon, ctx.target, ctx.data_range)
            extra[f"nmse_{tag}"] = err.sum(1) / ctx.target.square().flatten(1).sum(1)
            extra[f"psnr_{tag}"] = 10 * torch.log10(ctx.data_range.square() / err.mean(1))
        nan = torch.full((b,), float("nan"), device=est.device)
        none = torch.zeros(b, dtype=torch.bool, device=est.device)
        count = torch.zeros(b, dtype=torch.int64, device=est.device)
        return AttackResult(
            features=ctx_dummy_features(ctx),
            found=none,
            loss=nan,
            region_nmse=nan,
            ip=nan,
            rho=nan,
            control=nan,
            hit=none,
            control_hit=none,
            evaluated=count + 1,
            accepted=count,
            extra=extra,
        )


def ctx_dummy_features(ctx: SliceContext):
    """An empty one-step feature per slice (kspace-pgd inserts none)."""
    from mri_audit.features import FeatureBatch

    device = ctx.kspace.device
    z = torch.zeros(ctx.num_slices, 1, dtype=torch.int64, device=device)
    return FeatureBatch(z, z, z.float(), z.bool(), torch.arange(ctx.num_slices, device=device))
