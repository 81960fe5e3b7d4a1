"""Aggregates of an audit, recounted from its records (and re-read under another criterion).

Every number in ``results.json`` is a function of the records alone (:func:`aggregate`), so a
reviewer can recount it from ``records.csv``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from mri_audit.audit.stats import clustered_rate, wilson
from mri_audit.audit.verdict import gate, paired_comparisons
from mri_audit.errors import DataError
from mri_audit.fnaf.criteria import QUANTITIES, Criterion
from mri_audit.mri.metrics import nmse_from_sums, psnr_from_sums

__all__ = ["reread", "wilson", "aggregate"]

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
FAILURE_KINDS = ("skipped", "error")


def _summary(values: Iterable[float | None]) -> dict:
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return {
            "n": 0,
            "mean": None,
            "max": None,
            **{f"q{int(q * 100):02d}": None for q in QUANTILES},
        }
    out = {"n": int(arr.size), "mean": float(arr.mean()), "max": float(arr.max())}
    for q, v in zip(QUANTILES, np.quantile(arr, QUANTILES), strict=True):
        out[f"q{int(q * 100):02d}"] = float(v)
    return out


def _clean(records: Sequence[dict], prefix: str = "clean_") -> dict:
    """fastMRI metrics per model: per-volume SSIM/NMSE/PSNR, then the mean over volumes
    (``prefix="zf_"``: the zero-filled baseline on the same slices)."""
    per_slice: dict[str, dict[tuple, dict]] = defaultdict(dict)
    for r in records:
        if r.get(f"{prefix}ssim") is None:
            continue
        per_slice[r["model"]].setdefault((r["volume"], int(r["slice"])), r)
    out = {}
    for model, slices in per_slice.items():
        volumes: dict[str, list[dict]] = defaultdict(list)
        for (volume, _), r in slices.items():
            volumes[volume].append(r)
        ssims, nmses, psnrs = [], [], []
        for rows in volumes.values():
            sq_err = sum(r[f"{prefix}sq_err"] for r in rows)
            sq_norm = sum(r["clean_sq_norm"] for r in rows)
            pixels = sum(r["clean_pixels"] for r in rows)
            data_range = max(r["data_range"] for r in rows)
            ssims.append(sum(r[f"{prefix}ssim"] for r in rows) / len(rows))
            nmses.append(nmse_from_sums(sq_err, sq_norm))
            psnrs.append(psnr_from_sums(sq_err, pixels, data_range))
        out[model] = {
            "ssim": float(np.mean(ssims)),
            "nmse": float(np.mean(nmses)),
            "psnr": float(np.mean(psnrs)),
            "volumes": len(volumes),
            "slices": len(slices),
        }
    return out


def reread(records: Sequence[dict], criterion: Criterion) -> list[dict]:
    """The FNAF records as a fresh audit under ``criterion`` would have written them.

    Each record keeps, under ``criteria``, what every criterion selects among the candidates the
    audit evaluated; this takes ``criterion``'s selection and re-derives the hit (and the control's
    hit) from its quantities with ``criterion``'s thresholds. Other records pass unchanged.
    Transfer replays are kept only when the audit ran under the same criterion (the replayed
    features are that criterion's selections); their hits are re-derived too.
    """
    fnaf = [i for i, r in enumerate(records) if r.get("kind", "fnaf") == "fnaf"]
    out = [dict(r) for r in records]
    if not fnaf:
        return out
    views = []
    for i in fnaf:
        r = records[i]
        pick = (r.get("criteria") or {}).get(criterion.name)
        if pick is None:
            raise DataError(
                f"the record of {r.get('model')} {r.get('attack')} {r.get('volume')} slice "
                f"{r.get('slice')} holds no {criterion.name!r} selection; re-run the audit"
            )
        views.append(pick)

    def column(rows, name):
        return torch.tensor(
            [math.nan if v.get(name) is None else float(v[name]) for v in rows], dtype=torch.float64
        )

    q = {name: column(views, name) for name in QUANTITIES}
    hits = criterion.hit(q).tolist()
    control = column([records[i] for i in fnaf], "control")
    control_hits = criterion.control_hit(control).tolist() if criterion.has_control else None
    for j, i in enumerate(fnaf):
        rec, pick = out[i], views[j]
        same = records[i].get("criterion") == criterion.name
        rec.update({k: pick.get(k) for k in ("found", "score", *QUANTITIES, "accepted")})
        rec["hit"] = bool(pick["found"]) and bool(hits[j])
        rec["control_hit"] = bool(control_hits[j]) if control_hits is not None else False
        rec["criterion"] = criterion.name
        if not same:
            rec["feature"] = None
            rec["row"], rec["col"] = pick.get("row"), pick.get("col")
            rec["transfer"] = {}
        else:
            rec["transfer"] = _reread_transfer(rec.get("transfer") or {}, criterion)
    return out


def _reread_transfer(transfer: dict, criterion: Criterion) -> dict:
    out = {}
    for target, replay in transfer.items():
        if replay is None or any(q not in replay for q in ("r", "r0", "e", "loss", "ip")):
            out[target] = replay
            continue
        q = {
            k: torch.tensor([math.nan if replay.get(k) is None else float(replay[k])])
            for k in ("r", "r0", "e", "loss", "ip")
        }
        out[target] = dict(replay, hit=bool(criterion.hit(q)[0]))
    return out


def _attack(rows: Sequence[dict], criterion: Criterion | None = None) -> dict:
    kind = rows[0].get("kind", "fnaf")
    n = len(rows)
    if kind != "fnaf":
        keys = sorted({k for r in rows for k in r if k.startswith(("ssim_", "nmse_", "psnr_"))})
        keys.append("perturbation")
        return {"kind": kind, "slices": n, **{k: _summary(r.get(k) for r in rows) for k in keys}}
    found = [r for r in rows if r["found"]]
    has_control = criterion is None or criterion.has_control
    out = {
        "kind": kind,
        "criterion": rows[0].get("criterion"),
        "slices": n,
        "found": len(found),
        "attack_rate": clustered_rate([r["hit"] for r in rows], [r["volume"] for r in rows]),
        "ip_acceptance": wilson(
            sum(r["accepted"] for r in rows), sum(r["evaluated"] for r in rows)
        ),
        "control_rate": clustered_rate(
            [r["control_hit"] for r in rows], [r["volume"] for r in rows]
        )
        if has_control
        else None,
        "score": _summary(r.get("score") for r in found),
        "control_loss": _summary(r.get("control") for r in rows),
        "ip_distance": _summary(r.get("ip") for r in found),
    }
    out.update({q: _summary(r.get(q) for r in found) for q in QUANTITIES if q != "ip"})
    curve = _budget(rows, criterion.name if criterion else out["criterion"])
    if curve is not None:
        out["budget"] = curve
    return out


def _budget(rows: Sequence[dict], name: str) -> dict | None:
    """The attack rate at every smaller budget (``mri_audit.fnaf.budget``), with clustered
    intervals, and whether the last doubling of the budget still raised it."""
    from mri_audit.fnaf.budget import DOUBLING_RISE, FIRST_BUDGET

    curves = [(r.get("budget") or {}).get(name) for r in rows]
    if not curves or any(not c for c in curves):
        return None
    unit = rows[0].get("budget_unit", "candidates")
    first = FIRST_BUDGET[unit]
    top = max(len(c) for c in curves)
    volumes = [r["volume"] for r in rows]
    rates = [
        clustered_rate([bool(c[min(i, len(c) - 1)]) for c in curves], volumes) for i in range(top)
    ]
    budgets = list(range(first, first + top))
    last = budgets[-1]
    half = max(first, 1, last // 2)
    rise = rates[-1]["value"] - rates[half - first]["value"]
    return {
        "unit": unit,
        "k": budgets,
        "rate": [{k: r[k] for k in ("value", "low", "high")} for r in rates],
        "last_doubling": {"from": half, "to": last, "rise": rise},
        "converged": last < 2 or rise <= DOUBLING_RISE,
    }


def _transfer(records: Sequence[dict]) -> dict:
    """Features found on model A replayed on model B, per attack (DESIGN §6).

    For every attack, source A and target B, each clustered by volume over the slices where A
    found a feature: ``unconditional``, B's hit rate on A's features; ``own``, B's own attack
    rate on the same slices; ``conditional``, the share of A's hits that are hits on B.
    """
    own = {
        (r["model"], r["attack"], r["volume"], int(r["slice"])): bool(r["hit"])
        for r in records
        if r.get("kind", "fnaf") == "fnaf"
    }
    cells: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(list))))
    for r in records:
        if r.get("kind", "fnaf") != "fnaf":
            continue
        for target, replay in (r.get("transfer") or {}).items():
            if replay is None:
                continue
            cell = cells[r["attack"]][r["model"]][target]
            key = (target, r["attack"], r["volume"], int(r["slice"]))
            cell["unconditional"].append((bool(replay["hit"]), r["volume"]))
            if key in own:
                cell["own"].append((own[key], r["volume"]))
            if r["hit"]:
                cell["conditional"].append((bool(replay["hit"]), r["volume"]))

    def clustered(pairs: list) -> dict:
        return clustered_rate([h for h, _ in pairs], [v for _, v in pairs])

    return {
        attack: {
            src: {
                tgt: {k: clustered(c[k]) for k in ("unconditional", "own", "conditional")}
                for tgt, c in targets.items()
            }
            for src, targets in sources.items()
        }
        for attack, sources in cells.items()
    }


def aggregate(
    records: Sequence[dict],
    *,
    criterion: Criterion,
    max_attack_rate: float | None,
    primary: str | None,
) -> dict:
    """All aggregates of an audit under ``criterion``, from its records alone."""
    failures = [r for r in records if r.get("kind") in FAILURE_KINDS]
    records = reread([r for r in records if r.get("kind") not in FAILURE_KINDS], criterion)
    groups: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        groups[r["model"]][r["attack"]].append(r)
    attacks = {
        m: {a: _attack(rows, criterion) for a, rows in by.items()} for m, by in groups.items()
    }
    primary = primary or next(iter(groups), None)
    verdict = {
        "model": primary,
        "criterion": criterion.name,
        **criterion.params(),
        "max_attack_rate": max_attack_rate,
        **gate(attacks, primary, max_attack_rate),
    }
    baseline = _clean(records, prefix="zf_")
    return {
        "clean": _clean(records),
        "zero_filled": next(iter(baseline.values()), None),
        "attacks": attacks,
        "transfer": _transfer(records),
        "paired": paired_comparisons(records),
        "verdict": verdict,
        "failures": _failures(failures),
    }


def _failures(rows: Sequence[dict]) -> dict:
    """Slices that could not be audited: skipped data, or a model that raised."""
    slices: dict[tuple, dict] = {}
    for r in rows:
        key = (r["kind"], r["model"], r["volume"], int(r["slice"]))
        slices.setdefault(
            key,
            {
                "kind": r["kind"],
                "model": r["model"],
                "volume": r["volume"],
                "slice": int(r["slice"]),
                "reason": r.get("error"),
            },
        )
    listed = sorted(slices.values(), key=lambda f: (f["model"], f["volume"], f["slice"]))
    return {
        "skipped": sum(1 for f in listed if f["kind"] == "skipped"),
        "errors": sum(1 for f in listed if f["kind"] == "error"),
        "slices": listed,
    }
