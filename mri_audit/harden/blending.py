"""Weight-space blends of a starting and a fine-tuned model (WiSE-FT, Wortsman et al. 2022).

Fine-tuning against FNAFs moves the weights along a path on which robustness often grows faster
than clean quality falls, so a blend ``(1 - a)·start + a·final`` can keep the starting model's
NMSE where a training epoch with the same attack rate does not.
"""

from __future__ import annotations

import torch

__all__ = ["blend_weights", "blend_alphas"]


def blend_weights(
    start: dict[str, torch.Tensor], final: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``(1 - alpha)·start + alpha·final`` for floating-point entries; others from ``final``.

    Integer entries (batch-norm counters and the like) cannot be blended and come from ``final``.
    """
    return {
        k: torch.lerp(start[k], v, alpha) if v.is_floating_point() else v.clone()
        for k, v in final.items()
    }


def blend_alphas(n: int) -> list[float]:
    """The ``n`` evenly spaced blend weights strictly between 0 and 1 (9 -> 0.1 ... 0.9)."""
    return [k / (n + 1) for k in range(1, n + 1)]
