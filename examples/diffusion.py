"""A small posterior-sampling reconstructor (k-space domain): a learned denoiser + data consistency.

The model draws a sample from (an approximation of) the posterior of the image given the
acquired k-space lines, so two calls on the same input give different reconstructions; it
declares ``mri_audit_stochastic = True`` and takes per-item generators (DESIGN §3).

**The denoiser** ``D(x, sigma | a)`` estimates the clean complex image (real and imaginary
channels) from a noisy one, conditioned on the zero-filled image ``a`` of the measurement
(a conditional score model, as in conditional DDPM / SR3-style reconstruction; its score is
``(D - x) / sigma**2``). It is trained by denoising score matching: ``x0 + sigma * n`` with
white Gaussian ``n``, ``sigma`` log-uniform over ``[sigma_lo, sigma_hi]``, EDM's
preconditioning (Karras et al. 2022: ``D = c_skip x + c_out F(c_in x, a, log sigma)``) and its
loss weighting (a unit-variance regression target for the network ``F``), on random
full-width strips of the training phantoms under random column masks. ``F`` is a 3-level
residual U-Net without normalisation layers (so no batch or instance statistics); it works on
a 2x space-to-depth view (``pixel_unshuffle``) of ``[x, a]``, so its first level already runs
at half resolution, with the noise level as an extra input channel.

**The sampler** (``steps`` denoiser calls; a DDIM / DDNM-style loop with hard data
consistency, started from the zero-filled image as in "come-closer-diffuse-faster"):

1. normalise: the coil-combined image is divided by the RMS of its low-resolution
   (autocalibration, ACS) part, so the denoiser always sees images of RMS about 1;
2. ``x = a + sigma_max * z`` (``a``: the normalised zero-filled image);
3. for each ``sigma_i`` of a Karras schedule from ``sigma_max`` down to ``sigma_min``:
   ``x0 = DC(D(x, sigma_i | a))`` — the denoised image with its acquired k-space lines replaced by
   the measurement — then, unless it is the last step, re-noise to the next level,
   ``x = x0 + sigma_{i+1} * (sqrt(1 - eta^2) * eps_hat + eta * z)`` with
   ``eps_hat = (x - x0) / sigma_i`` (DDIM's deterministic part) and fresh noise ``z``;
4. the output is the root-sum-of-squares magnitude of the last ``x0``'s coil images, whose
   acquired lines equal the measurement exactly (single coil).

Coil sensitivities are estimated once from the ACS columns (as ``varnet.py`` does); with one
coil they are the phase of the low-resolution image, so the denoiser sees phase-demodulated
images and data consistency is an exact projection.

**Randomness.** ``forward(..., generator=None)`` draws from torch's global generator;
``generator=[g_0, ..., g_{B-1}]`` draws ALL the noise of item ``i`` from ``g_i``, item by item,
so item ``i``'s output depends only on its own input and its own generator, never on the batch
size or the other items (the denoiser has no batch statistics either).

The constructor defaults are the configuration of ``examples/weights/diffusion_4x.pt``
(trained by ``examples/train.py --model diffusion``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Diffusion", "Denoiser"]


def _fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2-D FFT over the last two axes (fastMRI convention)."""
    x = torch.fft.ifftshift(x, dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.fft2(x, dim=(-2, -1), norm="ortho"), dim=(-2, -1))


def _ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal inverse 2-D FFT over the last two axes."""
    k = torch.fft.ifftshift(k, dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.ifft2(k, dim=(-2, -1), norm="ortho"), dim=(-2, -1))


def _rss(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Root-sum-of-squares magnitude of complex coil images over ``dim``."""
    return (x.real.square() + x.imag.square()).sum(dim=dim).sqrt()


