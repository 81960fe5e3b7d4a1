"""A small unrolled variational network (k-space domain), laid out like fastMRI's ``VarNet``.

The network starts from the undersampled k-space and alternates, ``num_cascades`` times,

* **soft data consistency**: on the acquired columns the current k-space is pulled toward the
  measurement by a learnable weight, and
* **a learned regulariser**: the coil images are combined into one complex image with the coil
  sensitivities, a small U-Net (2 channels: real and imaginary parts, normalised per sample)
  proposes a correction, which is expanded back to the coils and to k-space.

Coil sensitivities are estimated once from the fully-sampled centre of k-space (the
autocalibration, ACS, columns): the low-resolution coil images divided by their root-sum-of-
squares. With a single coil this is just the phase of the low-resolution image. The output is the
root-sum-of-squares magnitude of the final coil images on the full k-space grid; mri-audit crops
it to the target.

Inputs use fastMRI's layout, so the class plugs into mri-audit as ``--model varnet.py:VarNet``
(its ``mri_audit_input`` is ``"kspace"``). The constructor defaults are the configuration of the
shipped weights in ``examples/weights/varnet_*.pt``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["VarNet", "acs_mask"]


def _fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2-D FFT over the last two axes (fastMRI convention)."""
    x = torch.fft.ifftshift(x, dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.fft2(x, dim=(-2, -1), norm="ortho"), dim=(-2, -1))


