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


# ---------------------------------------------------------------- fnaf-pgd and fnaf-fd


def _audit_with(attack: str, **options):
    return mri_audit.audit(
        **UNET,
        candidates=options.pop("candidates", 6),
        attacks=("fnaf-rs", attack),
        attack_options={attack: options},
        device="cpu",
        **{k: v for k, v in COMMON.items() if k != "attacks"},
    )


@pytest.fixture(scope="module")
def pgd():
    return _audit_with("fnaf-pgd", steps=4)


def _hits(result, attack: str) -> dict:
    return {(r["volume"], r["slice"]): r["hit"] for r in result.journal if r["attack"] == attack}


def test_pgd_curve_starts_at_its_random_start_and_ends_at_the_reported_rate(pgd):
    aggs = pgd.attacks["unet.py:UNet"]
    curve = aggs["fnaf-pgd"]["budget"]
    assert curve["unit"] == "steps" and curve["k"] == [0, 1, 2, 3, 4]
    # Step 0 is fnaf-rs's best of the same candidates; the last step the reported rate.
    assert curve["rate"][0]["value"] == aggs["fnaf-rs"]["attack_rate"]["value"]
    assert curve["rate"][-1]["value"] == aggs["fnaf-pgd"]["attack_rate"]["value"]
    for r in pgd.journal:
        if r["attack"] == "fnaf-pgd":
            assert r["budget_unit"] == "steps" and len(r["budget"]["erasure"]) == 5
            assert r["budget"]["erasure"][-1] == r["hit"]
    values = [x["value"] for x in curve["rate"]]
    assert values == sorted(values)  # the best iterate so far never gets worse


@pytest.mark.parametrize("steps", [1, 2])
def test_pgd_curve_equals_rerunning_with_fewer_steps(pgd, steps):
    rerun = _audit_with("fnaf-pgd", steps=steps)
    hits = _hits(rerun, "fnaf-pgd")
    for r in pgd.journal:
        if r["attack"] == "fnaf-pgd":
            assert bool(r["budget"]["erasure"][steps]) == hits[(r["volume"], r["slice"])]


def test_fd_curve_with_one_chain_equals_rerunning_with_k_evaluations():
    full = _audit_with("fnaf-fd", candidates=7)
    curve = full.attacks["unet.py:UNet"]["fnaf-fd"]["budget"]
    assert curve["unit"] == "evaluations" and curve["k"] == list(range(1, 8))
    for k in (2, 4):
        hits = _hits(_audit_with("fnaf-fd", candidates=k), "fnaf-fd")
        for r in full.journal:
            if r["attack"] == "fnaf-fd":
                assert bool(r["budget"]["erasure"][k - 1]) == hits[(r["volume"], r["slice"])]


def test_fd_chains_are_counted_in_the_order_they_were_evaluated():
    """Budgets 3, 2, 2 (7 evaluations, 3 chains): round 0 evaluates chains 0, 1, 2, round 1
    the same, round 2 chain 0 alone; by candidate number (chain 0: 0-2, chain 1: 3-4,
    chain 2: 5-6) the evaluation positions are 1, 4, 7, 2, 5, 3, 6."""
    from mri_audit.data.datasets import SyntheticDataset, collate
    from mri_audit.fnaf.engine import FnafEngine
    from mri_audit.fnaf.features import prepare_context
    from mri_audit.fnaf.registry import load_attack
    from mri_audit.models.estimator import Reconstructor
    from mri_audit.mri.physics import make_mask_func

    data = SyntheticDataset(volumes=1, slices=2, size=32)
    batch = collate([data[0], data[1]])
    func = make_mask_func("random", 4, None)
    ctx = prepare_context(
        batch.kspace,
        target_shape=tuple(batch.target.shape[-2:]),
        volumes=batch.volumes,
        slices=batch.slices,
        mask_for=lambda v, n: func(n, seed=0),
    )
    est = Reconstructor(torch.nn.Identity(), target_shape=ctx.target_shape, device="cpu")
    attack = load_attack("fnaf-fd")(est, candidates=7, restarts=3)
    with est.evaluation(parameters_require_grad=False), est.cropping(ctx.target_shape):
        features, scores, trace = attack._search(ctx, FnafEngine(est))
    assert trace.unit == "evaluations" and trace.top == 7
    assert trace.cost.tolist() == [1, 4, 7, 2, 5, 3, 6] * 2
    assert trace.slice_index.tolist() == features.slice_index.tolist()


def test_a_step_curve_still_rising_is_flagged():
    from mri_audit.audit.aggregates import _budget

    def row(volume: str, hits: list[int]) -> dict:
        return {"volume": volume, "budget": {"erasure": hits}, "budget_unit": "steps"}

    # 8 steps: 1 of 4 slices hit at step 4, 3 of 4 at step 8.
    rows = [row("a", [0] * 9), row("b", [0] * 4 + [1] * 5), row("c", [0] * 6 + [1] * 3)]
    rows.append(row("d", [0] * 8 + [1]))
    curve = _budget(rows, "erasure")
    assert curve["k"] == list(range(9)) and curve["unit"] == "steps"
    assert curve["last_doubling"] == {"from": 4, "to": 8, "rise": 0.5}
    assert curve["converged"] is False
