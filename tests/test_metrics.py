"""Metrics against scikit-image / numpy oracles (fastMRI's definitions) and FNAF region helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from mri_audit.mri.metrics import (
    VolumeMetrics,
    fnaf_region,
    instance_stats,
    nmse,
    normalize,
    psnr,
    region_loss,
    region_nmse,
    ring4,
    slice_sums,
    ssim,
    ssim_volume,
)

TOL = 1e-4


# ---------------------------------------------------------------- oracles (fastmri.evaluate)


def oracle_ssim(gt: np.ndarray, pred: np.ndarray) -> float:
    maxval = gt.max()
    return float(
        np.mean(
            [structural_similarity(gt[i], pred[i], data_range=maxval) for i in range(gt.shape[0])]
        )
    )


def oracle_nmse(gt: np.ndarray, pred: np.ndarray) -> float:
    gt, pred = gt.astype(np.float64), pred.astype(np.float64)
    return float(np.linalg.norm(gt - pred) ** 2 / np.linalg.norm(gt) ** 2)


def oracle_psnr(gt: np.ndarray, pred: np.ndarray) -> float:
    return float(peak_signal_noise_ratio(gt, pred, data_range=gt.max()))


# ---------------------------------------------------------------- data


def noise_pair(seed: int, shape=(3, 48, 40)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gt = rng.uniform(0, 1, shape).astype(np.float32)
    pred = ndimage.uniform_filter(gt, size=(1, 3, 3)) + 0.05 * rng.standard_normal(shape)
    return gt, pred.astype(np.float32)


def phantom_pair(seed: int, shape=(4, 64, 56)) -> tuple[np.ndarray, np.ndarray]:
    """Smooth ellipse phantoms at fastMRI-like magnitude scale (~1e-4) and a degraded copy."""
    rng = np.random.default_rng(seed)
    s, h, w = shape
    yy, xx = np.mgrid[:h, :w]
    vol = np.zeros(shape)
    for k in range(s):
        img = np.zeros((h, w))
        for _ in range(5):
            cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
            ry, rx = rng.uniform(0.1, 0.35) * h, rng.uniform(0.1, 0.35) * w
            img += rng.uniform(0.2, 1.0) * (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1)
        vol[k] = ndimage.gaussian_filter(img, 1.5)
    vol *= 3e-4
    pred = ndimage.gaussian_filter(vol, (0, 1.2, 1.2)) + 2e-6 * rng.standard_normal(shape)
    return vol.astype(np.float32), pred.astype(np.float32)


PAIRS = [noise_pair(0), noise_pair(1), phantom_pair(2), phantom_pair(3)]


# ---------------------------------------------------------------- SSIM / NMSE / PSNR


@pytest.mark.parametrize("gt,pred", PAIRS)
def test_volume_metrics_match_skimage(gt, pred):
    g, p = torch.from_numpy(gt), torch.from_numpy(pred)
    assert abs(ssim_volume(p, g).item() - oracle_ssim(gt, pred)) < TOL
    assert abs(nmse(p, g).item() - oracle_nmse(gt, pred)) < TOL
    assert abs(psnr(p, g).item() - oracle_psnr(gt, pred)) < TOL
    assert abs(psnr(p, g, g.max()).item() - oracle_psnr(gt, pred)) < TOL


@pytest.mark.parametrize("gt,pred", PAIRS)
def test_per_slice_ssim_uses_volume_range(gt, pred):
    g, p = torch.from_numpy(gt), torch.from_numpy(pred)
    got = ssim(p, g, float(gt.max()))
    want = [structural_similarity(gt[i], pred[i], data_range=gt.max()) for i in range(len(gt))]
    np.testing.assert_allclose(got.numpy(), want, atol=TOL)
    assert got.dtype == torch.float32


def test_float64_kept_and_exact():
    gt, pred = phantom_pair(5)
    g, p = torch.from_numpy(gt).double(), torch.from_numpy(pred).double()
    got = ssim(p, g, g.max())
    assert got.dtype == torch.float64
    assert (
        abs(got.mean().item() - oracle_ssim(gt.astype(np.float64), pred.astype(np.float64))) < 1e-10
    )


def test_tensor_data_range_per_slice():
    gt, pred = noise_pair(7)
    g, p = torch.from_numpy(gt), torch.from_numpy(pred)
    dr = torch.tensor([1.0, 2.0, 0.5])
    got = ssim(p, g, dr)
    for i in range(3):
        want = structural_similarity(gt[i], pred[i], data_range=float(dr[i]))
        assert abs(got[i].item() - want) < TOL


def test_ssim_identical_is_one():
    gt, _ = phantom_pair(8)
    g = torch.from_numpy(gt)
    torch.testing.assert_close(ssim(g, g, g.max()), torch.ones(len(g)), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "a,b",
    [
        ((2, 16, 16), (2, 16, 15)),
        ((2, 16, 16), (3, 16, 16)),
        ((16, 16), (16, 16)),
        ((1, 2, 16, 16), (1, 2, 16, 16)),
        ((2, 6, 16), (2, 6, 16)),
    ],
)
def test_ssim_rejects_bad_shapes(a, b):
    with pytest.raises(ValueError):
        ssim(torch.rand(a), torch.rand(b), 1.0)


def test_ssim_gradient_finite():
    gt, pred = phantom_pair(9)
    g = torch.from_numpy(gt)
    p = torch.from_numpy(pred).requires_grad_(True)
    loss = 1 - ssim(p, g, g.max()).mean()
    loss.backward()
    assert p.grad is not None
    assert torch.isfinite(p.grad).all()
    assert p.grad.abs().sum() > 0


def test_batch_invariance():
    gt, pred = noise_pair(10, (6, 32, 36))
    g, p = torch.from_numpy(gt), torch.from_numpy(pred)
    dr = torch.full((6,), float(gt.max()))
    batched = ssim(p, g, dr)
    single = torch.cat([ssim(p[i : i + 1], g[i : i + 1], dr[i : i + 1]) for i in range(6)])
    assert torch.equal(batched, single)
    sums = slice_sums(p, g)
    for key, value in sums.items():
        one = torch.cat([slice_sums(p[i : i + 1], g[i : i + 1])[key] for i in range(6)])
        assert torch.equal(value, one), key


def test_slice_sums():
    p = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    g = torch.tensor([[[1.0, 0.0], [3.0, 2.0]]])
    s = slice_sums(p, g)
    assert s["sq_err"].tolist() == [8.0]
    assert s["sq_norm"].tolist() == [14.0]
    assert s["num_pixels"].tolist() == [4.0]


# ---------------------------------------------------------------- VolumeMetrics


def test_volume_metrics_shuffled_mixed_batches():
    vols = {"vol_a": noise_pair(11, (5, 40, 36)), "vol_b": phantom_pair(12, (4, 40, 36))}
    items = [(name, i) for name, (gt, _) in vols.items() for i in range(len(gt))]
    order = np.random.default_rng(0).permutation(len(items))
    m = VolumeMetrics()
    for batch in np.array_split(order, 4):  # batches of 2-3 slices, volumes mixed
        names = [items[j][0] for j in batch]
        gt = torch.stack([torch.from_numpy(vols[n][0][i]) for n, i in (items[j] for j in batch)])
        pr = torch.stack([torch.from_numpy(vols[n][1][i]) for n, i in (items[j] for j in batch)])
        dr = torch.tensor([float(vols[n][0].max()) for n in names])
        m.update(names, pr, gt, dr)
    per = m.compute()
    assert set(per) == set(vols)
    for name, (gt, pred) in vols.items():
        assert abs(per[name]["ssim"] - oracle_ssim(gt, pred)) < TOL
        assert abs(per[name]["nmse"] - oracle_nmse(gt, pred)) < TOL
        assert abs(per[name]["psnr"] - oracle_psnr(gt, pred)) < TOL
        assert per[name]["slices"] == len(gt)
    summary = m.summary()
    for key in ("ssim", "nmse", "psnr"):
        assert math.isclose(summary[key], np.mean([v[key] for v in per.values()]), abs_tol=1e-12)


def test_volume_metrics_empty_and_reset():
    m = VolumeMetrics()
    assert m.compute() == {}
    assert all(math.isnan(v) for v in m.summary().values())
    gt, pred = noise_pair(13)
    m.update(["v"] * 3, torch.from_numpy(pred), torch.from_numpy(gt), float(gt.max()))
    assert len(m) == 1
    m.reset()
    assert m.compute() == {}


def test_volume_metrics_warns_on_inconsistent_range():
    gt, pred = noise_pair(14)
    m = VolumeMetrics()
    m.update(["v"] * 3, torch.from_numpy(pred), torch.from_numpy(gt), torch.tensor([1.0, 1.0, 2.0]))
    with pytest.warns(UserWarning, match="data ranges"):
        m.compute()


def test_volume_metrics_name_count_mismatch():
    with pytest.raises(ValueError):
        VolumeMetrics().update(["a"], torch.rand(2, 8, 8), torch.rand(2, 8, 8), 1.0)


# ---------------------------------------------------------------- FNAF regions


def _mask(shape, pixels) -> torch.Tensor:
    m = torch.zeros(shape, dtype=torch.bool)
    for idx in pixels:
        m[idx] = True
    return m


def _pixels(mask: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(i) for i in mask.nonzero().tolist()}


def test_ring4_single_pixel_middle():
    s = _mask((1, 5, 5), [(0, 2, 2)])
    assert _pixels(ring4(s)) == {(0, 1, 2), (0, 3, 2), (0, 2, 1), (0, 2, 3)}
    assert _pixels(fnaf_region(s)) == _pixels(ring4(s)) | {(0, 2, 2)}


def test_ring4_corner_no_wrap():
    s = _mask((1, 4, 5), [(0, 0, 0)])
    assert _pixels(ring4(s)) == {(0, 0, 1), (0, 1, 0)}
    s = _mask((1, 4, 5), [(0, 3, 4)])
    assert _pixels(ring4(s)) == {(0, 2, 4), (0, 3, 3)}


def test_ring4_l_shape():
    #  . . . . .
    #  . X . . .
    #  . X . . .
    #  . X X . .
    #  . . . . .
    s = _mask((1, 5, 5), [(0, 1, 1), (0, 2, 1), (0, 3, 1), (0, 3, 2)])
    want = {(1, 0), (0, 1), (1, 2), (2, 0), (2, 2), (3, 0), (4, 1), (4, 2), (3, 3)}
    assert _pixels(ring4(s)) == {(0, *p) for p in want}


def test_ring4_no_leak_across_batch():
    s = _mask((3, 4, 4), [(0, 1, 1)])
    ring = ring4(s)
    assert _pixels(ring) == {(0, 0, 1), (0, 2, 1), (0, 1, 0), (0, 1, 2)}
    assert not ring[1:].any()
    # Supports at the same place in two samples: each gets its own ring, no cross-talk.
    s = _mask((2, 4, 4), [(0, 1, 1), (1, 1, 1)])
    assert torch.equal(ring4(s)[0], ring4(s)[1])
    assert ring4(s)[0].sum() == 4
    # Matches a per-sample computation.
    rng = torch.Generator().manual_seed(0)
    s = torch.rand(8, 9, 7, generator=rng) > 0.8
    one = torch.stack([ring4(s[i : i + 1])[0] for i in range(8)])
    assert torch.equal(ring4(s), one)


def test_ring4_rejects_non_bool():
    with pytest.raises(TypeError):
        ring4(torch.zeros(1, 4, 4))


def test_region_loss_hand_computed():
    recon = torch.zeros(2, 2, 3)
    target = torch.zeros(2, 2, 3)
    recon[0, 0, 0], recon[0, 1, 2], recon[1, 0, 1] = 2.0, 1.0, 3.0
    region = _mask((2, 2, 3), [(0, 0, 0), (0, 1, 2), (1, 1, 1)])
    # sample 0: (4 + 1) / 6; sample 1: the error lies outside the region.
    torch.testing.assert_close(region_loss(recon, target, region), torch.tensor([5 / 6, 0.0]))
    target[0] = 1.0
    # sample 0 errors in region: (2-1)^2 + (1-1)^2 = 1; target energy 2.
    torch.testing.assert_close(region_nmse(recon, target, region)[0], torch.tensor(0.5))


def test_region_nmse_identical_is_zero():
    x = torch.rand(3, 8, 8)
    region = fnaf_region(_mask((3, 8, 8), [(0, 4, 4), (2, 0, 0)]))  # sample 1 empty
    out = region_nmse(x, x.clone(), region)
    assert torch.equal(out, torch.zeros(3))


def test_instance_stats_and_normalize():
    x = torch.rand(4, 10, 12, dtype=torch.float64)
    mean, std = instance_stats(x)
    for i in range(4):
        assert math.isclose(mean[i].item(), x[i].mean().item())
        assert math.isclose(std[i].item(), x[i].std().item())
        assert math.isclose(std[i].item(), np.std(x[i].numpy(), ddof=1))
    y = normalize(x, mean, std)
    torch.testing.assert_close(y.mean((-2, -1)), torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(y.std((-2, -1)), torch.ones(4, dtype=torch.float64))
    _, std0 = instance_stats(torch.ones(2, 5, 5))
    assert (std0 > 0).all()