def _ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal inverse 2-D FFT over the last two axes."""
    k = torch.fft.ifftshift(k, dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.ifft2(k, dim=(-2, -1), norm="ortho"), dim=(-2, -1))


def _rss(x: torch.Tensor, dim: int = 1, keepdim: bool = False) -> torch.Tensor:
    """Root-sum-of-squares magnitude of complex coil images over ``dim``."""
    return (x.real.square() + x.imag.square()).sum(dim=dim, keepdim=keepdim).sqrt()


def acs_mask(columns: torch.Tensor, num_low_frequencies: int | None = None) -> torch.Tensor:
    """The fully-sampled centre (autocalibration) columns of each sample's mask.

    Args:
        columns: acquired columns, bool.
        num_low_frequencies: width of the fully-sampled centre when known; it is placed as
            mri-audit's and fastMRI's mask functions place it (``pad = (W - n + 1) // 2``).
            When None, the centre is the contiguous run of acquired columns through column
            ``W // 2``.

    Returns:
        The ACS columns (always a subset of ``columns``). A sample with no acquired centre
        column falls back to all its acquired columns.

    Shape:
        columns: ``(B, W)``; returns ``(B, W)`` bool.
    """
    width = columns.shape[-1]
    if num_low_frequencies is not None and num_low_frequencies > 0:
        pad = (width - num_low_frequencies + 1) // 2
        centre = torch.zeros_like(columns)
        centre[:, pad : pad + num_low_frequencies] = True
        acs = centre & columns
    else:
        mid = width // 2
        # Contiguous runs of True leaving the centre to the right and to the left.
        right = columns[:, mid:].to(torch.int32).cumprod(dim=1).to(torch.bool)
        left = columns[:, :mid].flip(1).to(torch.int32).cumprod(dim=1).flip(1).to(torch.bool)
        acs = torch.cat([left, right], dim=1)
    empty = ~acs.any(dim=1, keepdim=True)
    return torch.where(empty, columns, acs)


class _SmallUNet(nn.Module):
    """A compact U-Net: conv blocks of (3x3 conv, InstanceNorm, LeakyReLU) x 2, average pooling
    down, transposed convolution up, skip concatenation, 1x1 output convolution."""

    def __init__(self, in_chans: int, out_chans: int, chans: int, num_pools: int) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.InstanceNorm2d(cout),
                nn.LeakyReLU(0.2, inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                nn.InstanceNorm2d(cout),
                nn.LeakyReLU(0.2, inplace=True),
            )

        widths = [chans * 2**i for i in range(num_pools)]
        self.down = nn.ModuleList()
        prev = in_chans
        for width in widths:
            self.down.append(block(prev, width))
            prev = width
        self.bottom = block(prev, 2 * prev)
        prev *= 2
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for width in reversed(widths):
            self.up.append(
                nn.Sequential(
                    nn.ConvTranspose2d(prev, width, 2, stride=2, bias=False),
                    nn.InstanceNorm2d(width),
                    nn.LeakyReLU(0.2, inplace=True),
                )
            )
            self.merge.append(block(2 * width, width))
            prev = width
        self.head = nn.Conv2d(prev, out_chans, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_chans, H, W) -> (N, out_chans, H, W)``; odd sizes are reflect-padded."""
        skips: list[torch.Tensor] = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.avg_pool2d(x, 2)
        x = self.bottom(x)
        for up, merge in zip(self.up, self.merge):  # noqa: B905 (TorchScript has no strict=)
            skip = skips.pop()
            x = up(x)
            pad_h, pad_w = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
            if pad_h or pad_w:
                x = F.pad(x, [0, pad_w, 0, pad_h], mode="reflect")
            x = merge(torch.cat([x, skip], dim=1))
        return self.head(x)


class _Regulariser(nn.Module):
    """A U-Net on a complex image: real/imaginary channels, normalised per sample and channel,
    de-normalised after the U-Net."""

    def __init__(self, chans: int, num_pools: int) -> None:
        super().__init__()
        self.unet = _SmallUNet(2, 2, chans, num_pools)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, H, W)`` complex -> ``(B, H, W)`` complex correction."""
        x = torch.stack([image.real, image.imag], dim=1)
        mean = x.mean(dim=(-2, -1), keepdim=True)
        std = x.std(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
        y = self.unet((x - mean) / std) * std + mean
        return torch.complex(y[:, 0], y[:, 1])


class _Cascade(nn.Module):
    """One unrolled iteration: ``k - w * M (k - k0) - F S R(S* F^-1 k)``."""

    def __init__(self, chans: int, num_pools: int) -> None:
        super().__init__()
        self.regulariser = _Regulariser(chans, num_pools)
        self.dc_weight = nn.Parameter(torch.ones(1))

    def forward(
        self, current: torch.Tensor, measured: torch.Tensor, mask: torch.Tensor, sens: torch.Tensor
    ) -> torch.Tensor:
        """Update the k-space estimate.

        Shape:
            current, measured, sens: ``(B, C, H, W)`` complex; mask: ``(B, 1, 1, W)`` bool.
        """
        combined = (sens.conj() * _ifft2c(current)).sum(dim=1)
        correction = _fft2c(sens * self.regulariser(combined).unsqueeze(1))
        data_term = torch.where(mask, current - measured, torch.zeros_like(current))
        return current - self.dc_weight * data_term - correction


class VarNet(nn.Module):
    """Unrolled k-space reconstruction network (fastMRI ``VarNet`` interface).

    Args:
        num_cascades: number of unrolled data-consistency + regulariser iterations.
        chans: channels of the first level of each cascade's U-Net.
        num_pools: pooling levels of each cascade's U-Net.

    Shape:
        forward: ``masked_kspace (B, C, H, W, 2)`` (real view of complex k-space, any number of
        coils ``C``), ``mask (B, 1, 1, W, 1)`` bool; returns ``(B, H, W)``.
    """

    mri_audit_input = "kspace"

    def __init__(self, num_cascades: int = 5, chans: int = 12, num_pools: int = 2) -> None:
        super().__init__()
        if num_cascades < 1:
            raise ValueError(f"num_cascades must be >= 1, got {num_cascades}")
        self.mri_audit_input = "kspace"
        self.cascades = nn.ModuleList(_Cascade(chans, num_pools) for _ in range(num_cascades))

    @staticmethod
    def sensitivities(
        kspace: torch.Tensor, columns: torch.Tensor, num_low_frequencies: int | None = None
    ) -> torch.Tensor:
        """Coil sensitivities from the ACS columns, normalised to unit root-sum-of-squares.

        Args:
            kspace: undersampled k-space, complex.
            columns: acquired columns, bool.
            num_low_frequencies: ACS width, found from ``columns`` when None.

        Shape:
            kspace: ``(B, C, H, W)``; columns: ``(B, W)``; returns ``(B, C, H, W)`` complex.
        """
        acs = acs_mask(columns, num_low_frequencies)[:, None, None, :]
        low_res = _ifft2c(kspace * acs.to(kspace.real.dtype))
        norm = _rss(low_res, dim=1, keepdim=True)
        floor = 1e-6 * norm.amax(dim=(-3, -2, -1), keepdim=True) + 1e-30
        return low_res / (norm + floor)

    def forward(
        self,
        masked_kspace: torch.Tensor,
        mask: torch.Tensor,
        num_low_frequencies: int | None = None,
    ) -> torch.Tensor:
        """Reconstruct the RSS magnitude on the full k-space grid.

        Args:
            masked_kspace: undersampled k-space as a real view (last axis: real, imaginary).
            mask: acquired columns.
            num_low_frequencies: width of the fully-sampled centre; found from ``mask`` if None.

        Returns:
            Root-sum-of-squares magnitude of the reconstructed coil images.

        Shape:
            masked_kspace: ``(B, C, H, W, 2)``; mask: ``(B, 1, 1, W, 1)``; returns ``(B, H, W)``.
        """
        if masked_kspace.ndim != 5 or masked_kspace.shape[-1] != 2:
            raise ValueError(
                "masked_kspace must be (B, C, H, W, 2), got " + str(masked_kspace.shape)
            )
        measured = torch.view_as_complex(masked_kspace.float().contiguous())
        batch, width = measured.shape[0], measured.shape[-1]
        columns = mask.to(torch.bool).reshape(-1, width).expand(batch, width)
        sens = self.sensitivities(measured, columns, num_low_frequencies)
        col_mask = columns[:, None, None, :]
        current = measured
        for cascade in self.cascades:
            current = cascade(current, measured, col_mask, sens)
        return _rss(_ifft2c(current), dim=1)
