"""Ties that survive float noise (issue 26, item 5): selection compares scores rounded to the
criterion's resolution and gives a tie to the lowest candidate number, so the same seed picks the
same feature on every machine; records keep the unrounded score."""

from __future__ import annotations

import math

import pytest
import torch

from mri_audit.fnaf.criteria import Erasure, Paper, Recovery, all_criteria
from mri_audit.fnaf.engine import FnafEngine, Scores, select_best
from mri_audit.fnaf.registry import load_attack
from tests.fnaf_helpers import Identity, TinyUnetish, context, estimator, smooth_slices

FNAF = ("fnaf-rs", "fnaf-fd", "fnaf-pgd")
# Quantities on the feature's scale (fractions of its contrast) get an absolute perturbation;
# the paper's small loss and IP distance a relative one (their own float noise).
ABSOLUTE = ("r", "r0", "e", "rho")
RELATIVE = ("loss", "ip", "region_nmse", "control")


@pytest.fixture(scope="module")
def slices():
    return smooth_slices(4, h=48, w=40, coils=1, seed=3)


def _erasure(e):
    e = torch.as_tensor(e, dtype=torch.float64)
    return {"r": 0.5 - e, "r0": torch.full_like(e, 0.5), "e": e}


def test_rounded_keys_tie_and_go_to_the_first():
    """By hand: 0.30001 and 0.30004 are the same at a resolution of 1e-4: the first wins."""
    crit = Erasure()
    assert crit.resolution == 1e-4
    rank = crit.rank_key(_erasure([0.30001, 0.30004, 0.2]))
    assert rank.tolist() == [3000.0, 3000.0, 2000.0]
    one = torch.zeros(3, dtype=torch.int64)
    assert int(select_best(rank, one, 1).index[0]) == 0
    # Unrounded, the second would win: the rounding, not the order, makes the tie.
    assert int(select_best(crit.key(_erasure([0.30001, 0.30004, 0.2])), one, 1).index[0]) == 1
    rank = crit.rank_key(_erasure([0.30004, 0.30001, 0.2]))
    assert int(select_best(rank, one, 1).index[0]) == 0
    # A whole resolution step apart is not a tie; rounding is half away from the lower.
    rank = crit.rank_key(_erasure([0.30004, 0.30006, -0.00004, -0.00006]))
    assert rank.tolist() == [3000.0, 3001.0, 0.0, -1.0]
    assert int(select_best(rank[:2], one[:2], 1).index[0]) == 1


def test_ties_go_to_the_lowest_position_of_each_slice():
    """Candidates of several slices interleaved: each slice's tie goes to its lowest position."""
    key = torch.tensor([1.0, 5.0, 5.0, -math.inf, 5.0, 2.0, 5.0, -math.inf], dtype=torch.float64)
    si = torch.tensor([1, 1, 0, 2, 0, 1, 1, 2])
    sel = select_best(key, si, 4)
    assert sel.index.tolist() == [2, 1, 0, 0]
    assert sel.found.tolist() == [True, True, False, False]
    assert sel.evaluated.tolist() == [2, 4, 2, 0] and sel.accepted.tolist() == [2, 4, 0, 0]


def test_resolutions_are_documented_and_fixed():
    """Each criterion's resolution is in its score's units and is not a hit threshold (selection
    never depends on the thresholds)."""
    assert Erasure().resolution == Recovery().resolution == 1e-4
    assert Paper().resolution == 1e-6 == Paper().threshold / 1000
    assert Paper(threshold=0.5).resolution == Paper().resolution
    assert Erasure(margin=0.5).resolution == Erasure().resolution
    for crit in all_criteria().values():
        text = format(crit.resolution, ".0e").replace("e-0", "e-")  # 1e-4
        assert text in type(crit).__doc__, crit.name


