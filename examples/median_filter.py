"""A feature-erasing model: a median filter on the zero-filled magnitude.

A ``k x k`` median removes every structure narrower than about half its window (a small lesion,
a thin tear) while keeping edges, so it looks clean and loses exactly what FNAF audits look for.
It has no weights. Audit it to see what a failing model looks like::

    mri-audit run --model examples/median_filter.py:MedianFilter --accel 4

``benchmarks/bench_size.py`` uses it to check that the verdict does not depend on image size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MedianFilter"]


class MedianFilter(nn.Module):
    """``k x k`` median of the (normalised) zero-filled magnitude, reflect-padded.

    Args:
        k: odd window side (default 5).

    Shape:
        forward: ``(N, 1, H, W) -> (N, 1, H, W)``.
    """

    mri_audit_input = "image"

    def __init__(self, k: int = 5) -> None:
        super().__init__()
        if k < 1 or k % 2 == 0:
            raise ValueError(f"k must be a positive odd number, got {k}")
        self.k = int(k)
        self.mri_audit_input = "image"

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        n, c, h, w = image.shape
        pad = self.k // 2
        padded = F.pad(image, (pad, pad, pad, pad), mode="reflect")
        patches = F.unfold(padded, self.k)  # (N, C*k*k, H*W)
        patches = patches.view(n, c, self.k * self.k, h * w)
        return patches.median(dim=2).values.view(n, c, h, w)
