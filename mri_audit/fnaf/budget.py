"""Budget convergence: the attack rate an attack would have had at smaller budgets, from the
work it already did (no extra model pass).

Each attack's search says when each candidate it evaluated became available (a
:class:`BudgetTrace`: its cost in the attack's budget unit); per slice and criterion the curve
holds whether the best candidate available at budget ``k`` is a hit:

- ``fnaf-rs`` (``candidates``, k = 1…K): candidate ``k`` of a slice is its ``k``-th draw, keyed
  by (seed, volume, slice, k), so the rate at ``k`` is what ``--candidates k`` would report;
- ``fnaf-fd`` (``evaluations``, k = 1…K): the best of the first ``k`` evaluations in the order
  they were made (chain by chain within each round);
- ``fnaf-pgd`` (``steps``, k = 0…S): the random candidates at step 0, then the best iterate
  after each gradient step (the final one as reported).

A stochastic model records no curve: its search's hits are confirmed on fresh noise only for
the final pick, so an unconfirmed curve could rise where the reported rate does not.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from mri_audit.fnaf.criteria import Criterion
from mri_audit.fnaf.engine import Scores, select_best

__all__ = [
    "DOUBLING_RISE",
    "FIRST_BUDGET",
    "BudgetTrace",
    "budget_hits",
    "evaluation_order",
    "in_order",
]

FIRST_BUDGET = {"candidates": 1, "evaluations": 1, "steps": 0}
"""The budget of a curve's first point, by unit (a gradient attack's step 0 is its start)."""


class BudgetTrace(NamedTuple):
    """Every candidate a search made available, and the budget it became available at.

    Shape:
        slice_index, cost: ``(N,)`` int64; scores: :class:`Scores` of ``(N,)`` fields.
    """

    unit: str
    slice_index: torch.Tensor
    scores: Scores
    cost: torch.Tensor
    top: int  # the attack's whole budget (the curve's last point)


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


def in_order(unit: str, slice_index: torch.Tensor, scores: Scores, top: int) -> BudgetTrace:
    """The trace of a search whose candidates are, per slice, in the order they were made."""
    return BudgetTrace(unit, slice_index, scores, evaluation_order(slice_index) + 1, top)


def budget_hits(
    criteria: dict[str, Criterion], trace: BudgetTrace, num_slices: int
) -> dict[str, torch.Tensor]:
    """Per criterion, whether the best candidate available at each budget is a hit.

    Selection is the attack's (rounded scores, ties to the lowest position in the trace).

    Shape:
        returns ``{name: (num_slices, K)}`` bool for the budgets ``FIRST_BUDGET[unit]`` …
        ``trace.top`` (a slice whose search stopped earlier keeps its last value).
    """
    first = FIRST_BUDGET[trace.unit]
    cost, last = trace.cost, trace.top
    out = {}
    for name, crit in criteria.items():
        key = crit.rank_key(trace.scores)
        columns = []
        for k in range(first, last + 1):
            masked = torch.where(cost <= k, key, torch.full_like(key, -float("inf")))
            sel = select_best(masked, trace.slice_index, num_slices)
            hit = crit.hit(trace.scores.take(sel.index)) & sel.found
            columns.append(hit)
        out[name] = torch.stack(columns, 1) if columns else torch.zeros(num_slices, 0).bool()
    return out
