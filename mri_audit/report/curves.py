"""Report sections computed from the per-slice records: per-volume table, rate-vs-threshold
curves and recovery distributions.

Selection never depends on the hit thresholds (DESIGN §4), so the attack rate at any other
threshold is recomputed exactly from the stored quantities of each slice's selected feature: the
criterion's own IP rule (:meth:`~mri_audit.fnaf.criteria.Criterion.admissible`) and score, compared
with the threshold as in :meth:`~mri_audit.fnaf.criteria.Criterion.hit`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mri_audit.fnaf.criteria import Criterion, make_criterion

__all__ = [
    "THRESHOLD",
    "budget_figure",
    "curve_figures",
    "per_volume",
    "rate_curve",
    "threshold_grid",
]

# Per criterion: the threshold parameter, and whether a hit is score >= t (else r < t).
THRESHOLD = {"erasure": "margin", "recovery": "min_recovery", "paper": "threshold"}


def per_volume(groups: dict[tuple[str, str], Any], names: list[str]) -> dict:
    """Slices, hits and rate of each volume, per model and FNAF attack.

    Args:
        groups: (model, attack) -> that attack's FNAF records (a DataFrame with ``volume`` and a
            boolean ``hit`` column), as :func:`mri_audit.report.sections.frame_groups` gives.
        names: the models in display order.

    Returns:
        ``columns`` (model, attack) pairs, ``models`` (model, number of its columns) for the
        header, ``rows`` (one per volume: its cells, None where the model/attack has no slice of
        it) and ``total`` (one cell per column).
    """
    order = {n: i for i, n in enumerate(names)}
    columns = sorted(groups, key=lambda k: order.get(k[0], len(order)))
    volumes = sorted({str(v) for g in groups.values() for v in g["volume"]})

    def cell(rows) -> dict | None:
        n, hits = len(rows), int(rows["hit"].sum())
        if not n:
            return None
        return {"slices": n, "hits": hits, "rate": f"{hits / n:.0%}"}

    rows = []
    for volume in volumes:
        cells = [cell(groups[k][groups[k]["volume"].astype(str) == volume]) for k in columns]
        rows.append({"volume": volume, "cells": cells})
    models: dict[str, int] = {}
    for model, _ in columns:
        models[model] = models.get(model, 0) + 1
    return {
        "columns": [{"model": m, "attack": a} for m, a in columns],
        "models": list(models.items()),
        "rows": rows,
        "total": [cell(groups[k]) for k in columns],
    }


def threshold_grid(criterion: Criterion, values: np.ndarray, points: int = 401) -> np.ndarray:
    """Thresholds to evaluate: ``[0, 1]`` for ``δ`` and ``r_min``; for ``τ``, a log range around
    the losses (:func:`~mri_audit.report.score_figures.log_range`, finite for any ``τ ≥ 0``);
    always holding the criterion's own threshold."""
    used = criterion.params()[THRESHOLD[criterion.name]]
    if criterion.name == "paper":  # τ = 0 itself is appended below (a log axis drops it)
        from mri_audit.report.score_figures import log_range

        lo, hi = log_range(values, used)
        grid = np.logspace(np.log10(lo), np.log10(hi), points)
    else:
        grid = np.linspace(0.0, 1.0, points)
    return np.unique(np.append(grid, used))


def rate_curve(group, criterion: Criterion, grid: np.ndarray) -> np.ndarray:
    """The attack rate of one (model, attack) at each threshold of ``grid``.

    Args:
        group: that attack's FNAF records, one per audited slice (``found``, ``r``, ``r0``,
            ``e``, ``loss``, ``ip``).
        criterion: the criterion (its other parameters, e.g. ``r₀_min``, stay fixed).
        grid: the thresholds.

    Returns:
        hits / slices at each threshold (slices without a feature count as misses).
    """
    import torch

    q = {
        k: torch.tensor(group[k].to_numpy(dtype=np.float64)) for k in ("r", "r0", "e", "loss", "ip")
    }
    ok = criterion.admissible(q).numpy() & group["found"].to_numpy(dtype=bool)
    grid = np.asarray(grid, dtype=np.float64)[None, :]
    if criterion.name == "recovery":
        hits = q["r"].numpy()[:, None] < grid
    else:
        hits = criterion.score(q).numpy()[:, None] >= grid
    return (ok[:, None] & hits).sum(0) / max(1, len(group))


