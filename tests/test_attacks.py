"""The FNAF attacks: invariants, IP, strength ordering, ART's contract, the registry."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from mri_audit.fnaf.attack import FnafAttack, result_records
from mri_audit.fnaf.engine import FnafEngine
from mri_audit.fnaf.features import decode_features, paint
from mri_audit.fnaf.registry import available_attacks, load_attack
from mri_audit.models.estimator import Reconstructor
from tests.fnaf_helpers import Blur, Identity, TinyUnetish, context, estimator, smooth_slices

FNAF = ("fnaf-rs", "fnaf-fd", "fnaf-pgd")


@pytest.fixture(scope="module")
def slices():
    return smooth_slices(4, h=48, w=40, coils=1, seed=3)


def run(name, est, ctx, **kw):
    return load_attack(name)(est, **kw).attack(ctx)


@pytest.mark.parametrize("name", FNAF)
def test_batch_size_and_seed_invariance(name, slices):
    ctx = context(slices)
    est = estimator(TinyUnetish(), ctx.target_shape)
    results = [run(name, est, ctx, batch_size=b, seed=0) for b in (1, 3, 16)]
    ref = results[0]
    for res in results[1:] + [run(name, est, ctx, batch_size=16, seed=0)]:
        assert torch.equal(res.features.rows, ref.features.rows)
        assert torch.equal(res.features.cols, ref.features.cols)
        torch.testing.assert_close(res.features.values, ref.features.values)
        torch.testing.assert_close(res.loss, ref.loss, rtol=1e-4, atol=1e-9, equal_nan=True)
        torch.testing.assert_close(res.score, ref.score, rtol=1e-4, atol=1e-6, equal_nan=True)
        assert torch.equal(res.hit, ref.hit)
        assert torch.equal(res.evaluated, ref.evaluated)
    other = run(name, est, ctx, batch_size=16, seed=1)
    assert not torch.equal(other.features.rows, ref.features.rows)


def test_slice_results_do_not_depend_on_batch_composition(slices):
    """A slice audited alone gives the same feature as inside a batch of slices."""
    ctx = context(slices)
    est = estimator(TinyUnetish(), ctx.target_shape)
    full = run("fnaf-rs", est, ctx)
    alone = run("fnaf-rs", est, context(slices[2:3], names=["vol1.h5"]))
    assert torch.equal(full.features.rows[2], alone.features.rows[0])


@pytest.mark.parametrize("name", FNAF)
def test_returned_features_satisfy_ip(name, slices):
    ctx = context(slices)
    est = estimator(TinyUnetish(), ctx.target_shape)
    eps = 1e-5
    res = run(name, est, ctx, criterion="paper", ip_epsilon=eps)
    assert bool(res.found.any())
    again = FnafEngine(est).evaluate(ctx, res.features.take(res.found))
    assert bool((again.ip >= eps).all())
    torch.testing.assert_close(again.loss, res.loss[res.found], rtol=1e-4, atol=1e-9)
    # recovery's IP rule: the data carries at least 0.1 of the feature.
    res = run(name, est, ctx, criterion="recovery")
    again = FnafEngine(est).evaluate(ctx, res.features.take(res.found))
    assert bool((again.r0 >= 0.1).all())


def test_ip_rejects_everything_with_huge_epsilon(slices):
    ctx = context(slices)
    est = estimator(TinyUnetish(), ctx.target_shape)
    res = run("fnaf-rs", est, ctx, criterion="paper", ip_epsilon=1e9)
    assert not bool(res.found.any()) and not bool(res.hit.any())
    assert int(res.accepted.sum()) == 0 and int(res.evaluated.sum()) == 11 * 4
    # Another criterion's pick among the same candidates is unaffected.
    assert bool(res.picks["erasure"].found.all())


def test_pgd_at_least_as_strong_as_its_start(slices):
    ctx = context(slices)
    est = estimator(TinyUnetish(), ctx.target_shape)
    for criterion in ("erasure", "paper"):
        rs = run("fnaf-rs", est, ctx, criterion=criterion)
        pgd = run("fnaf-pgd", est, ctx, criterion=criterion)
        grow = run("fnaf-pgd", est, ctx, criterion=criterion, grow=3)
        assert bool((pgd.score >= rs.score - 1e-12).all())
        assert bool((grow.score >= rs.score - 1e-12).all())
        assert float(pgd.score.mean()) > float(rs.score.mean())


def test_pgd_never_below_rs_in_reduced_precision(slices):
    ctx = context(slices)
    est = estimator(TinyUnetish(), ctx.target_shape)
    for criterion in ("erasure", "recovery", "paper"):
        engine = FnafEngine(est, batch_size=8, precision="bf16")
        rs = load_attack("fnaf-rs")(est, criterion=criterion).attack(ctx, engine)
        pgd = load_attack("fnaf-pgd")(est, criterion=criterion).attack(ctx, engine)
        ok = rs.found
        assert bool((pgd.score[ok] >= rs.score[ok] - 1e-9).all()), criterion


def test_control_only_under_paper(slices):
    ctx = context(slices)
    est = estimator(Blur(9), ctx.target_shape)
    for criterion in ("erasure", "recovery"):
        assert not bool(run("fnaf-rs", est, ctx, criterion=criterion).control_hit.any())


def test_fd_uses_the_same_budget_as_rs(slices):
    ctx = context(slices)
    est = estimator(TinyUnetish(), ctx.target_shape)
    for restarts in (1, 2, 3, 4, 11):
        fd = run("fnaf-fd", est, ctx, restarts=restarts)
        assert fd.evaluated.tolist() == [11] * 4, restarts
    with pytest.raises(ValueError, match="budget"):
        load_attack("fnaf-fd")(est, restarts=12)


@pytest.mark.parametrize("name", FNAF)
def test_identity_fully_sampled_has_zero_rates(name, slices):
    ctx = context(slices, accel=1)
    assert bool(ctx.mask.all())
    est = estimator(Identity(), ctx.target_shape, normalize="none")
    for criterion in ("erasure", "recovery", "paper"):
        res = run(name, est, ctx, criterion=criterion)
        assert bool(res.found.all())
        assert not bool(res.hit.any()) and not bool(res.control_hit.any())
        assert float(res.loss.max()) < 1e-8
        torch.testing.assert_close(res.r, torch.ones(4), atol=1e-4, rtol=0)
        torch.testing.assert_close(res.r0, torch.ones(4), atol=1e-4, rtol=0)


def test_heavy_blur_has_high_attack_rate(slices):
    ctx = context(smooth_slices(6, h=48, w=48, seed=5))
    res = run("fnaf-rs", estimator(Blur(9), ctx.target_shape), ctx)
    assert res.criterion == "erasure"
    assert float(res.hit.float().mean()) >= 0.8
    assert bool((res.r < 0.2).all())


def test_control_is_the_same_search_with_no_feature(slices):
    """The control: the clean reconstruction's L over each candidate's region, best per slice."""
    from attacks.random_search import candidate_grid
    from mri_audit.fnaf.features import random_walks
    from mri_audit.mri.metrics import fnaf_region, region_loss

    ctx = context(slices)
    est = estimator(TinyUnetish(), ctx.target_shape)
    res = run("fnaf-rs", est, ctx, criterion="paper")
    si, cand = candidate_grid(ctx, 11)
    _, support = paint(random_walks(ctx, si, cand, steps=10, seed=0), ctx.target_shape)
    clean = FnafEngine(est).clean_reconstruction(ctx)[si]
    std = ctx.t_std[si, None, None]
    h, w = ctx.target_shape
    each = region_loss(clean / std, ctx.target[si] / std, fnaf_region(support)) * h * w / 320**2
    expect = each.view(4, 11).amax(1)
    torch.testing.assert_close(res.control, expect, rtol=1e-4, atol=1e-12)
    assert torch.equal(res.control_hit, expect >= 1e-3)


def test_replayed_feature_gives_same_loss(slices):
    ctx = context(slices)
    est = estimator(TinyUnetish(), ctx.target_shape)
    res = run("fnaf-pgd", est, ctx)
    records = result_records(ctx, res)
    f = decode_features([r["feature"] for r in records], list(range(len(records))))
    again = FnafEngine(est).evaluate(ctx, f)
    torch.testing.assert_close(again.loss, res.loss, rtol=1e-5, atol=1e-10)
    torch.testing.assert_close(again.e, res.e, rtol=1e-4, atol=1e-6)
    assert [r["r"] for r in records] == pytest.approx(res.r.tolist(), rel=1e-6)


def test_art_generate_numpy_in_numpy_out(slices):
    est = estimator(TinyUnetish(), (48, 40))
    x = torch.view_as_real(slices).numpy()
    attack = load_attack("fnaf-rs")(est)
    adv = attack.generate(x)
    assert isinstance(adv, np.ndarray) and adv.shape == x.shape and adv.dtype == np.float32
    assert not np.allclose(adv, x)
    assert attack.last_result.found.all()
    # Torch in, torch out, on the same device.
    adv_t = attack.generate(torch.as_tensor(x))
    assert isinstance(adv_t, torch.Tensor)
    np.testing.assert_allclose(adv_t.numpy(), adv, atol=1e-6)


def test_attack_params_checked_and_settable(slices):
    est = estimator(TinyUnetish(), (48, 40))
    cls = load_attack("fnaf-rs")
    with pytest.raises(ValueError, match="candidates"):
        cls(est, candidates=0)
    with pytest.raises(ValueError, match="threshold"):
        cls(est, threshold=-1)
    with pytest.raises(ValueError, match="margin"):
        cls(est, margin=0)
    with pytest.raises(ValueError, match="criterion"):
        cls(est, criterion="loudest")
    attack = cls(est)
    attack.set_params(candidates=3)
    assert attack.candidates == 3
    with pytest.raises(ValueError):
        attack.set_params(not_a_param=1)


def test_model_mode_and_requires_grad_restored_even_on_error(slices):
    model = TinyUnetish()
    model.train()
    model.b.weight.requires_grad_(False)
    est = estimator(model, (48, 40))
    ctx = context(slices)

    class Broken(FnafAttack):
        def _search(self, ctx, engine):
            assert not model.training
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        Broken(est).attack(ctx)
    assert model.training
    assert model.a.weight.requires_grad and not model.b.weight.requires_grad
    run("fnaf-pgd", est, ctx)
    assert model.training
    assert model.a.weight.requires_grad and not model.b.weight.requires_grad


def test_registry_lists_builtin_attacks_and_rejects_unknown():
    names = set(available_attacks())
    assert {"fnaf-rs", "fnaf-fd", "fnaf-pgd", "kspace-pgd"} <= names
    from mri_audit.errors import UsageError

    with pytest.raises(UsageError, match="fnaf-rs"):
        load_attack("fnaf-nope")


def test_kspace_pgd_degrades_reconstruction(slices):
    ctx = context(slices)
    est = estimator(TinyUnetish(), ctx.target_shape)
    cls = load_attack("kspace-pgd")
    res = cls(est, eps=0.05, max_iter=5).attack(ctx)
    assert bool((res.values["nmse_adv"] > res.values["nmse_clean"]).all())
    assert bool((res.values["perturbation"] <= 0.05 + 1e-4).all())
    # A degradation attack takes only its own parameters: no FNAF criterion or threshold.
    assert "criterion" not in cls.attack_params and "threshold" not in cls.attack_params
    with pytest.raises(TypeError):
        cls(est, criterion="erasure")


def test_attack_is_final():
    with pytest.raises(TypeError, match="final"):

        class Sneaky(FnafAttack):
            def attack(self, ctx, engine=None):
                return None


def test_art_pgd_runs_on_reconstructor_and_changes_output(slices):
    from art.attacks.evasion import ProjectedGradientDescent

    est = Reconstructor(TinyUnetish(), target_shape=(48, 40))
    mask = np.zeros(40, dtype=bool)
    mask[::3] = True
    mask[18:22] = True
    x = (torch.view_as_real(slices * torch.as_tensor(mask))).numpy()
    y = np.abs(np.fft.ifft2(slices.numpy()))[:, 0].astype(np.float32)
    before = est.predict(x)
    eps = 0.1 * np.linalg.norm(x.reshape(len(x), -1), axis=1).reshape(-1, 1, 1, 1, 1)
    pgd = ProjectedGradientDescent(
        est,
        norm=2,
        eps=eps,
        eps_step=eps / 4,
        max_iter=4,
        num_random_init=0,
        targeted=False,
        verbose=False,
    )
    lines = np.broadcast_to(mask[None, None, None, :, None], x.shape).astype(np.float32)
    adv = pgd.generate(x, y=y, mask=lines)
    assert np.abs(est.predict(adv) - before).max() > 1e-4
    assert np.abs(adv - x)[lines == 0].max() == 0


def test_library_never_imports_attacks_package():
    root = Path(__file__).resolve().parents[1] / "mri_audit"
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "attacks" for a in node.names), path
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[0] != "attacks", path


def test_out_of_memory_halves_the_batch_then_fails_clearly(slices, monkeypatch):
    from mri_audit.errors import DeviceError

    ctx = context(slices)
    est = estimator(TinyUnetish(), ctx.target_shape)
    reference = run("fnaf-rs", est, ctx, batch_size=16)
    real = est.reconstruct

    def limited(kspace, mask, **kw):
        if kspace.shape[0] > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(kspace, mask, **kw)

    monkeypatch.setattr(est, "reconstruct", limited)
    engine = FnafEngine(est, batch_size=16)
    res = load_attack("fnaf-rs")(est, batch_size=16).attack(ctx, engine)
    assert engine.batch_size == 2
    assert torch.equal(res.features.rows, reference.features.rows)
    torch.testing.assert_close(res.loss, reference.loss, rtol=1e-4, atol=1e-9)

    def never(kspace, mask, **kw):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(est, "reconstruct", never)
    with pytest.raises(DeviceError, match="even with one candidate"):
        load_attack("fnaf-rs")(est).attack(ctx, FnafEngine(est, batch_size=4))


@pytest.mark.parametrize("name", ["fnaf-rs", "fnaf-fd"])
def test_reduced_precision_search_reports_fp32_scores(name, slices):
    ctx = context(slices)
    est = estimator(TinyUnetish(), ctx.target_shape)
    engine = FnafEngine(est, batch_size=8, precision="bf16")
    res = load_attack(name)(est, batch_size=8).attack(ctx, engine)
    assert bool(res.found.all())
    exact = FnafEngine(est, batch_size=8).evaluate(ctx, res.features)
    torch.testing.assert_close(res.loss, exact.loss, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(res.r, exact.r, rtol=1e-6, atol=1e-9)
    assert bool((res.evaluated == 11).all())
    # Counts come from the whole search, not from the few candidates rescored in fp32.
    fp32 = load_attack(name)(est, batch_size=8, criterion="paper").attack(ctx)
    bf16 = load_attack(name)(est, batch_size=8, criterion="paper").attack(
        ctx, FnafEngine(est, batch_size=8, precision="bf16")
    )
    assert torch.equal(bf16.accepted, fp32.accepted)  # D needs no model: same admissible set
    assert bool((bf16.picks["erasure"].accepted == 11).all())
    with pytest.raises(ValueError, match="precision"):
        FnafEngine(est, precision="fp8")
