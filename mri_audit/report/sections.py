"""The report's figure sections: per-slice plots, transfer and worst cases.

Each function reads an :class:`~mri_audit.report.html.AuditInputs` (or its results) and returns
plain
display data with base64 PNG figures (:mod:`mri_audit.report.figures`,
:mod:`mri_audit.report.score_figures`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from mri_audit.fnaf.window import make_window
from mri_audit.report.method import SCORE_LABEL, num, rate_cells, score_spec

if TYPE_CHECKING:
    from mri_audit.report.html import AuditInputs

__all__ = ["frame_groups", "record_figures", "transfer_section", "worst_cases"]


def frame_groups(frame) -> dict[tuple[str, str], Any]:
    """FNAF records grouped by (model, attack), with numeric and boolean columns coerced."""
    import pandas as pd

    frame = frame.copy()
    for col in ("score", "r", "r0", "e", "loss", "control", "ip", "rho", "row", "col"):
        frame[col] = pd.to_numeric(frame.get(col), errors="coerce")
    for col in ("hit", "found"):
        frame[col] = frame[col].astype(str).str.strip().str.lower().isin(("true", "1", "1.0"))
    if "kind" in frame:
        frame = frame[frame["kind"].astype(str) == "fnaf"]
    groups = {}
    for (model, attack), rows in frame.groupby(["model", "attack"], sort=False):
        groups[(str(model), str(attack))] = rows
    return groups


def record_figures(audit: AuditInputs) -> dict:
    """The per-slice figures of the audit's records under its criterion.

    Returns:
        ``heatmap`` (hit locations), ``histogram`` (the criterion's score with its threshold),
        ``scatter`` (evidence ``r₀`` against recovery ``r``), ``curves`` (the attack rate
        against the threshold) and ``ecdf`` (``r`` and ``r₀`` distributions), base64 PNGs, and
        ``volumes``, the per-volume table (:func:`mri_audit.report.curves.per_volume`); empty
        when the records hold no FNAF attack. Problems are added to ``audit.notes``.
    """
    from mri_audit.report import figures, score_figures

    r, out, crit = audit.results, {}, audit.criterion
    try:
        groups = frame_groups(audit.records)
    except (KeyError, TypeError, ValueError) as err:
        audit.notes.append(f"The records lack expected columns ({err}); per-slice plots omitted.")
        return out
    if not groups:
        return out
    from mri_audit.report.curves import curve_figures, per_volume

    names = [m["name"] for m in r["models"]]
    out["volumes"] = per_volume(groups, names)
    out |= curve_figures(groups, crit, r["verdict"].get("max_attack_rate"))
    mean = (audit.images or {}).get("mean_target")
    shapes = (r.get("data") or {}).get("target_shapes") or []
    shape = tuple(mean.shape) if mean is not None else (tuple(shapes[0]) if shapes else None)
    titles = {key: f"{key[0]} · {key[1]}" for key in groups}
    ncols = len({attack for _, attack in groups})  # one row per model
    if shape is not None and r.get("window_fraction") is not None:
        hits = {
            titles[k]: (g["row"][g["hit"]].dropna(), g["col"][g["hit"]].dropna())
            for k, g in groups.items()
        }
        window = make_window(shape, r["window_fraction"])
        out["heatmap"] = figures.location_heatmaps(
            hits, window=window, shape=shape, background=mean, ncols=ncols
        )
    else:
        audit.notes.append("The target shape or window is unknown; location heatmaps omitted.")
    found = {k: g[g["found"]] for k, g in groups.items()}
    column, _, param, *_ = score_figures.HISTOGRAM[crit.name]
    out["histogram"] = score_figures.score_histograms(
        {
            titles[k]: (g[column].to_numpy(), g["control"].to_numpy() if crit.has_control else None)
            for k, g in found.items()
        },
        criterion=crit.name,
        threshold=crit.params()[param],
        ncols=ncols,
    )
    scatter: dict[str, dict] = {}
    for (model, attack), g in found.items():
        scatter.setdefault(model, {})[attack] = (
            g["r0"].to_numpy(),
            g["r"].to_numpy(),
            g["hit"].to_numpy(),
        )
    out["scatter"] = score_figures.recovery_scatter(
        scatter, criterion=crit.name, params=crit.params()
    )
    return out


def transfer_section(results: dict, names: list[str]) -> tuple[list[dict], str | None]:
    """The transfer tables (one per attack) and their heatmap figure (conditional rates)."""
    from mri_audit.report import figures

    tables, panels = [], {}
    transfer = results.get("transfer") or {}
    for key, cells in transfer.items():
        rates = np.full((len(names), len(names)), np.nan)
        totals = np.zeros((len(names), len(names)))
        rows = []
        for i, src in enumerate(names):
            row = []
            for j, tgt in enumerate(names):
                w = (cells.get(src) or {}).get(tgt) or {}
                cond = w.get("conditional", w if "value" in w else None)
                if cond and cond.get("value") is not None:
                    rates[i, j], totals[i, j] = cond["value"], cond["total"]
                if src == tgt:
                    row.append(None)
                    continue
                cell = rate_cells(cond)
                cell["unconditional"] = rate_cells(w.get("unconditional"))
                cell["own"] = rate_cells(w.get("own"))
                row.append(cell)
            rows.append({"source": src, "cells": row})
        tables.append({"title": key, "targets": names, "rows": rows})
        panels[key] = (names, names, rates, totals)
    return tables, (figures.transfer_heatmaps(panels) if panels else None)


def _hit(criterion, case: dict) -> bool:
    """``criterion``'s hit rule on the quantities of one stored feature."""
    import torch

    q = {
        k: torch.tensor([math.nan if case.get(k) is None else float(case[k])])
        for k in ("r", "r0", "e", "loss", "ip")
    }
    return bool(criterion.hit(q)[0])


def _replays(frame, case: dict, names: list[str]) -> dict[str, tuple]:
    """(r, e, hit) of the case's feature replayed on each other model, from the records."""
    if frame is None or not len(names) > 1:
        return {}
    try:
        rows = frame[
            (frame["model"].astype(str) == str(case["model"]))
            & (frame["attack"].astype(str) == str(case["attack"]))
            & (frame["volume"].astype(str) == str(case["volume"]))
            & (frame["slice"].astype(int) == int(case["slice"]))
        ]
    except (KeyError, TypeError, ValueError):
        return {}
    out = {}
    for name in names:
        cols = [f"transfer_{q}:{name}" for q in ("r", "e", "hit")]
        if name == case["model"] or len(rows) != 1 or any(c not in rows for c in cols):
            continue
        r, e, hit = (rows[c].iloc[0] for c in cols)
        if str(hit).strip().lower() in ("", "nan", "none"):
            continue
        out[name] = (r, e, str(hit).strip().lower() in ("true", "1", "1.0"))
    return out


def _label(name: str, r, e, hit: bool) -> str:
    """A model panel's title: name, ``r`` and ``e``, hit label."""
    values = f"r = {num(float(r), '.3f')}, e = {num(float(e), '.3f')}"
    return f"{name}\n{values}\n{'HIT' if hit else 'no hit'}"


def worst_cases(audit: AuditInputs, names: list[str]) -> list[dict]:
    """Caption and figure of each stored worst case.

    The cases are the audit criterion's selections, across attacks and including slices where
    the models disagree (:func:`mri_audit.audit.panels.worst_records`). Their hit label is
    re-derived
    when the report reads the audit under the same criterion (thresholds may differ), and kept,
    with the audit's criterion named, otherwise. Each model panel is titled with its ``r``, ``e``
    and hit label: the case's own model from the case, the others from the transfer replays of
    the same feature in the records, where present. ``models`` lists those labels.
    """
    from mri_audit.report import figures

    out, crit, images = [], audit.criterion, audit.images
    for i, case in enumerate(audit.results.get("worst_cases") or []):
        own = case.get("criterion") or audit.reread_from or crit.name
        hit = _hit(crit, case) if own == crit.name else bool(case.get("hit"))
        caption = {k: case.get(k) for k in ("model", "attack", "volume", "slice")}
        caption |= {
            "r": num(case.get("r"), ".3f"),
            "r0": num(case.get("r0"), ".3f"),
            "e": num(case.get("e"), ".3f"),
            "rho": num(case.get("rho"), ".3f"),
            "score": num(case.get("score"), score_spec(own)),
            "score_label": SCORE_LABEL.get(own, "score"),
            "criterion": own,
            "hit": hit,
            "why": case.get("why") or "worst",
        }
        replays = _replays(audit.records, case, names) if own == crit.name else {}
        labels = {}
        for name in names:
            if name == case.get("model"):
                labels[name] = (case.get("r"), case.get("e"), hit)
            elif name in replays:
                labels[name] = replays[name]
        caption["models"] = [
            {"name": n, "r": num(float(v[0]), ".3f"), "e": num(float(v[1]), ".3f"), "hit": v[2]}
            for n, v in labels.items()
            if v[0] is not None
        ]
        keys = [f"case{i}_zero_filled", f"case{i}_target"]
        keys += [f"case{i}_model{j}" for j in range(len(names))]
        feature = case.get("feature") or {}
        figure = None
        if images is not None and all(k in images for k in keys) and feature.get("rows"):
            titles = [f"zero-filled input\nr₀ = {caption['r0']}", "ground truth\n+ feature"]
            for name in names:
                titles.append(_label(name, *labels[name]) if name in labels else name)
            for j, name in enumerate(names):  # a stochastic model: one sample beside its mean
                if f"case{i}_model{j}_sample" in images:
                    keys.append(f"case{i}_model{j}_sample")
                    titles.append(f"{name}\none sample (the panel before: the mean)")
            figure = figures.worst_case_panel(
                [(t, images[k]) for t, k in zip(titles, keys, strict=True)],
                rows=feature["rows"],
                cols=feature["cols"],
            )
        out.append({"index": i + 1, "caption": caption, "figure": figure})
    return out
