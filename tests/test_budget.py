"""Budget convergence (issue 27, item 1): the attack rate at every smaller budget, from the
work the attack already did, and a warning when the last doubling still raised it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mri_audit
from mri_audit.fnaf.budget import evaluation_order

EX = Path(__file__).resolve().parent.parent / "examples"
UNET = {"model": f"{EX}/unet.py:UNet", "weights": f"{EX}/weights/unet_4x.pt"}
# margin 0.25: the U-Net's erasure is near it, so more candidates find more hits.
COMMON = {"attacks": ("fnaf-rs",), "max_volumes": 2, "max_slices": 3, "margin": 0.25}


def _audit(candidates: int):
    return mri_audit.audit(**UNET, candidates=candidates, device="cpu", **COMMON)


@pytest.fixture(scope="module")
def full():
    return _audit(8)


def test_evaluation_order_counts_within_each_slice():
    si = torch.tensor([0, 0, 1, 0, 2, 1])
    assert evaluation_order(si).tolist() == [0, 1, 0, 2, 0, 1]


@pytest.mark.parametrize("k", [1, 4, 6])
def test_the_curve_equals_rerunning_with_k_candidates(full, k):
    curve = full.attacks["unet.py:UNet"]["fnaf-rs"]["budget"]
    assert curve["k"] == list(range(1, 9)) and curve["unit"] == "candidates"
    rerun = _audit(k)
    rate = rerun.attacks["unet.py:UNet"]["fnaf-rs"]["attack_rate"]
    assert curve["rate"][k - 1] == {key: rate[key] for key in ("value", "low", "high")}
    hits = {(r["volume"], r["slice"]): r["hit"] for r in rerun.journal}
    for r in full.journal:
        assert bool(r["budget"]["erasure"][k - 1]) == hits[(r["volume"], r["slice"])]


def test_the_full_budget_is_the_reported_rate(full):
    agg = full.attacks["unet.py:UNet"]["fnaf-rs"]
    assert agg["budget"]["rate"][-1]["value"] == agg["attack_rate"]["value"]


def test_a_rate_still_rising_is_said_to_be_a_lower_bound(full):
    curve = full.attacks["unet.py:UNet"]["fnaf-rs"]["budget"]
    step = curve["last_doubling"]
    assert (step["from"], step["to"]) == (4, 8)
    assert step["rise"] > 0.05 and curve["converged"] is False
    assert any(
        w.startswith("fnaf-rs on unet.py:UNet: the attack rate still rose by 17 points")
        and "(4 to 8 candidates): it is a lower bound" in w
        for w in full.warnings
    )


def test_a_converged_rate_gives_no_warning():
    result = mri_audit.audit(
        **UNET, candidates=4, attacks=("fnaf-rs",), max_volumes=1, max_slices=2, device="cpu"
    )
    curve = result.attacks["unet.py:UNet"]["fnaf-rs"]["budget"]
    assert curve["converged"] is True
    assert not any("lower bound" in w for w in result.warnings)
