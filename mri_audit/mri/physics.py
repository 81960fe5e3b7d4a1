"""MRI physics: centred orthonormal FFTs, column masks, undersampling, zero-filling.

Conventions follow fastMRI exactly: k-space is a native complex tensor ``(..., H, W)``, FFTs
are centred (``ifftshift`` → ``fft2(norm="ortho")`` → ``fftshift``) and masks sample columns
(the last axis, phase encoding). :class:`RandomMask` and :class:`EquispacedMask` reproduce
fastMRI 0.3.0's ``RandomMaskFunc`` and ``EquispacedMaskFractionFunc`` column for column,
including the per-volume seed ``tuple(map(ord, file_name))`` of its data transforms.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch

__all__ = [
    "fft2c",
    "ifft2c",
    "center_crop",
    "rss",
    "default_center_fraction",
    "Mask",
    "MaskFunc",
    "RandomMask",
    "EquispacedMask",
    "make_mask_func",
    "volume_seed",
    "apply_mask",
    "mask_to_tensor",
]


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred, orthonormal 2-D FFT over the last two axes.

    Args:
        x: complex image.

    Returns:
        Its k-space, same shape and dtype.

    Shape:
        x: ``(..., H, W)`` complex.
    """
    if not x.is_complex():
        raise ValueError(f"fft2c expects a complex tensor, got {x.dtype}")
    x = torch.fft.ifftshift(x, dim=(-2, -1))
    x = torch.fft.fft2(x, dim=(-2, -1), norm="ortho")
    return torch.fft.fftshift(x, dim=(-2, -1))


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Centred, orthonormal inverse 2-D FFT over the last two axes (inverse of :func:`fft2c`).

    Shape:
        k: ``(..., H, W)`` complex.
    """
    if not k.is_complex():
        raise ValueError(f"ifft2c expects a complex tensor, got {k.dtype}")
    k = torch.fft.ifftshift(k, dim=(-2, -1))
    k = torch.fft.ifft2(k, dim=(-2, -1), norm="ortho")
    return torch.fft.fftshift(k, dim=(-2, -1))


def center_crop(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Crop the last two axes to ``shape`` around the centre, as fastMRI's ``center_crop``.

    Shape:
        x: ``(..., H, W)`` with ``H >= shape[0]`` and ``W >= shape[1]``.
    """
    h, w = int(shape[0]), int(shape[1])
    if not (0 < h <= x.shape[-2] and 0 < w <= x.shape[-1]):
        raise ValueError(f"cannot crop {tuple(x.shape[-2:])} to {(h, w)}")
    top = (x.shape[-2] - h) // 2
    left = (x.shape[-1] - w) // 2
    return x[..., top : top + h, left : left + w]


