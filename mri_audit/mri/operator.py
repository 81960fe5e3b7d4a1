"""The Cartesian sampling operator ``A = M F``: forward, adjoint, zero-filled magnitude, crop.

One object holds what every part of the tool needs of the MRI forward model (deepinv's ``MRI``
physics is the model): the column mask ``M``, the centred orthonormal FFT ``F`` over the full
k-space grid and the centre crop to the target. The engine, the estimator, the features, the
panels and the data checks all go through it, so the zero-filled reconstruction is computed one
way everywhere (fastMRI's: mask, inverse FFT, root-sum-of-squares over coils, centre crop).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mri_audit.mri.physics import apply_mask, center_crop, fft2c, ifft2c, rss

__all__ = ["SamplingOperator"]


class SamplingOperator:
    """``A = M F`` for column masks, with the zero-filled reconstruction and the crop.

    Args:
        mask: boolean column mask broadcastable to the k-space, e.g. ``(B, 1, 1, W)``; None for
            full sampling (or k-space that is already masked).
        crop: the target size ``(h, w)`` images are centre-cropped to; None keeps the grid.

    Shape:
        images: ``(B, coils, H, W)`` complex; k-space the same; magnitudes ``(B, h, w)``.
    """

    def __init__(self, mask: torch.Tensor | None = None, crop: Sequence[int] | None = None):
        self.mask = mask
        self.crop_shape = None if crop is None else (int(crop[0]), int(crop[1]))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """The measured k-space ``M F x`` of coil images ``x`` (differentiable)."""
        return self.sample(fft2c(image))

    def adjoint(self, kspace: torch.Tensor) -> torch.Tensor:
        """``F^H M^T k``: the coil images of the acquired part of ``kspace``."""
        return ifft2c(self.sample(kspace))

    def sample(self, kspace: torch.Tensor) -> torch.Tensor:
        """``M k``: zero the columns the mask does not acquire (identity without a mask)."""
        return kspace if self.mask is None else apply_mask(kspace, self.mask)

    def crop(self, image: torch.Tensor) -> torch.Tensor:
        """Centre-crop the last two axes to the target size (identity without one)."""
        return image if self.crop_shape is None else center_crop(image, self.crop_shape)

    def magnitude(self, kspace: torch.Tensor) -> torch.Tensor:
        """The cropped root-sum-of-squares magnitude of ``F^H k`` (no masking).

        Shape:
            kspace: ``(B, coils, H, W)`` complex; returns ``(B, h, w)`` real.
        """
        _check(kspace)
        return self.crop(rss(ifft2c(kspace), dim=1))

    def zero_filled(self, kspace: torch.Tensor) -> torch.Tensor:
        """The zero-filled reconstruction ``crop(rss(F^H M k))`` (fastMRI's baseline).

        Shape:
            kspace: ``(B, coils, H, W)`` complex, full or already masked; returns ``(B, h, w)``.
        """
        _check(kspace)
        return self.magnitude(self.sample(kspace))


def _check(kspace: torch.Tensor) -> None:
    if kspace.ndim != 4:
        raise ValueError(f"k-space must be (B, coils, H, W), got shape {tuple(kspace.shape)}")
