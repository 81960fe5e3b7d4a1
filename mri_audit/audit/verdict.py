"""The gate and the paired comparisons of an audit (DESIGN §6), from aggregates and records.

The gate (``--max-attack-rate p``) decides on the primary model's FNAF attack rates and their
clustered 95% intervals: **PASS** only when every rate's upper bound is ≤ p, **FAIL** when a
point estimate exceeds p, **INCONCLUSIVE** otherwise (too few slices or volumes to show the rate
is below p). The verdict names the deciding attack: the highest point estimate for FAIL, the
highest upper bound otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

from mri_audit.audit.stats import mcnemar

__all__ = ["STATUSES", "gate", "paired_comparisons"]

STATUSES = ("pass", "fail", "inconclusive", "none")


def gate(attacks: dict, primary: str | None, max_attack_rate: float | None) -> dict:
    """The verdict on ``primary``'s FNAF attack rates (``attacks``: results' ``attacks``).

    Returns:
        ``status`` (``pass``/``fail``/``inconclusive``, or ``none`` without a limit or a rate),
        ``passed`` (True only on PASS), ``worst`` (the deciding attack with its rate and
        interval) and ``reason`` (one sentence).
    """
    rates = []
    for attack, agg in (attacks.get(primary) or {}).items():
        r = agg.get("attack_rate") or {}
        if agg.get("kind", "fnaf") == "fnaf" and r.get("value") is not None:
            rates.append((attack, r))
    worst_point = max(rates, key=lambda ar: ar[1]["value"], default=None)
    worst_high = max(rates, key=lambda ar: ar[1]["high"], default=None)
    if max_attack_rate is None or not rates:
        deciding, status = worst_point, "none"
    elif worst_point[1]["value"] > max_attack_rate:
        deciding, status = worst_point, "fail"
    elif worst_high[1]["high"] <= max_attack_rate:
        deciding, status = worst_high, "pass"
    else:
        deciding, status = worst_high, "inconclusive"
    worst = None
    if deciding is not None:
        attack, r = deciding
        worst = {
            "model": primary,
            "attack": attack,
            "attack_rate": r["value"],
            "low": r["low"],
            "high": r["high"],
            "count": r["count"],
            "total": r["total"],
        }
    return {
        "status": status,
        "passed": status == "pass" if status != "none" else None,
        "worst": worst,
        "reason": _reason(status, worst, max_attack_rate),
    }


def _reason(status: str, worst: dict | None, limit: float | None) -> str:
    if worst is None:
        return "no FNAF attack rate to decide on"
    what = (
        f"{worst['model']} {worst['attack']} attack rate {worst['attack_rate']:.1%} "
        f"(95% CI {worst['low']:.1%}–{worst['high']:.1%}, {worst['count']}/{worst['total']} slices)"
    )
    if status == "fail":
        return f"{what} exceeds --max-attack-rate {limit:.1%}"
    if status == "pass":
        return f"{what}: every upper bound is within --max-attack-rate {limit:.1%}"
    if status == "inconclusive":
        return (
            f"{what}: the rate is not above --max-attack-rate {limit:.1%}, but its upper bound "
            "is; audit more slices or volumes to decide"
        )
    return what


def paired_comparisons(records: Sequence[dict]) -> list[dict]:
    """Every pair of models, for every FNAF attack, on the slices both were audited on.

    Returns:
        one dict per (attack, model a, model b): ``slices``, ``both``, ``a_only``, ``b_only``,
        ``neither`` and the exact McNemar ``p_value`` on the discordant slices.
    """
    hits: dict[str, dict[str, dict[tuple, bool]]] = {}
    models: list[str] = []
    for r in records:
        if r.get("kind", "fnaf") != "fnaf":
            continue
        if r["model"] not in models:
            models.append(r["model"])
        by_model = hits.setdefault(r["attack"], {}).setdefault(r["model"], {})
        by_model[(r["volume"], int(r["slice"]))] = bool(r["hit"])
    out = []
    for attack, by_model in hits.items():
        for a, b in combinations([m for m in models if m in by_model], 2):
            common = sorted(set(by_model[a]) & set(by_model[b]))
            pairs = [(by_model[a][k], by_model[b][k]) for k in common]
            a_only = sum(1 for x, y in pairs if x and not y)
            b_only = sum(1 for x, y in pairs if y and not x)
            out.append(
                {
                    "attack": attack,
                    "a": a,
                    "b": b,
                    "slices": len(pairs),
                    "both": sum(1 for x, y in pairs if x and y),
                    "a_only": a_only,
                    "b_only": b_only,
                    "neither": sum(1 for x, y in pairs if not x and not y),
                    "p_value": mcnemar(a_only, b_only),
                }
            )
    return out
