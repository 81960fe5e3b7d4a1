"""Budget convergence: the attack rate an attack would have had at smaller budgets, from the
work it already did (no extra model pass).

An attack whose search returns its candidates in evaluation order (``fnaf-rs``: candidate
``k`` of a slice is its ``k``-th draw, keyed by (seed, volume, slice, k)) gets, per slice and
criterion, whether the best of its first ``k`` candidates is a hit, ``k = 1…K``: the audit's
rate at budget ``k`` is then what ``--candidates k`` would report (the same draws). A stochastic
model records no curve: its search's hits are confirmed on fresh noise only for the final pick,
so an unconfirmed curve could rise where the reported rate does not.
"""

from __future__ import annotations

import torch

from mri_audit.fnaf.criteria import Criterion
from mri_audit.fnaf.engine import Scores, select_best

__all__ = ["DOUBLING_RISE", "budget_hits", "evaluation_order"]

DOUBLING_RISE = 0.05
"""A rate that still rises by more than this (5 points) over the last doubling of the budget
has not converged: the audit warns that it is a lower bound."""


def evaluation_order(slice_index: torch.Tensor) -> torch.Tensor:
    """Each candidate's position among its slice's candidates, in batch order (0, 1, …).

    Shape:
        slice_index: ``(N,)``; returns ``(N,)`` int64.
    """
    n = slice_index.shape[0]
    if n == 0:
        return slice_index.clone()
    perm = torch.argsort(slice_index, stable=True)
    grouped = slice_index[perm]
    position = torch.arange(n, device=slice_index.device)
    first = torch.full((int(grouped.max()) + 1,), n, device=slice_index.device)
    first = first.scatter_reduce(0, grouped, position, reduce="amin")
    order = torch.empty_like(position)
    order[perm] = position - first[grouped]
    return order


def budget_hits(
    criteria: dict[str, Criterion], slice_index: torch.Tensor, scores: Scores, num_slices: int
) -> dict[str, torch.Tensor]:
    """Per criterion, whether the best of each slice's first ``k`` candidates is a hit.

    Selection is the attack's (rounded scores, ties to the lowest candidate number).

    Shape:
        slice_index: ``(N,)``; returns ``{name: (num_slices, K)}`` bool, ``K`` the most
        candidates of a slice (a slice with fewer keeps its last value).
    """
    order = evaluation_order(slice_index)
    budget = int(order.max()) + 1 if order.numel() else 0
    out = {}
    for name, crit in criteria.items():
        key = crit.rank_key(scores)
        columns = []
        for k in range(1, budget + 1):
            masked = torch.where(order < k, key, torch.full_like(key, -float("inf")))
            sel = select_best(masked, slice_index, num_slices)
            hit = crit.hit(scores.take(sel.index)) & sel.found
            columns.append(hit)
        out[name] = torch.stack(columns, 1) if columns else torch.zeros(num_slices, 0).bool()
    return out
