"""The plain records of an attack's result: one dict per slice, for the journal and the CSV.

Each record holds the chosen criterion's pick (its quantities, the encoded feature that replays
exactly, its location) and, under ``criteria``, every criterion's pick among the same candidates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mri_audit.fnaf.criteria import QUANTITIES
from mri_audit.fnaf.features import SliceContext, encode_features

if TYPE_CHECKING:
    from mri_audit.fnaf.attack import AttackResult, Pick

__all__ = ["result_records", "SAMPLING"]

SAMPLING = ("r_se", "samples")
"""A stochastic model's sampling fields, kept only when it averaged more than one sample (a
deterministic model's records are as they were): ``samples`` and the standard error of ``r``
(``e_se``, the same number, since ``r0`` is deterministic)."""


def _sampling(p: dict, i: int) -> dict:
    n = p["samples"][i]
    if n is None or n != n or n <= 1:
        return {}
    se = _plain(p["r_se"][i])
    return {"samples": int(n), "r_se": se, "e_se": se}


def _pick_fields(pick: Pick) -> dict[str, list]:
    """A pick's per-slice values as host lists (one transfer per tensor)."""
    out = {"found": pick.found.tolist(), "score": pick.score.tolist()}
    out |= {q: getattr(pick.scores, q).tolist() for q in (*QUANTITIES, *SAMPLING)}
    out |= {"accepted": pick.accepted.tolist(), "row": pick.row.tolist(), "col": pick.col.tolist()}
    return out


def _plain(v):
    """NaN as None (JSON has no NaN); rounded centroids."""
    if isinstance(v, float) and v != v:
        return None
    return v


def result_records(ctx: SliceContext, result: AttackResult) -> list[dict]:
    """Plain per-slice records of an attack result (one host transfer per field).

    Each record holds the selected candidate's quantities under the attack's criterion at the top
    level (``hit`` is that criterion's), and under ``criteria`` what each criterion selects
    among the same candidates (quantities only: hits are re-derived from them).
    """
    picks = {name: _pick_fields(p) for name, p in result.picks.items()}
    main = picks[result.criterion]
    hit, control = result.hit.tolist(), result.control.tolist()
    control_hit, evaluated = result.control_hit.tolist(), result.evaluated.tolist()
    encoded = encode_features(result.features)
    budget = {n: h.tolist() for n, h in (result.budget or {}).items()}
    records = []
    for i, (volume, slice_idx) in enumerate(zip(ctx.volumes, ctx.slices.tolist(), strict=True)):
        found = bool(main["found"][i])
        rec = {"volume": volume, "slice": int(slice_idx), "criterion": result.criterion}
        rec["found"] = found
        rec["hit"] = bool(hit[i])
        rec["score"] = _plain(main["score"][i])
        rec.update({q: _plain(main[q][i]) for q in QUANTITIES})
        rec.update(_sampling(main, i))
        rec["control"] = _plain(control[i])
        rec["control_hit"] = bool(control_hit[i])
        rec["evaluated"] = int(evaluated[i])
        rec["accepted"] = int(main["accepted"][i])
        rec["feature"] = encoded[i] if found else None
        for axis in ("row", "col"):
            v = _plain(main[axis][i])
            rec[axis] = None if v is None else round(v, 2)
        rec["criteria"] = {
            name: {
                "found": bool(p["found"][i]),
                "score": _plain(p["score"][i]),
                **{q: _plain(p[q][i]) for q in QUANTITIES},
                **_sampling(p, i),
                "accepted": int(p["accepted"][i]),
                "row": None if _plain(p["row"][i]) is None else round(p["row"][i], 2),
                "col": None if _plain(p["col"][i]) is None else round(p["col"][i], 2),
            }
            for name, p in picks.items()
        }
        if result.budget:  # whether the best candidate at each budget is a hit (fnaf.budget)
            rec["budget"] = {n: [int(h) for h in hits[i]] for n, hits in budget.items()}
            rec["budget_unit"] = result.budget_unit
        records.append(rec)
    return records