def curve_figures(
    groups: dict[tuple[str, str], Any], criterion: Criterion, limit: float | None
) -> dict[str, str]:
    """The rate-vs-threshold curves and the ``r``/``r₀`` distributions, as base64 PNGs.

    Args:
        groups: (model, attack) -> that attack's FNAF records.
        criterion: the criterion the report reads the audit under.
        limit: ``--max-attack-rate`` (drawn on the curves), or None.
    """
    import torch

    from mri_audit.report import score_figures

    param = THRESHOLD[criterion.name]
    values = np.concatenate(
        [
            criterion.score(
                {k: torch.tensor(g[k].to_numpy(dtype=np.float64)) for k in ("r", "r0", "e", "loss")}
            ).numpy()
            for g in groups.values()
        ]
    )
    grid = threshold_grid(criterion, values)
    curves: dict[str, dict] = {}
    ecdfs: dict[str, dict] = {}
    for (model, attack), g in groups.items():
        curves.setdefault(attack, {})[model] = (grid, rate_curve(g, criterion, grid))
        found = g[g["found"]]
        ecdfs.setdefault(attack, {})[model] = (found["r"].to_numpy(), found["r0"].to_numpy())
    params = criterion.params()
    guides = {}
    if criterion.name == "recovery":
        guides = {
            "r": (params["min_recovery"], f"r_min = {params['min_recovery']:g}"),
            "r0": (params["min_evidence"], f"r₀_min = {params['min_evidence']:g}"),
        }
    elif criterion.name == "erasure":
        guides = {"r0": (params["margin"], f"δ = {params['margin']:g} (hits need r₀ ≥ δ)")}
    return {
        "curves": score_figures.threshold_curves(
            curves,
            criterion=criterion.name,
            used=params[param],
            default=make_criterion(criterion.name).params()[param],
            limit=limit,
        ),
        "ecdf": score_figures.recovery_ecdfs(ecdfs, guides=guides),
    }


def budget_figure(results: dict, names: list[str]) -> str | None:
    """The attack rate against the attack's budget (``mri_audit.fnaf.budget``), one panel per
    attack that records it, one line per model with its 95% band; None when none does."""
    from mri_audit.report.figures import PALETTE, STYLE, _figure, _grid, _png

    panels: dict[str, dict] = {}
    for model in names:
        for attack, agg in ((results.get("attacks") or {}).get(model) or {}).items():
            curve = agg.get("budget") if isinstance(agg, dict) else None
            if curve and len(curve.get("k") or ()) > 1:
                panels.setdefault(attack, {})[model] = curve
    if not panels:
        return None
    import matplotlib
    import matplotlib.ticker

    with matplotlib.rc_context(STYLE):
        fig = _figure(3.6 * min(len(panels), 3), 2.8 * -(-len(panels) // 3))
        for ax, (attack, curves) in zip(_grid(fig, len(panels), 3), panels.items(), strict=True):
            for model, curve in curves.items():
                color = PALETTE[names.index(model) % len(PALETTE)] if model in names else None
                k = np.asarray(curve["k"])
                rate = np.asarray([r["value"] for r in curve["rate"]], dtype=float)
                low = np.asarray([r["low"] for r in curve["rate"]], dtype=float)
                high = np.asarray([r["high"] for r in curve["rate"]], dtype=float)
                ax.fill_between(k, low, high, color=color, alpha=0.15, linewidth=0)
                style = "-" if curve.get("converged", True) else "--"
                ax.plot(k, rate, style, color=color, label=model, marker="o", markersize=3)
            if k[0] == 0:  # a gradient attack's step 0 (its random start)
                ax.set_xscale("symlog", base=2, linthresh=1)
            else:
                ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel(next(iter(curves.values()))["unit"])
            ax.set_ylabel("attack rate")
            ax.set_title(attack)
            ax.legend(loc="lower right")
        return _png(fig)
