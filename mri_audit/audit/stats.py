"""Statistics of an audit: rates clustered by volume, and paired comparisons (DESIGN §6).

Slices of one volume share a mask and anatomy, so their hits are not independent. Every rate's
95% interval is the Wilson score interval on the *effective* number of slices ``n / deff``, with
the design effect ``deff = 1 + (m̄ − 1)·ICC`` (``m̄`` the mean slices per volume) and the
intraclass correlation ``ICC`` estimated by one-way ANOVA on the 0/1 hits (Donner & Klar). The
estimate is clipped to [0, 1], so the interval is never narrower than Wilson on the slices
themselves; where it cannot be estimated (one volume, one slice per volume, or volumes that all
agree) ``deff = 1`` and the interval is the slices' Wilson interval, never of zero width.

Two models are compared on the same slices with the exact McNemar test on the discordant slices.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

__all__ = ["Z95", "wilson", "design_effect", "clustered_rate", "mcnemar"]

Z95 = 1.959964


def wilson(successes: float, trials: float, z: float = Z95) -> dict:
    """A rate with its 95% Wilson score interval (``trials`` may be an effective, fractional n).

    Returns:
        ``{"value", "low", "high", "count", "total"}``; all None but the counts when there are no
        trials. The bounds are exact at 0 and at ``trials`` (0 and 1).
    """
    if trials <= 0:
        return {"value": None, "low": None, "high": None, "count": 0, "total": 0}
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return {
        "value": p,
        # Exact at the ends (rounding must not leave the rate outside its own interval).
        "low": 0.0 if successes == 0 else max(0.0, centre - half),
        "high": 1.0 if successes == trials else min(1.0, centre + half),
        "count": successes,
        "total": trials,
    }


def design_effect(hits_by_cluster: Sequence[Sequence[bool]]) -> tuple[float, float | None]:
    """``(deff, icc)`` of 0/1 outcomes grouped by cluster (ANOVA estimator of the ICC).

    ``icc`` is None where it cannot be estimated (fewer than two clusters, no cluster with two
    outcomes, or no variation at all); ``deff`` is then 1.
    """
    sizes = [len(c) for c in hits_by_cluster if len(c)]
    totals = [sum(bool(h) for h in c) for c in hits_by_cluster if len(c)]
    k, n = len(sizes), sum(sizes)
    if k < 2 or n - k < 1:
        return 1.0, None
    p = sum(totals) / n
    msb = sum(m * (y / m - p) ** 2 for m, y in zip(sizes, totals, strict=True)) / (k - 1)
    msw = sum(y * (1 - y / m) for m, y in zip(sizes, totals, strict=True)) / (n - k)
    m0 = (n - sum(m * m for m in sizes) / n) / (k - 1)
    denom = msb + (m0 - 1) * msw
    if denom <= 0:
        return 1.0, None
    icc = min(1.0, max(0.0, (msb - msw) / denom))
    return 1 + (n / k - 1) * icc, icc


def clustered_rate(hits: Sequence[bool], clusters: Sequence[Hashable]) -> dict:
    """The hit rate with its 95% interval clustered by ``clusters`` (one label per outcome).

    Returns:
        :func:`wilson`'s dict on the slices' counts (``count``/``total`` stay the real counts,
        ``low``/``high`` come from the effective n), plus ``clusters``, ``icc``,
        ``design_effect`` and ``effective_n``.
    """
    if len(hits) != len(clusters):
        raise ValueError(f"{len(hits)} outcomes but {len(clusters)} cluster labels")
    groups: dict[Hashable, list[bool]] = {}
    for h, c in zip(hits, clusters, strict=True):
        groups.setdefault(c, []).append(bool(h))
    deff, icc = design_effect(list(groups.values()))
    n, count = len(hits), sum(bool(h) for h in hits)
    out = wilson(count, n)
    if n:
        eff = wilson(count / deff, n / deff)
        out["low"] = min(out["low"], eff["low"])
        out["high"] = max(out["high"], eff["high"])
    out.update(clusters=len(groups), icc=icc, design_effect=deff, effective_n=n / deff)
    return out


def mcnemar(a_only: int, b_only: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts (1.0 when there are none).

    ``p = min(1, 2 · P(X ≤ min(b, c)))`` with ``X ~ Binomial(b + c, 1/2)``.
    """
    if a_only < 0 or b_only < 0:
        raise ValueError("discordant counts must be >= 0")
    n = a_only + b_only
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(a_only, b_only) + 1)) / 2**n
    return min(1.0, 2 * tail)
