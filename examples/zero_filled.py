"""The zero-filled baseline as a model: the floor every reconstruction network must beat.

An image-domain model that returns its input unchanged. mri-audit feeds image-domain models the
zero-filled magnitude, normalised per instance, and de-normalises the output, so the
reconstruction of this model *is* the zero-filled magnitude (exactly, as long as no pixel lies
more than 6 standard deviations from the image mean, where the adapter clamps its input).

It has no weights: audit it with ``mri-audit run --model examples/zero_filled.py:ZeroFilled``
and no ``--weights``. Having no parameters, it runs on whatever device its input is on.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ZeroFilled"]


class ZeroFilled(nn.Module):
    """Identity image model: the zero-filled reconstruction.

    Shape:
        forward: ``(N, 1, H, W) -> (N, 1, H, W)``.
    """

    mri_audit_input = "image"

    def __init__(self) -> None:
        super().__init__()
        self.mri_audit_input = "image"  # an instance attribute survives torch.jit.script

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Return the input (a differentiable identity).

        Args:
            image: the normalised zero-filled magnitude.

        Returns:
            The same values.

        Shape:
            image: ``(N, 1, H, W)``; returns ``(N, 1, H, W)``.
        """
        return image