def _acs_columns(columns: torch.Tensor, num_low_frequencies: int | None = None) -> torch.Tensor:
    """The fully-sampled centre columns of each mask (``(B, W)`` bool), as ``varnet.acs_mask``.

    With ``num_low_frequencies`` the centre is placed as fastMRI's mask functions place it;
    without, it is the contiguous run of acquired columns through column ``W // 2``. A mask with
    no acquired centre column falls back to all its acquired columns.
    """
    width = columns.shape[-1]
    if num_low_frequencies is not None and num_low_frequencies > 0:
        pad = (width - num_low_frequencies + 1) // 2
        centre = torch.zeros_like(columns)
        centre[:, pad : pad + num_low_frequencies] = True
        acs = centre & columns
    else:
        mid = width // 2
        right = columns[:, mid:].to(torch.int32).cumprod(dim=1).to(torch.bool)
        left = columns[:, :mid].flip(1).to(torch.int32).cumprod(dim=1).flip(1).to(torch.bool)
        acs = torch.cat([left, right], dim=1)
    empty = ~acs.any(dim=1, keepdim=True)
    return torch.where(empty, columns, acs)


class _ResBlock(nn.Module):
    """``x + conv(act(conv(act(x))))`` with a 1x1 projection when the width changes."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(x))
        return self.skip(x) + self.conv2(F.silu(h))


class Denoiser(nn.Module):
    """The raw network ``F``: a residual U-Net on a 2x space-to-depth view of the noisy image,
    the zero-filled image it is conditioned on, and the noise level.

    Args:
        chans: widths of the three levels (half, quarter and eighth resolution).

    Shape:
        forward: ``x (N, 2, H, W)``, ``cond (N, 2, H, W)`` (H, W multiples of 4),
        ``c_noise (N,)``; returns ``(N, 2, H, W)``.
    """

    def __init__(self, chans: Sequence[int] = (32, 48, 64)) -> None:
        super().__init__()
        c1, c2, c3 = chans
        self.stem = nn.Conv2d(2 * 2 * 4 + 1, c1, 3, padding=1)
        self.enc1 = _ResBlock(c1, c1)
        self.enc2 = _ResBlock(c1, c2)
        self.mid = _ResBlock(c2, c3)
        self.up2 = nn.Conv2d(c3, c2, 3, padding=1)
        self.dec2 = _ResBlock(2 * c2, c2)
        self.up1 = nn.Conv2d(c2, c1, 3, padding=1)
        self.dec1 = _ResBlock(2 * c1, c1)
        self.head = nn.Conv2d(c1, 2 * 4, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        h = F.pixel_unshuffle(torch.cat([x, cond], dim=1), 2)
        level = c_noise.to(h.dtype)[:, None, None, None].expand(-1, 1, *h.shape[-2:])
        h = self.stem(torch.cat([h, level], dim=1))
        s1 = self.enc1(h)
        s2 = self.enc2(F.avg_pool2d(s1, 2))
        m = self.mid(F.avg_pool2d(s2, 2))
        u2 = self.up2(F.interpolate(m, size=s2.shape[-2:], mode="nearest"))
        d2 = self.dec2(torch.cat([u2, s2], dim=1))
        u1 = self.up1(F.interpolate(d2, size=s1.shape[-2:], mode="nearest"))
        d1 = self.dec1(torch.cat([u1, s1], dim=1))
        return F.pixel_shuffle(self.head(F.silu(d1)), 2)


class Diffusion(nn.Module):
    """Posterior sampling MRI reconstruction: a learned denoiser with hard data consistency.

    Args:
        steps: denoiser evaluations per reconstruction.
        sigma_max: the noise level the sampler starts at (the zero-filled image plus this much
            noise), in units of the image RMS.
        sigma_min: the last noise level.
        rho: the Karras schedule's exponent.
        eta: fraction of fresh noise at each re-noising (``0 < eta <= 1``; 1 = a fresh draw).
        chans: the denoiser's level widths.
        sigma_data: the EDM preconditioning's data scale (images are normalised to RMS ~1).
        sigma_cond: the preconditioning's error scale of the zero-filled image (same units).
        sigma_lo, sigma_hi: the training range of noise levels (log-uniform).
        train_rows: height of the random full-width strips the denoiser is trained on (None:
            whole images). The network is fully convolutional, so strips make training cheaper;
            they keep the whole width, along which the column undersampling aliases.

    Shape:
        forward: ``masked_kspace (B, C, H, W, 2)`` (real view), ``mask (B, 1, 1, W, 1)`` bool;
        returns ``(B, H, W)``.
    """

    mri_audit_input = "kspace"
    mri_audit_stochastic = True

    def __init__(
        self,
        steps: int = 16,
        sigma_max: float = 1.0,
        sigma_min: float = 0.02,
        rho: float = 7.0,
        eta: float = 1.0,
        chans: Sequence[int] = (32, 48, 64),
        sigma_data: float = 1.0,
        sigma_cond: float = 0.15,
        sigma_lo: float = 0.02,
        sigma_hi: float = 2.0,
        train_rows: int | None = 48,
    ) -> None:
        super().__init__()
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if not 0 < sigma_min <= sigma_max:
            raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
        if not 0 < eta <= 1:
            raise ValueError(f"eta must be in (0, 1], got {eta}")
        self.steps, self.sigma_max, self.sigma_min = int(steps), float(sigma_max), float(sigma_min)
        self.rho, self.eta, self.sigma_data = float(rho), float(eta), float(sigma_data)
        self.sigma_cond = float(sigma_cond)
        self.sigma_lo, self.sigma_hi = float(sigma_lo), float(sigma_hi)
        self.train_rows = None if train_rows is None else int(train_rows)
        self.denoiser = Denoiser(tuple(chans))

    @property
    def training_objective(self) -> str:
        """What :meth:`training_loss` minimises (``examples/train.py`` writes it in the card)."""
        return (
            "denoising score matching: EDM-style preconditioned MSE (sigma_data "
            f"{self.sigma_data:g}, sigma_cond {self.sigma_cond:g}), sigma log-uniform in "
            f"[{self.sigma_lo:g}, {self.sigma_hi:g}] "
            "x the image RMS, on random "
            + (f"{self.train_rows}-row full-width strips of " if self.train_rows else "")
            + "the fully-sampled coil-combined image normalised as the sampler normalises, "
            "conditioned on its zero-filled image (under the training run's random column masks)"
        )

    def describe_sampler(self) -> str:
        """One line on the sampler's settings (for the weights card)."""
        return (
            f"{self.steps} denoiser steps, Karras schedule sigma {self.sigma_max:g} -> "
            f"{self.sigma_min:g} (rho {self.rho:g}), eta {self.eta:g}, started from the "
            "zero-filled image, hard data consistency after every step"
        )

    # ------------------------------------------------------------------ the prior
    def _precondition(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(c_skip, c_cond, c_out)``, each ``(N, 1, 1, 1)``: EDM's preconditioning with the
        zero-filled image as a second noisy observation.

        With a prior ``x0 ~ N(0, sigma_data^2)``, ``x = x0 + sigma n`` and ``a = x0 + e``
        (``e`` of standard deviation ``sigma_cond``), the linear MMSE estimate of ``x0`` is
        ``c_skip x + c_cond a`` with ``c_skip, c_cond`` proportional to ``1 / sigma^2`` and
        ``1 / sigma_cond^2``, and its error has standard deviation ``c_out``; the network
        predicts that error in units of ``c_out`` (a unit-variance target at every ``sigma``).
        Without the condition (``sigma_cond`` -> inf) these are EDM's ``c_skip`` and ``c_out``.
        """
        s2 = sigma.square()[:, None, None, None]
        p_data, p_cond = 1 / self.sigma_data**2, 1 / self.sigma_cond**2
        total = p_data + p_cond + 1 / s2
        return 1 / (s2 * total), p_cond / total, total.rsqrt()

    def _raw(self, x: torch.Tensor, cond: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The network ``F(c_in x, cond, log sigma)`` on sizes padded to multiples of 4."""
        sd = self.sigma_data
        c_in = 1 / (sigma.square() + sd**2).sqrt()[:, None, None, None]
        h, w = x.shape[-2:]
        pad = [0, (-w) % 4, 0, (-h) % 4]
        out = self.denoiser(F.pad(x * c_in, pad), F.pad(cond, pad), sigma.log() / 4)
        return out[..., :h, :w]

    def denoise(self, x: torch.Tensor, cond: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """EDM-preconditioned denoiser ``D(x, sigma | zero-filled)``: the clean image estimate.

        Shape:
            x, cond: ``(N, 2, H, W)`` (any H, W); sigma: ``(N,)``.
        """
        c_skip, c_cond, c_out = self._precondition(sigma)
        return c_skip * x + c_cond * cond + c_out * self._raw(x, cond, sigma)

    # ------------------------------------------------------------------ the physics
    @staticmethod
    def _prepare(
        masked_kspace: torch.Tensor, mask: torch.Tensor, num_low_frequencies: int | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Measured k-space (complex, normalised), column mask, sensitivities and the scale.

        Returns:
            ``(y, cols, sens, scale)``: ``y (B, C, H, W)`` complex divided by ``scale (B,)``,
            ``cols (B, 1, 1, W)`` bool, ``sens (B, C, H, W)`` complex of unit RSS.
        """
        if masked_kspace.ndim != 5 or masked_kspace.shape[-1] != 2:
            raise ValueError(f"masked_kspace must be (B, C, H, W, 2), got {masked_kspace.shape}")
        measured = torch.view_as_complex(masked_kspace.float().contiguous())
        batch, width = measured.shape[0], measured.shape[-1]
        columns = mask.to(torch.bool).reshape(-1, width).expand(batch, width)
        acs = _acs_columns(columns, num_low_frequencies)[:, None, None, :]
        low_res = _ifft2c(measured * acs.to(measured.real.dtype))
        norm = (low_res.real.square() + low_res.imag.square()).sum(dim=1, keepdim=True).sqrt()
        floor = 1e-6 * norm.amax(dim=(-3, -2, -1), keepdim=True) + 1e-30
        sens = low_res / (norm + floor)
        scale = norm.square().mean(dim=(-3, -2, -1)).sqrt() + 1e-30
        y = measured * (columns[:, None, None, :]) / scale[:, None, None, None]
        return y, columns[:, None, None, :], sens, scale

    @staticmethod
    def _combine(coil_kspace: torch.Tensor, sens: torch.Tensor) -> torch.Tensor:
        """``S^H F^-1 k``: coil k-space ``(B, C, H, W)`` -> one complex image ``(B, H, W)``."""
        return (sens.conj() * _ifft2c(coil_kspace)).sum(dim=1)

    @staticmethod
    def _consistent(
        image: torch.Tensor, y: torch.Tensor, cols: torch.Tensor, sens: torch.Tensor
    ) -> torch.Tensor:
        """Coil k-space of ``image`` with the acquired lines replaced by the measurement."""
        k = _fft2c(sens * image[:, None])
        return torch.where(cols, y, k)

    # ------------------------------------------------------------------ sampling
    def sigmas(self) -> list[float]:
        """The Karras noise levels, ``sigma_max`` first and ``sigma_min`` last (``steps``)."""
        if self.steps == 1:
            return [self.sigma_max]
        a, b = self.sigma_max ** (1 / self.rho), self.sigma_min ** (1 / self.rho)
        return [(a + i / (self.steps - 1) * (b - a)) ** self.rho for i in range(self.steps)]

    @staticmethod
    def _noise(like: torch.Tensor, generator: Sequence[torch.Generator] | None) -> torch.Tensor:
        """White noise of ``like``'s shape ``(B, 2, H, W)``; item ``i`` from ``generator[i]``."""
        if generator is None:
            return torch.randn(like.shape, device=like.device, dtype=like.dtype)
        return torch.stack(
            [
                torch.randn(like.shape[1:], generator=g, device=like.device, dtype=like.dtype)
                for g in generator
            ]
        )

    def forward(
        self,
        masked_kspace: torch.Tensor,
        mask: torch.Tensor,
        num_low_frequencies: int | None = None,
        generator: Sequence[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """Draw one posterior sample per item and return its RSS magnitude.

        Args:
            masked_kspace: undersampled k-space as a real view (last axis: real, imaginary).
            mask: acquired columns.
            num_low_frequencies: width of the fully-sampled centre; found from ``mask`` if None.
            generator: None (torch's global generator) or one ``torch.Generator`` per item, on
                the device of ``masked_kspace``.

        Shape:
            masked_kspace: ``(B, C, H, W, 2)``; mask: ``(B, 1, 1, W, 1)``; returns ``(B, H, W)``.
        """
        if generator is not None:
            generator = list(generator)
            if len(generator) != masked_kspace.shape[0]:
                raise ValueError(
                    f"generator must hold one torch.Generator per item: got {len(generator)} "
                    f"for a batch of {masked_kspace.shape[0]}"
                )
        y, cols, sens, scale = self._prepare(masked_kspace, mask, num_low_frequencies)
        zf = self._combine(y, sens)
        cond = torch.stack([zf.real, zf.imag], dim=1)
        sigmas = self.sigmas()
        x = cond + sigmas[0] * self._noise(cond, generator)
        keep = math.sqrt(1 - self.eta**2)
        k = y
        for i, sigma in enumerate(sigmas):
            level = torch.full((x.shape[0],), sigma, device=x.device, dtype=x.dtype)
            d = self.denoise(x, cond, level)
            k = self._consistent(torch.complex(d[:, 0], d[:, 1]), y, cols, sens)
            if i + 1 == len(sigmas):
                break
            x0c = self._combine(k, sens)
            x0 = torch.stack([x0c.real, x0c.imag], dim=1)
            eps = (x - x0) / sigma
            fresh = self._noise(x, generator)
            x = x0 + sigmas[i + 1] * (keep * eps + self.eta * fresh)
        return _rss(_ifft2c(k), dim=1) * scale[:, None, None]

    # ------------------------------------------------------------------ training
    def training_loss(
        self,
        kspace: torch.Tensor,
        mask: torch.Tensor,
        num_low_frequencies: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Denoising score matching loss on fully-sampled slices (EDM weighting).

        The clean image is the coil-combined fully-sampled image, normalised exactly as the
        sampler normalises (sensitivities and scale from the masked k-space), so the prior is
        learned in the sampler's units. ``sigma`` is log-uniform over ``[sigma_lo, sigma_hi]``;
        the loss is computed on a random ``train_rows`` strip of each image (and of its
        zero-filled image, the condition).

        Args:
            kspace: fully-sampled k-space, real view.
            mask: the column mask the sampler would see (sets the ACS, the scale and the phase).
            num_low_frequencies: ACS width, found from ``mask`` if None.
            generator: a generator for the noise levels and the noise (one for the batch).

        Shape:
            kspace: ``(B, C, H, W, 2)``; mask: ``(B, 1, 1, W, 1)``; returns a scalar.
        """
        full = torch.view_as_complex(kspace.float().contiguous())
        # the scale and sensitivities use only the acquired (ACS) lines, as in forward
        y, _, sens, scale = self._prepare(kspace, mask, num_low_frequencies)
        image = self._combine(full, sens) / scale[:, None, None]
        zf = self._combine(y, sens)
        x0 = torch.stack([image.real, image.imag], dim=1)
        cond = torch.stack([zf.real, zf.imag], dim=1)
        n = x0.shape[0]
        rows = self.train_rows
        if rows is not None and rows < x0.shape[-2]:
            top = torch.randint(x0.shape[-2] - rows + 1, (n,), generator=generator).tolist()
            x0 = torch.stack([x0[i, :, t : t + rows] for i, t in enumerate(top)])
            cond = torch.stack([cond[i, :, t : t + rows] for i, t in enumerate(top)])
        u = torch.rand(n, generator=generator, device=x0.device)
        lo, hi = math.log(self.sigma_lo), math.log(self.sigma_hi)
        sigma = (lo + u * (hi - lo)).exp()
        noise = torch.randn(x0.shape, generator=generator, device=x0.device)
        x = x0 + sigma[:, None, None, None] * noise
        c_skip, c_cond, c_out = self._precondition(sigma)
        target = (x0 - c_skip * x - c_cond * cond) / c_out
        return F.mse_loss(self._raw(x, cond, sigma), target)
