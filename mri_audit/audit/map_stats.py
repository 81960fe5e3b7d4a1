"""Statistics of the feature-recovery map: means clustered by volume, and the contrast-detail read.

A map cell holds many features per volume (every slice, every draw), and features of one volume
share its mask and anatomy, so their recoveries are not independent. The mean of a cell gets a
cluster-robust 95% interval computed from the volume means (the CR1 sandwich estimator of a mean,
which with equal features per volume is the standard error of the volume means), with Student's t
on ``k − 1`` degrees of freedom for ``k`` volumes; like the rates of :mod:`mri_audit.audit.stats`
it is
never narrower than the interval that treats every feature as independent, so one volume, or
volumes that all agree, never yield a zero-width interval.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

__all__ = ["t_quantile", "clustered_mean", "smallest_recovered"]


def _t_two_sided(t: float, df: int) -> float:
    """``P(|T| <= t)`` for Student's t with integer ``df`` (Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2:  # odd: (2/π)(θ + sin θ cos θ (1 + 2/3 c² + 2·4/(3·5) c⁴ + ...))
        total, term = 0.0, 1.0
        for j in range(1, (df - 1) // 2 + 1):
            total += term
            term *= c2 * (2 * j) / (2 * j + 1)
        return 2 / math.pi * (theta + (s * math.cos(theta) * total if df > 1 else 0.0))
    total, term = 0.0, 1.0  # even: sin θ (1 + 1/2 c² + 1·3/(2·4) c⁴ + ...)
    for j in range(1, df // 2 + 1):
        total += term
        term *= c2 * (2 * j - 1) / (2 * j)
    return s * total


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (``p >= 0.5``) of Student's t with ``df >= 1`` degrees of freedom.

    Exact to about 1e-12 (bisection on the closed-form distribution function); e.g.
    ``t_quantile(0.975, 1) = 12.706``, ``t_quantile(0.975, 5) = 2.571``.
    """
    if df < 1 or int(df) != df:
        raise ValueError(f"degrees of freedom must be a positive integer, got {df}")
    if not 0.5 <= p < 1:
        raise ValueError(f"p must be in [0.5, 1), got {p}")
    target = 2 * p - 1
    lo, hi = 0.0, 1.0
    while _t_two_sided(hi, int(df)) < target:
        hi *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_two_sided(mid, int(df)) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def clustered_mean(values: Sequence[float], clusters: Sequence[Hashable]) -> dict:
    """The mean of ``values`` with a 95% interval clustered by ``clusters``.

    With ``n`` finite values in ``k`` clusters (non-finite values are left out), the mean ``ȳ``,
    the cluster sums of residuals ``s_g = Σ_{i∈g} (y_i − ȳ)`` and the cluster-robust variance
    ``V = k/(k−1) · Σ_g s_g² / n²``, the half-width is ``t_{0.975, k−1} · √V``; with equal
    cluster sizes ``V`` is the variance of the cluster means over ``k``. The half-width is never
    below the independent one, ``t_{0.975, n−1} · sd / √n``; with one cluster it is that one, and
    with one value there is no interval.

    Returns:
        ``{"mean", "low", "high", "n", "clusters"}``; ``mean``/``low``/``high`` None when no value
        is finite, ``low``/``high`` None with one value.
    """
    if len(values) != len(clusters):
        raise ValueError(f"{len(values)} values but {len(clusters)} cluster labels")
    pairs = [(float(v), c) for v, c in zip(values, clusters, strict=True) if math.isfinite(v)]
    n = len(pairs)
    groups: dict[Hashable, list[float]] = {}
    for v, c in pairs:
        groups.setdefault(c, []).append(v)
    k = len(groups)
    out = {"mean": None, "low": None, "high": None, "n": n, "clusters": k}
    if n == 0:
        return out
    mean = math.fsum(v for v, _ in pairs) / n
    out["mean"] = mean
    if n < 2:
        return out
    var = math.fsum((v - mean) ** 2 for v, _ in pairs) / (n - 1)
    half = t_quantile(0.975, n - 1) * math.sqrt(var / n)
    if k >= 2:
        sums = [math.fsum(v - mean for v in g) for g in groups.values()]
        robust = k / (k - 1) * math.fsum(s * s for s in sums) / (n * n)
        half = max(half, t_quantile(0.975, k - 1) * math.sqrt(robust))
    out["low"], out["high"] = mean - half, mean + half
    return out


def smallest_recovered(
    sizes: Sequence[float], means: Sequence[float | None], threshold: float = 0.5
) -> float | None:
    """The smallest of ``sizes`` whose mean reaches ``threshold`` (None when none does).

    Args:
        sizes: the grid's sizes, ascending.
        means: the mean recovery at each size (None where there is none).
        threshold: the recovery a feature must reach (0.5: shown at half its contrast or more).
    """
    for size, mean in zip(sizes, means, strict=True):
        if mean is not None and math.isfinite(mean) and mean >= threshold:
            return size
    return None
