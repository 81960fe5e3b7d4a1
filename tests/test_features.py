"""Feature generation, insertion, regions, IP and replay against independent references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mri_audit.fnaf.engine import FnafEngine
from mri_audit.fnaf.features import (
    decode_features,
    encode_features,
    insert,
    make_window,
    paint,
    random_walks,
)
from mri_audit.mri.metrics import fnaf_region
from tests.fnaf_helpers import Identity, context, estimator, smooth_slices


def _walks(ctx, k=20, steps=10, seed=0):
    si = torch.arange(ctx.num_slices).repeat_interleave(k)
    cand = torch.arange(k).repeat(ctx.num_slices)
    return random_walks(ctx, si, cand, steps=steps, seed=seed)


def test_window_default_is_central_0375():
    assert make_window((320, 320)) == (100, 100, 120, 120)
    assert make_window((320, 320), (10, 20, 30, 40)) == (10, 20, 30, 40)
    with pytest.raises(ValueError):
        make_window((32, 32), (0, 0, 40, 10))


def test_features_stay_in_window_and_intensity_range():
    ctx = context(smooth_slices(3))
    f = _walks(ctx, k=50, steps=30)
    win = ctx.window
    assert bool((f.rows >= win.top).all() and (f.rows < win.top + win.height).all())
    assert bool((f.cols >= win.left).all() and (f.cols < win.left + win.width).all())
    lo, hi = ctx.t_min[f.slice_index, None], ctx.t_max[f.slice_index, None]
    assert bool(((f.values >= lo) & (f.values <= hi)).all())
    # Consecutive pixels of a walk are 4-neighbours or equal (clipped at the border).
    step = f.rows.diff(dim=1).abs() + f.cols.diff(dim=1).abs()
    assert bool((step <= 1).all())


def test_walk_depends_only_on_key_not_on_batch():
    ctx = context(smooth_slices(3))
    full = _walks(ctx, k=8)
    # The same (slice, candidate) drawn alone gives the same walk.
    one = random_walks(ctx, torch.tensor([2]), torch.tensor([5]), steps=10, seed=0)
    idx = 2 * 8 + 5
    assert torch.equal(full.rows[idx], one.rows[0])
    assert torch.equal(full.values[idx], one.values[0])
    other = random_walks(ctx, torch.tensor([2]), torch.tensor([5]), steps=10, seed=1)
    assert not torch.equal(other.rows[0], one.rows[0])


def test_paint_last_write_wins_and_support():
    ctx = context(smooth_slices(1))
    from mri_audit.fnaf.features import FeatureBatch

    f = FeatureBatch(
        rows=torch.tensor([[5, 5, 6, 5]]),
        cols=torch.tensor([[5, 6, 6, 5]]),
        values=torch.tensor([[1.0, 2.0, 3.0, 4.0]]),
        valid=torch.tensor([[True, True, True, True]]),
        slice_index=torch.tensor([0]),
    )
    d, support = paint(f, ctx.target_shape)
    assert d[0, 5, 5] == 4.0 and d[0, 5, 6] == 2.0 and d[0, 6, 6] == 3.0
    assert int(support.sum()) == 3


def _paint_quadratic(features, shape):
    """The former O(n²) painter (the oracle of the O(n) one): pairwise "a later write wins"."""
    h, w = int(shape[0]), int(shape[1])
    n = features.count
    lin = features.rows * w + features.cols
    valid = features.valid
    same = lin[:, :, None] == lin[:, None, :]
    later = torch.ones(lin.shape[1], lin.shape[1], dtype=torch.bool).triu(1)
    overwritten = (same & later & valid[:, None, :]).any(-1)
    keep = valid & ~overwritten
    values = torch.where(keep, features.values, torch.zeros_like(features.values))
    d = features.values.new_zeros(n, h * w).scatter_add(1, lin, values)
    support = torch.zeros(n, h * w, dtype=torch.int32).scatter_add(1, lin, valid.to(torch.int32))
    return d.view(n, h, w), (support > 0).view(n, h, w)


@pytest.mark.parametrize("steps", [1, 10, (5, 60)])
def test_paint_linear_equals_the_quadratic_oracle(steps):
    ctx = context(smooth_slices(3), window=0.2)  # a small window: walks revisit pixels often
    f = _walks(ctx, k=40, steps=steps, seed=7)
    d, support = paint(f, ctx.target_shape)
    d_ref, support_ref = _paint_quadratic(f, ctx.target_shape)
    assert torch.equal(d, d_ref) and torch.equal(support, support_ref)
    # Gradients with respect to the intensities flow to the kept writes only, as before.
    values = f.values.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(paint(f._replace(values=values), ctx.target_shape)[0].sum(), values)
    values_ref = f.values.clone().requires_grad_(True)
    d_ref = _paint_quadratic(f._replace(values=values_ref), ctx.target_shape)[0]
    (g_ref,) = torch.autograd.grad(d_ref.sum(), values_ref)
    assert torch.equal(g, g_ref)


def test_encode_keeps_the_valid_pixels_wherever_they_are():
    from mri_audit.fnaf.features import FeatureBatch

    f = FeatureBatch(
        rows=torch.tensor([[5, 9, 6, 7]]),
        cols=torch.tensor([[5, 9, 6, 7]]),
        values=torch.tensor([[1.0, 0.0, 3.0, 4.0]]),
        valid=torch.tensor([[True, False, True, True]]),
        slice_index=torch.tensor([0]),
    )
    assert encode_features(f) == [{"rows": [5, 6, 7], "cols": [5, 6, 7], "values": [1.0, 3.0, 4.0]}]


def test_region_is_support_plus_ring_per_sample():
    ctx = context(smooth_slices(2))
    f = _walks(ctx, k=4)
    d, support = paint(f, ctx.target_shape)
    region = fnaf_region(support)
    for n in range(f.count):
        s = support[n].numpy()
        ring = np.zeros_like(s)
        ring[1:] |= s[:-1]
        ring[:-1] |= s[1:]
        ring[:, 1:] |= s[:, :-1]
        ring[:, :-1] |= s[:, 1:]
        assert np.array_equal(region[n].numpy(), s | ring)
    # Supports never leak into other samples: each region is computed from its own support.
    assert not torch.equal(region[0], region[1]) or torch.equal(support[0], support[1])


def test_phase_insertion_adds_d_to_magnitude_multicoil():
    ctx = context(smooth_slices(2, coils=4))
    f = _walks(ctx, k=1)
    d, _ = paint(f, ctx.target_shape)
    kspace, target = insert(ctx, f.slice_index, d)
    torch.testing.assert_close(target, ctx.target[f.slice_index] + d, atol=1e-5, rtol=1e-5)
    # The k-space holds the featured image: its RSS equals the new target.
    img = np.fft.fftshift(
        np.fft.ifft2(np.fft.ifftshift(kspace.numpy(), axes=(-2, -1)), norm="ortho"), axes=(-2, -1)
    )
    rss = np.sqrt((np.abs(img) ** 2).sum(1))
    np.testing.assert_allclose(rss, target.numpy(), atol=1e-5)


def test_magnitude_mode_discards_phase():
    ks = smooth_slices(1, h=40, w=40)
    ctx = context(ks, crop=(32, 32), insert_mode="magnitude")
    assert ctx.kspace.shape[-2:] == (32, 32)
    torch.testing.assert_close(ctx.image.real[:, 0], ctx.target, atol=1e-5, rtol=1e-5)


def _zf_numpy(kspace, mask, crop):
    k = kspace.astype(np.complex128) * mask
    img = np.fft.fftshift(
        np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1)
    )
    mag = np.sqrt((np.abs(img) ** 2).sum(-3))
    h, w = crop
    top, left = (mag.shape[-2] - h) // 2, (mag.shape[-1] - w) // 2
    return mag[..., top : top + h, left : left + w]


def test_scores_match_float64_oracle():
    """L, region NMSE, D, rho, r, r0 and e of the identity model against a numpy float64
    reference (L and D over the fixed 320x320 reference area)."""
    ks = smooth_slices(2, h=44, w=40, coils=2)
    ctx = context(ks, crop=(36, 36))
    est = estimator(Identity(), ctx.target_shape, normalize="none")
    engine = FnafEngine(est, batch_size=5)
    f = _walks(ctx, k=3)
    scores = engine.evaluate(ctx, f)
    d, support = paint(f, ctx.target_shape)
    region = fnaf_region(support).numpy()
    kspace, target = insert(ctx, f.slice_index, d)
    si = f.slice_index.numpy()
    mask = ctx.mask[f.slice_index].numpy()
    zf_feat = _zf_numpy(kspace.numpy(), mask, (36, 36))
    zf_clean = _zf_numpy(ctx.kspace.numpy()[si], mask, (36, 36))
    t = ctx.target.numpy().astype(np.float64)[si]
    tf = t + d.numpy()
    mean = t.reshape(len(si), -1).mean(1)[:, None, None]
    std = t.reshape(len(si), -1).std(1, ddof=1)[:, None, None]
    area = 320 * 320
    loss = (((zf_feat - tf) / std) ** 2 * region).sum((1, 2)) / area
    rnmse = (((zf_feat - tf) / std) ** 2 * region).sum((1, 2)) / (
        (((tf - mean) / std) ** 2) * region
    ).sum((1, 2))
    zstd = zf_clean.reshape(len(si), -1).std(1, ddof=1)[:, None, None]
    ip = (((zf_feat - zf_clean) / zstd) ** 2).sum((1, 2)) / area
    fd = kspace.numpy().astype(np.complex128) - ks.numpy()[si]
    rho = (np.abs(fd * mask) ** 2).sum((1, 2, 3)) / (np.abs(fd) ** 2).sum((1, 2, 3))
    np.testing.assert_allclose(scores.loss.numpy(), loss, rtol=2e-3, atol=1e-9)
    np.testing.assert_allclose(scores.region_nmse.numpy(), rnmse, rtol=2e-3)
    np.testing.assert_allclose(scores.ip.numpy(), ip, rtol=2e-3)
    np.testing.assert_allclose(scores.rho.numpy(), rho, rtol=2e-3)
    # Control: the clean reconstruction on the same region, no feature.
    control = (((zf_clean - t) / std) ** 2 * region).sum((1, 2)) / area
    np.testing.assert_allclose(scores.control.numpy(), control, rtol=2e-3, atol=1e-9)
    # The identity model is the zero-filled reconstruction: r = r0 and e = 0.
    dd = d.numpy().astype(np.float64)
    r0 = ((zf_feat - zf_clean) * dd).sum((1, 2)) / (dd**2).sum((1, 2))
    np.testing.assert_allclose(scores.r0.numpy(), r0, rtol=2e-3)
    np.testing.assert_allclose(scores.r.numpy(), r0, rtol=2e-3)
    np.testing.assert_allclose(scores.e.numpy(), 0, atol=1e-4)


def test_encode_decode_replays_exactly():
    ctx = context(smooth_slices(2))
    f = _walks(ctx, k=3, steps=12)
    enc = encode_features(f)
    g = decode_features(enc, f.slice_index.tolist())
    d1, s1 = paint(f, ctx.target_shape)
    d2, s2 = paint(g, ctx.target_shape)
    assert torch.equal(d1, d2) and torch.equal(s1, s2)
    est = estimator(Identity(), ctx.target_shape)
    eng = FnafEngine(est, batch_size=4)
    torch.testing.assert_close(eng.evaluate(ctx, f).loss, eng.evaluate(ctx, g).loss, equal_nan=True)