def test_rounding_never_changes_what_is_admissible():
    """Finite keys stay finite and inadmissible ones stay -inf, under every criterion."""
    g = torch.Generator().manual_seed(0)
    n = 400
    q = {
        "r": torch.randn(n, generator=g, dtype=torch.float64),
        "r0": torch.rand(n, generator=g, dtype=torch.float64) * 0.3,
        "rho": torch.rand(n, generator=g, dtype=torch.float64),
        "loss": torch.rand(n, generator=g, dtype=torch.float64) * 1e-3,
        "ip": torch.rand(n, generator=g, dtype=torch.float64) * 3e-4,
    }
    q["r"][::7] = math.nan
    q["loss"][::11] = math.inf
    q["ip"][::13] = math.nan
    q["r0"][:4] = torch.tensor([1e-300, -1e-300, 1e300, 5e-5], dtype=torch.float64)
    q["loss"][1:3], q["ip"][1:3] = 1e306, 1.0  # beyond float64 once divided by 1e-6
    q["e"] = q["r0"] - q["r"]
    for crit in all_criteria().values():
        key, rank = crit.key(q), crit.rank_key(q)
        assert torch.equal(torch.isfinite(rank), torch.isfinite(key)), crit.name
        assert torch.equal(torch.isfinite(rank), crit.admissible(q) & torch.isfinite(crit.score(q)))
        assert bool((rank[~torch.isfinite(key)] == -math.inf).all())
        ok = torch.isfinite(key)
        assert torch.equal(rank[ok], torch.round(rank[ok]))  # whole multiples
        usual = ok & (key.abs() < 1e6)  # (huge keys saturate, finite)
        assert bool(((rank[usual] * crit.resolution - key[usual]).abs() <= crit.resolution).all())
        # Ordering is kept: a higher rounded key is a higher key.
        order = torch.argsort(key[ok])
        assert bool((rank[ok][order].diff() >= 0).all())


class Perturbed:
    """Every quantity the engine returns moved by seeded random signs of 1e-7 (absolute on the
    feature's scale, relative on the paper's small loss): float noise of another machine."""

    def __init__(self, monkeypatch, seed: int = 0, size: float = 1e-7):
        self.g = torch.Generator().manual_seed(seed)
        self.size = size
        evaluate, with_grad = FnafEngine.evaluate, FnafEngine.scores_with_grad
        monkeypatch.setattr(FnafEngine, "evaluate", lambda e, *a, **k: self(evaluate(e, *a, **k)))
        monkeypatch.setattr(
            FnafEngine, "scores_with_grad", lambda e, *a, **k: self(with_grad(e, *a, **k))
        )

    def _noise(self, t: torch.Tensor) -> torch.Tensor:
        sign = torch.randint(0, 2, t.shape, generator=self.g).to(t) * 2 - 1
        return sign * self.size

    def __call__(self, s: Scores) -> Scores:
        fields = {n: getattr(s, n) + self._noise(getattr(s, n)) for n in ABSOLUTE}
        fields |= {n: getattr(s, n) * (1 + self._noise(getattr(s, n))) for n in RELATIVE}
        return s._replace(**fields)


def _attack(name, est, ctx, **kw):
    if name == "fnaf-pgd":
        kw.setdefault("steps", 3)
    return load_attack(name)(est, **kw).attack(ctx)


def _same_picks(a, b):
    for crit in a.picks:
        assert torch.equal(a.picks[crit].index, b.picks[crit].index), crit
        assert torch.equal(a.picks[crit].found, b.picks[crit].found), crit
    assert torch.equal(a.features.rows, b.features.rows)
    assert torch.equal(a.features.cols, b.features.cols)
    assert torch.equal(a.features.values, b.features.values)
    assert torch.equal(a.hit, b.hit)