def rss(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Root-sum-of-squares of a (complex or real) coil image over ``dim``.

    Shape:
        x: ``(B, coils, H, W)``; returns ``(B, H, W)`` real.
    """
    mag2 = x.real.square() + x.imag.square() if x.is_complex() else x.square()
    return mag2.sum(dim=dim).sqrt()


def default_center_fraction(acceleration: float) -> float:
    """fastMRI's centre fractions: 0.08 at 4x, 0.04 at 8x, ``0.32 / acceleration`` otherwise."""
    if acceleration < 1:
        raise ValueError(f"acceleration must be >= 1, got {acceleration}")
    return {4: 0.08, 8: 0.04}.get(acceleration, 0.32 / acceleration)


def volume_seed(name: str) -> tuple[int, ...]:
    """The per-volume mask seed of fastMRI's data transforms: ``tuple(map(ord, name))``."""
    return tuple(map(ord, name))


class Mask(NamedTuple):
    """A sampled column mask.

    Attributes:
        columns: bool array of shape ``(W,)``; True where a column is acquired.
        num_low_frequencies: the number of fully sampled centre columns.
    """

    columns: np.ndarray
    num_low_frequencies: int


@contextlib.contextmanager
def _temp_seed(rng: np.random.RandomState, seed) -> Iterator[None]:
    if seed is None:
        yield
        return
    state = rng.get_state()
    rng.seed(seed)
    try:
        yield
    finally:
        rng.set_state(state)


class MaskFunc:
    """Base of the column-mask functions, with fastMRI ``MaskFunc`` semantics.

    Args:
        center_fractions: fraction of centre columns always acquired, one per acceleration.
        accelerations: undersampling factors (>= 1).
        seed: seed of the function's own generator (used when a call passes no seed).
    """

    name = "base"

    def __init__(
        self,
        center_fractions: Sequence[float],
        accelerations: Sequence[float],
        seed: int | Sequence[int] | None = None,
    ) -> None:
        if len(center_fractions) != len(accelerations) or not accelerations:
            raise ValueError("give one centre fraction per acceleration")
        for acc in accelerations:
            if not acc >= 1:
                raise ValueError(f"acceleration must be >= 1, got {acc}")
        for frac in center_fractions:
            if not 0 < frac <= 1:
                raise ValueError(f"centre fraction must be in (0, 1], got {frac}")
        self.center_fractions = list(center_fractions)
        self.accelerations = list(accelerations)
        self.rng = np.random.RandomState(seed)

    def __call__(self, num_cols: int, *, seed=None, offset: int | None = None) -> Mask:
        """Sample a mask for ``num_cols`` columns; the same seed gives the same mask."""
        if num_cols < 1:
            raise ValueError(f"number of columns must be positive, got {num_cols}")
        with _temp_seed(self.rng, seed):
            choice = self.rng.randint(len(self.center_fractions))
            fraction, acceleration = self.center_fractions[choice], self.accelerations[choice]
            num_low = round(num_cols * fraction)
            center = np.zeros(num_cols, dtype=bool)
            pad = (num_cols - num_low + 1) // 2
            center[pad : pad + num_low] = True
            if acceleration == 1:
                accel = np.ones(num_cols, dtype=bool)
            else:
                accel = self._acceleration_mask(num_cols, acceleration, offset, num_low)
        return Mask(center | accel, int(num_low))

    def _acceleration_mask(
        self, num_cols: int, acceleration: float, offset: int | None, num_low: int
    ) -> np.ndarray:
        raise NotImplementedError


class RandomMask(MaskFunc):
    """fastMRI's ``RandomMaskFunc``: outer columns drawn independently at the rate that gives
    ``num_cols / acceleration`` columns in expectation."""

    name = "random"

    def _acceleration_mask(self, num_cols, acceleration, offset, num_low):
        prob = (num_cols / acceleration - num_low) / (num_cols - num_low)
        return self.rng.uniform(size=num_cols) < prob


class EquispacedMask(MaskFunc):
    """fastMRI's ``EquispacedMaskFractionFunc``: equispaced outer columns with the spacing
    adjusted so the total (centre included) is ``num_cols / acceleration``."""

    name = "equispaced"

    def _acceleration_mask(self, num_cols, acceleration, offset, num_low):
        adjusted = (acceleration * (num_low - num_cols)) / (num_low * acceleration - num_cols)
        if offset is None:
            offset = self.rng.randint(0, high=round(adjusted))
        mask = np.zeros(num_cols, dtype=bool)
        samples = np.around(np.arange(offset, num_cols - 1, adjusted)).astype(np.uint)
        mask[samples] = True
        return mask


MASK_TYPES: dict[str, type[MaskFunc]] = {"random": RandomMask, "equispaced": EquispacedMask}


def make_mask_func(
    kind: str, acceleration: float, center_fraction: float | None = None, seed=None
) -> MaskFunc:
    """Build a mask function by name (``random`` or ``equispaced``) for one acceleration."""
    if kind not in MASK_TYPES:
        raise ValueError(f"unknown mask type {kind!r}; choose from {', '.join(MASK_TYPES)}")
    if center_fraction is None:
        center_fraction = default_center_fraction(acceleration)
    return MASK_TYPES[kind]([center_fraction], [acceleration], seed=seed)


def mask_to_tensor(columns: np.ndarray | torch.Tensor, device=None) -> torch.Tensor:
    """A column mask as a bool tensor broadcastable over ``(..., H, W)``.

    Shape:
        columns: ``(W,)`` or ``(B, W)``; returns ``(1, 1, 1, W)`` or ``(B, 1, 1, W)``.
    """
    m = torch.as_tensor(columns, device=device).to(torch.bool)
    if m.ndim == 1:
        return m.view(1, 1, 1, -1)
    if m.ndim == 2:
        return m[:, None, None, :]
    raise ValueError(f"mask columns must be (W,) or (B, W), got shape {tuple(m.shape)}")


def apply_mask(kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero the k-space columns the mask does not acquire (differentiable).

    Shape:
        kspace: ``(B, coils, H, W)`` complex; mask: broadcastable bool, e.g. ``(B, 1, 1, W)``.
    """
    return kspace * mask.to(kspace.real.dtype)
