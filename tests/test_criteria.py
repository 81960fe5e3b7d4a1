"""FNAF version 2 (DESIGN §4, issue 12): the recovery quantities, the criteria, and the verdicts
they give on the same anatomy at two image sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mri_audit.audit.aggregates import reread, wilson
from mri_audit.data.datasets import SyntheticDataset, collate
from mri_audit.fnaf.attack import result_records
from mri_audit.fnaf.criteria import (
    REFERENCE_AREA,
    Erasure,
    Paper,
    Recovery,
    all_criteria,
    make_criterion,
)
from mri_audit.fnaf.engine import FnafEngine
from mri_audit.fnaf.features import insert, paint, prepare_context, random_walks
from mri_audit.fnaf.registry import load_attack
from mri_audit.mri.metrics import fnaf_region, region_loss
from mri_audit.mri.physics import center_crop, ifft2c, make_mask_func, rss, volume_seed
from tests.fnaf_helpers import Blur, Identity, TinyUnetish, context, estimator, smooth_slices

FNAF = ("fnaf-rs", "fnaf-fd", "fnaf-pgd")
SIZES = (160, 320)


def run(name, est, ctx, **kw):
    return load_attack(name)(est, **kw).attack(ctx)


class Median(torch.nn.Module):
    """An image-domain ``k x k`` median filter: removes every feature smaller than half its
    window, keeps edges and smooth anatomy."""

    def __init__(self, k: int = 5):
        super().__init__()
        self.k = k

    def forward(self, x):
        n, c, h, w = x.shape
        p = self.k // 2
        patches = F.unfold(F.pad(x, (p, p, p, p), mode="reflect"), self.k)
        return patches.view(n, c, self.k * self.k, h * w).median(2).values.view(n, c, h, w)


# ---------------------------------------------------------------------------------------------
# The same synthetic anatomy at 160x160 and 320x320 (as `mri-audit data synth --size`).


@pytest.fixture(scope="module")
def phantom():
    """``size -> SliceContext``: 4 slices from 2 volumes, 4x random masks seeded per volume."""
    cache = {}

    def get(size: int):
        if size not in cache:
            data = SyntheticDataset(split="val", volumes=2, slices=2, size=size)
            batch = collate([data[i] for i in range(len(data))])
            func = make_mask_func("random", 4)
            cache[size] = prepare_context(
                batch.kspace,
                target_shape=(size, size),
                volumes=batch.volumes,
                slices=batch.slices,
                mask_for=lambda v, n: func(n, seed=volume_seed(v)),
            )
        return cache[size]

    return get


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", FNAF)
def test_zero_filled_identity_is_never_hit_under_erasure(name, size, phantom):
    ctx = phantom(size)
    est = estimator(Identity(), ctx.target_shape, normalize="instance")
    res = run(name, est, ctx)
    assert res.criterion == "erasure"
    assert bool(res.found.all())
    assert float(res.hit.float().mean()) == 0.0
    # The identity passes the measured feature through: it is seen exactly as in the data.
    torch.testing.assert_close(res.r, res.r0, rtol=0, atol=1e-4)
    assert float(res.score.max()) < 1e-4
    assert bool((res.r0 > 0.1).all())  # the features are measured: the zero rate is not vacuous


def test_feature_removing_model_is_flagged_at_both_sizes(phantom):
    rates = {}
    for size in SIZES:
        ctx = phantom(size)
        res = run("fnaf-rs", estimator(Median(5), ctx.target_shape), ctx)
        assert bool(res.found.all())
        hits = int(res.hit.sum())
        rates[size] = wilson(hits, ctx.num_slices)
        assert rates[size]["value"] >= 0.9, (size, res.score.tolist(), res.r.tolist())
        assert float(res.r.max()) < 0.2  # the filter shows almost none of the feature
    low, high = rates[160], rates[320]
    tol = 1e-9  # wilson(n, n)["high"] can be 1 - 1e-16
    assert low["low"] - tol <= high["value"] <= low["high"] + tol
    assert high["low"] - tol <= low["value"] <= high["high"] + tol


# ---------------------------------------------------------------------------------------------
# r, r0, e, rho, L, D against an independent float64 numpy oracle.


def _fft2c(x):
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), (-2, -1))


def _ifft2c(k):
    k = np.fft.ifftshift(k, axes=(-2, -1))
    return np.fft.fftshift(np.fft.ifft2(k, norm="ortho"), axes=(-2, -1))


def _rss(x):
    return np.sqrt((np.abs(x) ** 2).sum(0))


def _crop(x, h, w):
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[..., top : top + h, left : left + w]


def _blur_model(image, k):
    """The adapter's instance normalisation (clamped at 6 std) around a k x k reflect-padded
    box blur (``Blur(k)`` of fnaf_helpers), in float64."""
    mean, std = image.mean(), max(image.std(ddof=1), 1e-11)
    normed = np.clip((image - mean) / std, -6, 6)
    p = k // 2
    padded = np.pad(normed, p, mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (k, k))
    return windows.mean((-2, -1)) * std + mean


def _region(support):
    grown = support.copy()
    grown[1:, :] |= support[:-1, :]
    grown[:-1, :] |= support[1:, :]
    grown[:, 1:] |= support[:, :-1]
    grown[:, :-1] |= support[:, 1:]
    return grown


def _oracle(ctx, si, d, k):
    """Every engine quantity of one candidate (slice ``si``, feature image ``d``), float64."""
    h, w = d.shape
    kspace = ctx.kspace[si].numpy().astype(np.complex128)
    mask = ctx.mask[si].numpy().astype(bool)  # (1, 1, W)
    image = _ifft2c(kspace)
    magnitude = _rss(image)
    coils = image.shape[0]
    sens = np.where(magnitude > 0, image / np.where(magnitude > 0, magnitude, 1), coils**-0.5)
    featured = image.copy()
    _crop(featured, h, w)[...] += d * _crop(sens, h, w)
    kspace_f = _fft2c(featured)
    target = _crop(magnitude, h, w)
    target_f = _crop(_rss(featured), h, w)
    zf = _crop(_rss(_ifft2c(kspace * mask)), h, w)
    zf_f = _crop(_rss(_ifft2c(kspace_f * mask)), h, w)
    m, m_f = _blur_model(zf, k), _blur_model(zf_f, k)
    energy = (d * d).sum()
    r = ((m_f - m) * d).sum() / energy
    r0 = ((zf_f - zf) * d).sum() / energy
    delta = np.abs(kspace_f - kspace) ** 2
    t_std, zf_std = target.std(ddof=1), zf.std(ddof=1)
    region = _region(d != 0)
    return {
        "r": r,
        "r0": r0,
        "e": r0 - r,
        "rho": (delta * mask).sum() / delta.sum(),
        "loss": (((m_f - target_f) / t_std) ** 2 * region).sum() / REFERENCE_AREA,
        "ip": (((zf_f - zf) / zf_std) ** 2).sum() / REFERENCE_AREA,
        "recon": m_f,
        "target": target_f,
        "t_std": t_std,
        "zf_delta": (zf_f - zf) / zf_std,
        "region": region,
    }


@pytest.fixture(scope="module")
def oracle_case():
    """Two-coil slices with a k-space grid larger than the target, a box-blur model, and six
    random-walk candidates per slice; the engine's scores and the oracle's, per candidate."""
    kspace = smooth_slices(3, h=40, w=36, coils=2, seed=7)
    ctx = context(kspace, crop=(32, 30))
    k = 5
    est = estimator(Blur(k), ctx.target_shape, normalize="instance")
    per_slice = 6
    si = torch.arange(ctx.num_slices).repeat_interleave(per_slice)
    cand = torch.arange(per_slice).repeat(ctx.num_slices)
    features = random_walks(ctx, si, cand, steps=(3, 10), seed=4)
    scores = FnafEngine(est, batch_size=5).evaluate(ctx, features)
    d, support = paint(features, ctx.target_shape)
    assert bool(((d != 0) == support).all())  # intensities are > 0 on the support
    oracles = [_oracle(ctx, int(s), d[n].double().numpy(), k) for n, s in enumerate(si.tolist())]
    return ctx, scores, oracles


@pytest.mark.parametrize("quantity", ["r", "r0", "e", "rho", "loss", "ip"])
def test_quantities_match_float64_numpy_oracle(quantity, oracle_case):
    _, scores, oracles = oracle_case
    got = getattr(scores, quantity).double().numpy()
    expect = np.array([o[quantity] for o in oracles])
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-6)
    if quantity in ("r0", "e"):
        assert np.ptp(expect) > 0.05  # a non-degenerate spread of values


def test_oracle_case_is_discriminating(oracle_case):
    """The blur erases a part of each measured feature: r < r0, and e = r0 - r exactly."""
    _, scores, _ = oracle_case
    assert bool((scores.r < scores.r0).all())
    torch.testing.assert_close(scores.e, scores.r0 - scores.r)


def test_paper_loss_is_v1_loss_times_area_ratio(oracle_case):
    """``L`` = the version-1 ``Σ_Ω e²/(H·W)`` × ``H·W/320²``; ``D`` likewise (v1: pixel mean)."""
    ctx, scores, oracles = oracle_case
    h, w = ctx.target_shape
    recon = torch.tensor(np.stack([o["recon"] / o["t_std"] for o in oracles]))
    target = torch.tensor(np.stack([o["target"] / o["t_std"] for o in oracles]))
    region = torch.tensor(np.stack([o["region"] for o in oracles]))
    zf_delta = torch.tensor(np.stack([o["zf_delta"] for o in oracles]))
    v1_loss = region_loss(recon, target, region)
    v1_ip = zf_delta.square().mean((-2, -1))
    ratio = h * w / REFERENCE_AREA
    torch.testing.assert_close(scores.loss.double(), v1_loss * ratio, rtol=1e-4, atol=1e-10)
    torch.testing.assert_close(scores.ip.double(), v1_ip * ratio, rtol=1e-4, atol=1e-10)
    assert ratio < 1 and bool((scores.loss > 0).all())


def test_paper_region_is_support_plus_4_ring(oracle_case):
    ctx, _, oracles = oracle_case
    # The oracle's numpy dilation and the library's region agree on every candidate.
    si = torch.arange(ctx.num_slices).repeat_interleave(6)
    cand = torch.arange(6).repeat(ctx.num_slices)
    _, support = paint(random_walks(ctx, si, cand, steps=(3, 10), seed=4), ctx.target_shape)
    expect = torch.tensor(np.stack([o["region"] for o in oracles]))
    assert torch.equal(fnaf_region(support), expect)


def test_paper_at_320_equals_the_v1_loss(phantom):
    """At 320x320 the size-free ``L`` and ``D`` are the MIDL paper's (area ratio 1)."""
    ctx = phantom(320)
    est = estimator(TinyUnetish(), ctx.target_shape)
    si = torch.arange(ctx.num_slices)
    features = random_walks(ctx, si, torch.zeros_like(si), seed=2)
    scores = FnafEngine(est).evaluate(ctx, features)
    d, support = paint(features, ctx.target_shape)
    kspace, target = insert(ctx, si, d)
    masked = kspace * ctx.mask
    recon = est.reconstruct(masked, ctx.mask).float()
    std = ctx.t_std[:, None, None]
    v1 = region_loss(recon / std, target / std, fnaf_region(support))
    torch.testing.assert_close(scores.loss, v1, rtol=1e-4, atol=1e-12)
    zf = center_crop(rss(ifft2c(masked)), ctx.target_shape)
    v1_ip = ((zf - ctx.zero_filled) / ctx.zf_std[:, None, None]).square().mean((-2, -1))
    torch.testing.assert_close(scores.ip, v1_ip, rtol=1e-4, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Attacks against each criterion.


@pytest.fixture(scope="module")
def slices():
    return smooth_slices(4, h=48, w=40, coils=1, seed=3)


@pytest.mark.parametrize("criterion", ["erasure", "recovery", "paper"])
def test_pgd_at_least_fnaf_rs_on_every_slice(criterion, slices):
    ctx = context(slices)
    est = estimator(TinyUnetish(), ctx.target_shape)
    rs = run("fnaf-rs", est, ctx, criterion=criterion)
    pgd = run("fnaf-pgd", est, ctx, criterion=criterion)
    assert bool(rs.found.any())
    assert bool((pgd.found >= rs.found).all())
    found = rs.found
    assert bool((pgd.score[found] >= rs.score[found]).all()), (pgd.score, rs.score)
    assert float(pgd.score[found].sum()) > float(rs.score[found].sum())


@pytest.mark.parametrize("name", ["fnaf-rs", "fnaf-fd"])
def test_selection_does_not_depend_on_the_margin(name, slices):
    ctx = context(slices)
    est = estimator(Blur(5), ctx.target_shape)
    low = run(name, est, ctx, margin=0.05)
    high = run(name, est, ctx, margin=0.3)
    assert torch.equal(low.found, high.found)
    assert torch.equal(low.features.rows, high.features.rows)
    assert torch.equal(low.features.cols, high.features.cols)
    torch.testing.assert_close(low.score, high.score, equal_nan=True)
    assert bool((low.hit == (low.score >= 0.05)).all())
    assert bool((high.hit == (high.score >= 0.3)).all())
    assert not torch.equal(low.hit, high.hit)  # the margin changes the verdict only


@pytest.mark.parametrize("other", ["recovery", "paper"])
def test_reread_equals_a_fresh_audit_under_that_criterion(other, slices):
    ctx = context(slices)
    est = estimator(Blur(5), ctx.target_shape)
    audited = result_records(ctx, run("fnaf-rs", est, ctx))
    assert all(r["criterion"] == "erasure" for r in audited)
    reread_records = reread(audited, make_criterion(other))
    fresh = result_records(ctx, run("fnaf-rs", est, ctx, criterion=other))
    fields = ("found", "hit", "control_hit", "accepted", "row", "col")
    numbers = ("score", "r", "r0", "e", "rho", "loss", "ip")
    for again, new in zip(reread_records, fresh, strict=True):
        assert again["criterion"] == new["criterion"] == other
        for key in fields:
            assert again[key] == new[key], key
        for key in numbers:
            if new[key] is None:
                assert again[key] is None, key
            else:
                assert again[key] == pytest.approx(new[key], rel=1e-6, abs=1e-12), key
    assert any(r["found"] for r in fresh)
    # Re-reading under the audit's own criterion gives the audit back.
    same = reread(audited, make_criterion("erasure"))
    for again, rec in zip(same, audited, strict=True):
        for key in ("found", "hit", "score", "r", "r0", "e", "feature"):
            assert again[key] == rec[key], key


# ---------------------------------------------------------------------------------------------
# The criterion objects.


def _q(**values):
    return {k: torch.tensor([float(v)], dtype=torch.float64) for k, v in values.items()}


def _erasure_q(r, r0):
    return _q(r=r, r0=r0, e=r0 - r, rho=0.3, loss=0.0, ip=0.0)


def test_erasure_by_hand():
    crit = Erasure(margin=0.1)
    q = _erasure_q(0.05, 0.3)
    assert float(crit.score(q)) == pytest.approx(0.25)
    assert bool(crit.admissible(q)) and bool(crit.hit(q))
    # Erasure beyond the evidence is capped at r0: the model is blamed for at most what the
    # data shows.
    q = _erasure_q(-0.2, 0.3)
    assert float(crit.score(q)) == pytest.approx(0.3)
    # An unmeasured feature (r0 below the margin) is never a hit, whatever the model shows.
    for r in (-5.0, -0.5, 0.0, 0.04):
        q = _erasure_q(r, 0.05)
        assert float(crit.score(q)) <= 0.05 and not bool(crit.hit(q))
    # The identity: e = 0.
    assert not bool(crit.hit(_erasure_q(0.4, 0.4)))
    # The boundary is inclusive.
    assert bool(Erasure(margin=0.25).hit(_erasure_q(0.5, 0.75)))
    assert not bool(Erasure(margin=0.3).hit(_erasure_q(0.05, 0.3)))
    # Missing values are inadmissible and never selected.
    q = _q(r=math.nan, r0=0.3, e=math.nan, rho=0.3, loss=0.0, ip=0.0)
    assert not bool(crit.admissible(q)) and not bool(crit.hit(q))
    assert float(crit.key(q)) == -math.inf
    assert not bool(crit.control_hit(torch.tensor([1.0]))) and not crit.has_control


def test_recovery_by_hand():
    crit = Recovery()
    assert crit.params() == {"min_recovery": 0.5, "min_evidence": 0.1}
    q = _erasure_q(0.3, 0.2)
    assert float(crit.score(q)) == pytest.approx(-0.3)
    assert bool(crit.admissible(q)) and bool(crit.hit(q))
    assert not bool(crit.hit(_erasure_q(0.5, 0.6)))  # r < r_min is strict
    assert not bool(crit.hit(_erasure_q(0.7, 0.6)))
    # Inadmissible when the data carries less than r0_min of the feature.
    q = _erasure_q(0.0, 0.05)
    assert not bool(crit.admissible(q)) and not bool(crit.hit(q))
    assert float(crit.key(q)) == -math.inf
    assert bool(crit.admissible(_erasure_q(0.0, 0.1)))
    assert bool(Recovery(min_recovery=0.8).hit(_erasure_q(0.7, 0.6)))


def test_paper_by_hand():
    crit = Paper()
    assert crit.params() == {"threshold": 1e-3, "ip_epsilon": 1e-4} and crit.has_control
    q = _q(r=1, r0=1, e=0, rho=1, loss=2e-3, ip=2e-4)
    assert float(crit.score(q)) == pytest.approx(2e-3)
    assert bool(crit.admissible(q)) and bool(crit.hit(q))
    q = _q(r=1, r0=1, e=0, rho=1, loss=2e-3, ip=5e-5)
    assert not bool(crit.admissible(q)) and not bool(crit.hit(q))
    assert not bool(crit.hit(_q(r=1, r0=1, e=0, rho=1, loss=5e-4, ip=2e-4)))
    assert bool(crit.hit(_q(r=1, r0=1, e=0, rho=1, loss=1e-3, ip=1e-4)))  # inclusive
    control = crit.control_hit(torch.tensor([2e-3, 5e-4, math.nan]))
    assert control.tolist() == [True, False, False]


def test_criteria_work_on_batches_of_any_shape():
    r0 = torch.tensor([[0.3, 0.3], [0.05, 0.5]])
    r = torch.tensor([[0.05, -0.2], [0.0, 0.45]])
    q = {"r": r, "r0": r0, "e": r0 - r}
    torch.testing.assert_close(
        Erasure().score(q),
        torch.tensor([[0.25, 0.3], [0.05, 0.05]], dtype=torch.float64),
        atol=1e-6,
        rtol=0,
    )
    assert Erasure().hit(q).tolist() == [[True, True], [False, False]]
    assert Recovery().hit(q).tolist() == [[True, True], [False, True]]


def test_make_criterion_and_its_errors():
    assert isinstance(make_criterion("erasure"), Erasure)
    assert make_criterion("erasure", margin=0.3, threshold=5.0).margin == 0.3
    assert make_criterion("erasure", margin=1).margin == 1.0
    assert make_criterion("paper", margin=0.3, threshold=5e-3).threshold == 5e-3
    assert make_criterion("recovery", min_recovery=0.4).min_recovery == 0.4
    assert set(all_criteria()) == {"erasure", "recovery", "paper"}
    with pytest.raises(ValueError, match="unknown criterion"):
        make_criterion("nope")
    for margin in (0, 0.0, 1.5, -0.1, math.nan):
        with pytest.raises(ValueError, match="margin"):
            make_criterion("erasure", margin=margin)
    with pytest.raises(ValueError, match="min_recovery"):
        make_criterion("recovery", min_recovery=0)
    with pytest.raises(ValueError, match="threshold"):
        make_criterion("paper", threshold=-1)
    est = estimator(Identity(), (48, 40))
    cls = load_attack("fnaf-rs")
    with pytest.raises(ValueError, match="criterion"):
        cls(est, criterion="nope")
    for margin in (0, 1.5):
        with pytest.raises(ValueError, match="margin"):
            cls(est, margin=margin)


# ---------------------------------------------------------------------------------------------
# fnaf-fd: the paper's location attack spends its whole budget.


@pytest.mark.parametrize("restarts", [1, 2, 3, 11])
def test_fd_spends_its_whole_budget(restarts, slices):
    ctx = context(slices)
    est = estimator(TinyUnetish(), ctx.target_shape)
    attack = load_attack("fnaf-fd")(est, candidates=11, restarts=restarts)
    assert sum(attack.budgets()) == 11
    res = attack.attack(ctx)
    assert res.evaluated.tolist() == [11] * ctx.num_slices


def test_fd_budget_below_restarts_is_rejected():
    est = estimator(Identity(), (48, 40))
    with pytest.raises(ValueError, match="budget"):
        load_attack("fnaf-fd")(est, candidates=2, restarts=3)


@pytest.mark.parametrize("restarts", [1, 3])
def test_fd_is_batch_size_invariant(restarts, slices):
    ctx = context(slices)
    est = estimator(TinyUnetish(), ctx.target_shape)
    one, many = (run("fnaf-fd", est, ctx, restarts=restarts, batch_size=b) for b in (1, 16))
    assert torch.equal(one.found, many.found)
    assert torch.equal(one.features.rows, many.features.rows)
    assert torch.equal(one.features.cols, many.features.cols)
    torch.testing.assert_close(one.features.values, many.features.values)
    torch.testing.assert_close(one.score, many.score, rtol=1e-5, atol=1e-7, equal_nan=True)
    assert torch.equal(one.hit, many.hit)