@pytest.mark.parametrize("name", FNAF)
def test_zero_filled_ties_pick_candidate_zero_whatever_the_noise(name, slices, monkeypatch):
    """The zero-filled model ties every candidate at e = 0: erasure picks each slice's candidate
    0 (fnaf-pgd's refinements tie with their start and lose to it), with or without float
    noise."""
    ctx = context(slices)
    est = estimator(Identity(), ctx.target_shape)
    clean = _attack(name, est, ctx)
    b = ctx.num_slices
    zero = load_attack(name)(est).draw(ctx, torch.arange(b), torch.zeros(b, dtype=torch.int64))
    assert bool(clean.found.all()) and not bool(clean.hit.any())
    assert float(clean.e.abs().max()) < 1e-5  # the tie: e = 0 up to float rounding
    assert clean.picks["erasure"].index.tolist() == [11 * s for s in range(b)]
    assert torch.equal(clean.features.rows, zero.rows)
    assert torch.equal(clean.features.cols, zero.cols)
    assert torch.equal(clean.features.values, zero.values)
    for seed in (1, 2, 3):
        with monkeypatch.context() as patch:
            Perturbed(patch, seed=seed)
            noisy = _attack(name, est, ctx)
        _same_picks(noisy, clean)


@pytest.mark.parametrize("name", FNAF)
def test_real_model_picks_survive_float_noise(name, slices, monkeypatch):
    """A small nonlinear net: every criterion picks the same candidates with its scores
    perturbed by 1e-7 (three seeds), and records the same (unrounded) numbers to that noise."""
    ctx = context(slices)
    est = estimator(TinyUnetish(), ctx.target_shape)
    clean = _attack(name, est, ctx)
    assert bool(clean.found.all())
    for seed in (1, 2, 3):
        with monkeypatch.context() as patch:
            Perturbed(patch, seed=seed)
            noisy = _attack(name, est, ctx)
        _same_picks(noisy, clean)
        torch.testing.assert_close(noisy.score, clean.score, rtol=0, atol=3e-7)


@pytest.mark.parametrize("criterion", ("erasure", "recovery", "paper"))
def test_recorded_score_is_unrounded(criterion, slices):
    """The pick's score is the criterion's own score of the selected candidate, not a multiple
    of the resolution; the rounding only ranks."""
    ctx = context(slices)
    est = estimator(TinyUnetish(), ctx.target_shape)
    res = _attack("fnaf-rs", est, ctx, criterion=criterion)
    crit = all_criteria()[criterion]
    assert bool(res.found.all())
    torch.testing.assert_close(res.score, crit.score(res.scores).float(), rtol=0, atol=0)
    steps = res.score.double() / crit.resolution
    assert bool(((steps - steps.round()).abs() > 1e-6).any())
    # The recorded pick is the best by rounded score; ties aside it is the unrounded best.
    engine = FnafEngine(est)
    features, scores = load_attack("fnaf-rs")(est, criterion=criterion)._search(ctx, engine)
    rank = crit.rank_key(scores)
    for s in range(ctx.num_slices):
        mine = rank[features.slice_index == s]
        assert float(mine.max()) == float(crit.rank_key(res.scores)[s])
        first = int((mine == mine.max()).nonzero()[0])
        assert int(res.picks[criterion].index[s]) == 11 * s + first


def test_fd_returns_candidates_in_candidate_order(slices):
    """fnaf-fd's chains interleave their evaluations; the candidates come back in candidate
    number per slice (the tie order), each the draw of its number (then placed)."""
    ctx = context(slices)
    est = estimator(TinyUnetish(), ctx.target_shape)
    attack = load_attack("fnaf-fd")(est, restarts=3)
    features, *_ = attack._search(ctx, FnafEngine(est))
    b = ctx.num_slices
    assert features.slice_index.tolist() == [s for s in range(b) for _ in range(11)]
    si = torch.arange(b).repeat_interleave(11)
    drawn = attack.draw(ctx, si, torch.arange(11).repeat(b))
    torch.testing.assert_close(features.values, drawn.values, rtol=0, atol=0)
