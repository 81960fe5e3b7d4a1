"""``kspace-pgd``: ART's own ProjectedGradientDescent on the acquired k-space lines."""

from __future__ import annotations

import numbers

import numpy as np
import torch

from mri_audit.fnaf.degradation import DegradationAttack
from mri_audit.fnaf.features import SliceContext


class KspacePGD(DegradationAttack):
    """Bounded L2 noise on the acquired k-space lines, found by ART's PGD; reports degradation.

    The budget of each slice is ``eps`` times the L2 norm of its undersampled k-space. The attack
    maximises the reconstruction's MSE against the fully-sampled target. It inserts no feature,
    so it has no FNAF criterion, hit or control, and never counts in a FNAF rate or verdict.

    Args:
        eps: perturbation budget relative to the k-space norm.
        eps_step: step size as a fraction of the budget.
        max_iter: PGD iterations.
    """

    name = "kspace-pgd"
    attack_params = DegradationAttack.attack_params + ["eps", "eps_step", "max_iter"]

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

    def _perturb(self, ctx: SliceContext) -> torch.Tensor:
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
        return torch.view_as_complex(torch.as_tensor(x_adv, device=est.device).contiguous())
