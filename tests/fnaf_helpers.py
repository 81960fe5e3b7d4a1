"""Small deterministic slices and models for the FNAF tests."""

from __future__ import annotations

import numpy as np
import torch

from mri_audit.fnaf.features import prepare_context
from mri_audit.models.estimator import Reconstructor
from mri_audit.mri.physics import fft2c, make_mask_func, volume_seed


def smooth_slices(b: int = 3, h: int = 48, w: int = 40, coils: int = 1, seed: int = 0):
    """Fully-sampled k-space of smooth blob images with a smooth phase (complex64)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    images = []
    for _ in range(b):
        img = np.zeros((h, w))
        for _ in range(4):
            cy, cx = rng.uniform(-0.5, 0.5, 2)
            r = rng.uniform(0.2, 0.5)
            img += rng.uniform(0.3, 1.0) / (
                1 + np.exp(((yy - cy) ** 2 + (xx - cx) ** 2 - r**2) * 40)
            )
        img = img + 0.05
        phase = np.exp(1j * (0.8 * xx + 0.3 * yy))
        sens = [
            np.exp(-((yy - np.cos(a)) ** 2 + (xx - np.sin(a)) ** 2) / 2)
            for a in np.linspace(0, 2 * np.pi, coils, endpoint=False)
        ]
        sens = np.stack(sens) / np.sqrt(np.sum(np.square(sens), axis=0))
        images.append(img * phase * sens)
    x = torch.tensor(np.stack(images), dtype=torch.complex64)
    return fft2c(x)


def context(kspace, accel: float = 4, crop=None, window=0.375, insert_mode="phase", names=None):
    b = kspace.shape[0]
    crop = crop or tuple(kspace.shape[-2:])
    func = make_mask_func("random", accel)
    return prepare_context(
        kspace,
        target_shape=crop,
        volumes=names or [f"vol{i // 2}.h5" for i in range(b)],
        slices=[i % 2 for i in range(b)],
        mask_for=lambda v, n: func(n, seed=volume_seed(v)),
        window=window,
        insert_mode=insert_mode,
    )


class Identity(torch.nn.Module):
    """Returns its input (the zero-filled baseline)."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return x * self.scale


class Blur(torch.nn.Module):
    """A heavy box blur: loses every small feature."""

    def __init__(self, k: int = 9):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, k, padding=k // 2, bias=False, padding_mode="reflect")
        torch.nn.init.constant_(self.conv.weight, 1.0 / k**2)

    def forward(self, x):
        return self.conv(x)


class TinyUnetish(torch.nn.Module):
    """A small random conv net (nonlinear, differentiable)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.b = torch.nn.Conv2d(4, 1, 3, padding=1)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.3

    def forward(self, x):
        return x + self.b(torch.tanh(self.a(x)))


def estimator(model, shape, normalize="instance", domain="image"):
    return Reconstructor(model, target_shape=shape, normalize=normalize, input_domain=domain)
