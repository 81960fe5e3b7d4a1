"""Image losses of ``mri-audit harden``: L1/MSE in per-slice normalised units, 1 - SSIM, or both.

SSIM alone lets the intensity scale drift, which NMSE then sees; ``ssim+l1`` adds the L1 to hold
it.
"""

from __future__ import annotations

import torch

from mri_audit.mri.metrics import ssim

__all__ = ["LOSSES", "pixel_loss", "image_loss"]

LOSSES = ("l1", "mse", "ssim", "ssim+l1")


def pixel_loss(kind: str, recon: torch.Tensor, target: torch.Tensor, std: torch.Tensor):
    """Per-pixel error in units of each slice's target standard deviation.

    Args:
        kind: one of ``LOSSES``; ``mse`` squares the error, every other kind takes its magnitude.
        recon, target: reconstructions and their targets.
        std: each slice's normalising standard deviation.

    Shape:
        recon, target: ``(B, H, W)``; std: ``(B,)``; returns ``(B, H, W)``.
    """
    diff = (recon - target) / std[:, None, None]
    return diff.square() if kind == "mse" else diff.abs()


def image_loss(
    kind: str,
    recon: torch.Tensor,
    target: torch.Tensor,
    std: torch.Tensor,
    data_range: torch.Tensor,
) -> torch.Tensor:
    """The batch's mean image loss of the given kind.

    Shape:
        recon, target: ``(B, H, W)``; std, data_range: ``(B,)``; returns a scalar.
    """
    if kind not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
    if kind.startswith("ssim"):
        loss = (1 - ssim(recon, target, data_range)).mean()
        if kind == "ssim+l1":
            loss = loss + pixel_loss(kind, recon, target, std).mean()
        return loss
    return pixel_loss(kind, recon, target, std).mean()
