"""Clustered intervals, McNemar and the gate against hand-worked cases."""

from __future__ import annotations

import math

import pytest

from mri_audit.audit.stats import clustered_rate, design_effect, mcnemar, wilson
from mri_audit.audit.verdict import gate, paired_comparisons


def test_design_effect_hand_worked():
    """3 volumes x 4 slices with 4, 0 and 2 hits.

    p̄ = 6/12 = 0.5; p_i = 1, 0, 0.5. MSB = 4·(0.25 + 0.25 + 0)/2 = 1. MSW = Σ y_i(1 − p_i)/(N − k)
    = (0 + 0 + 2·0.5)/9 = 1/9. m0 = (12 − 48/12)/2 = 4. ICC = (1 − 1/9)/(1 + 3/9) = 2/3.
    deff = 1 + (4 − 1)·2/3 = 3, so n_eff = 4: Wilson(2 of 4) = 0.5 ± 0.34997.
    """
    hits = [1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 1, 0]
    vols = ["a"] * 4 + ["b"] * 4 + ["c"] * 4
    deff, icc = design_effect([hits[:4], hits[4:8], hits[8:]])
    assert icc == pytest.approx(2 / 3) and deff == pytest.approx(3.0)
    r = clustered_rate(hits, vols)
    assert r["value"] == 0.5 and r["count"] == 6 and r["total"] == 12
    assert r["effective_n"] == pytest.approx(4.0) and r["clusters"] == 3
    z = 1.959964
    half = z * math.sqrt(0.25 / 4 + z * z / 64) / (1 + z * z / 4)
    assert r["low"] == pytest.approx(0.5 - half) and r["high"] == pytest.approx(0.5 + half)
    assert r["low"] == pytest.approx(0.15003, abs=1e-4)
    plain = wilson(6, 12)
    assert r["low"] < plain["low"] and r["high"] > plain["high"]


def test_independent_volumes_keep_the_slice_interval():
    # Volumes that differ no more than slices do: ICC clipped at 0, deff 1.
    hits = [1, 0, 1, 0, 1, 0, 1, 0]
    r = clustered_rate(hits, ["a", "a", "b", "b", "c", "c", "d", "d"])
    assert r["design_effect"] == 1.0 and r["icc"] == 0.0
    assert (r["low"], r["high"]) == pytest.approx((wilson(4, 8)["low"], wilson(4, 8)["high"]))


@pytest.mark.parametrize(
    "hits, vols",
    [
        ([1, 0, 1, 1], ["a"] * 4),  # one volume
        ([1, 0, 1, 1], ["a", "b", "c", "d"]),  # one slice per volume
        ([1, 1, 1, 1, 1, 1], ["a", "a", "b", "b", "c", "c"]),  # every volume agrees
        ([0, 0, 0, 0], ["a", "a", "b", "b"]),
    ],
)
def test_never_narrower_than_the_slices_wilson_and_never_zero_width(hits, vols):
    r = clustered_rate(hits, vols)
    w = wilson(sum(hits), len(hits))
    assert r["low"] <= w["low"] + 1e-12 and r["high"] >= w["high"] - 1e-12
    assert r["high"] - r["low"] > 0.1
    assert r["design_effect"] >= 1.0


def test_mcnemar_hand_worked():
    assert mcnemar(0, 0) == 1.0
    assert mcnemar(5, 0) == pytest.approx(2 / 32)  # 2·P(X <= 0), X ~ Bin(5, 1/2)
    assert mcnemar(3, 1) == pytest.approx(2 * 5 / 16)  # 2·(1 + 4)/16
    assert mcnemar(2, 2) == 1.0
    assert mcnemar(1, 3) == mcnemar(3, 1)
    with pytest.raises(ValueError):
        mcnemar(-1, 2)


def _attacks(**rates):
    return {
        "m": {name: {"kind": "fnaf", "attack_rate": wilson(k, n)} for name, (k, n) in rates.items()}
    }


def test_gate_outcomes():
    # 0 of 30: upper bound 11.4% <= 20%: PASS.
    v = gate(_attacks(a=(0, 30)), "m", 0.2)
    assert v["status"] == "pass" and v["passed"] is True
    # 0 of 3: the point 0 is within 20% but the upper bound (56%) is not: INCONCLUSIVE.
    v = gate(_attacks(a=(0, 3)), "m", 0.2)
    assert v["status"] == "inconclusive" and v["passed"] is False and "audit more" in v["reason"]
    # One attack above the limit: FAIL, decided by the highest point estimate.
    v = gate(_attacks(a=(0, 30), b=(12, 30)), "m", 0.2)
    assert v["status"] == "fail" and v["worst"]["attack"] == "b" and "exceeds" in v["reason"]
    # PASS needs every attack's upper bound within the limit.
    v = gate(_attacks(a=(0, 30), b=(3, 30)), "m", 0.2)
    assert v["status"] == "inconclusive" and v["worst"]["attack"] == "b"
    assert gate(_attacks(a=(0, 30)), "m", None)["status"] == "none"
    assert gate({"m": {"k": {"kind": "degradation"}}}, "m", 0.2)["status"] == "none"


def test_paired_comparisons_count_the_same_slices():
    def rec(model, vol, sl, hit, attack="fnaf-rs"):
        return {"model": model, "attack": attack, "volume": vol, "slice": sl, "hit": hit}

    records = [
        rec("A", "v", 0, True), rec("B", "v", 0, True),
        rec("A", "v", 1, True), rec("B", "v", 1, False),
        rec("A", "w", 0, True), rec("B", "w", 0, False),
        rec("A", "w", 1, False), rec("B", "w", 1, False),
        rec("A", "x", 0, True),  # B never audited this slice: not counted
    ]  # fmt: skip
    (p,) = paired_comparisons(records)
    assert (p["a"], p["b"], p["slices"]) == ("A", "B", 4)
    assert (p["both"], p["a_only"], p["b_only"], p["neither"]) == (1, 2, 0, 1)
    assert p["p_value"] == pytest.approx(mcnemar(2, 0)) == pytest.approx(0.5)
