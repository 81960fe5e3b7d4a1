"""Physics: FFTs, fastMRI masks (against fastMRI 0.3.0's own output), undersampling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mri_audit.mri.operator import SamplingOperator
from mri_audit.mri.physics import (
    EquispacedMask,
    RandomMask,
    apply_mask,
    center_crop,
    default_center_fraction,
    fft2c,
    ifft2c,
    make_mask_func,
    mask_to_tensor,
    rss,
    volume_seed,
)

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "fastmri_masks.json"


def _complex(*shape, seed=0, dtype=torch.complex64):
    g = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)).to(
        dtype
    )


def test_fft_roundtrip_and_parseval():
    x = _complex(2, 3, 37, 30)
    k = fft2c(x)
    torch.testing.assert_close(ifft2c(k), x, atol=1e-6, rtol=0)
    torch.testing.assert_close(k.abs().square().sum(), x.abs().square().sum(), rtol=1e-5, atol=0)


def test_fft_is_centred_like_numpy_reference():
    x = _complex(1, 1, 16, 12, dtype=torch.complex128)
    ref = np.fft.fftshift(
        np.fft.fft2(np.fft.ifftshift(x.numpy(), axes=(-2, -1)), norm="ortho"), axes=(-2, -1)
    )
    np.testing.assert_allclose(fft2c(x).numpy(), ref, atol=1e-12)
    # A constant image puts all its energy in the centre of k-space.
    k = fft2c(torch.ones(1, 1, 8, 8, dtype=torch.complex64))
    assert torch.argmax(k.abs()).item() == 4 * 8 + 4


def test_fft_rejects_real_input_and_is_differentiable():
    with pytest.raises(ValueError):
        fft2c(torch.ones(4, 4))
    x = _complex(1, 1, 8, 8).requires_grad_(True)
    SamplingOperator(mask_to_tensor(np.ones(8, bool))).zero_filled(fft2c(x)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("kind", ["random", "equispaced"])
@pytest.mark.parametrize("accel", [4, 8, 3])
def test_masks_have_requested_acceleration_and_centre(kind, accel):
    cols = 368
    func = make_mask_func(kind, accel)
    m = func(cols, seed=1)
    frac = default_center_fraction(accel)
    nlf = round(cols * frac)
    assert m.num_low_frequencies == nlf
    pad = (cols - nlf + 1) // 2
    assert m.columns[pad : pad + nlf].all()
    rates = [func(cols, seed=s).columns.mean() for s in range(40)]
    assert abs(np.mean(rates) - 1 / accel) < 0.02
    assert m.columns.dtype == bool and m.columns.shape == (cols,)


def test_same_seed_same_mask_other_seed_other_mask():
    func = make_mask_func("random", 4)
    a, b, c = func(320, seed=5), func(320, seed=5), func(320, seed=6)
    assert np.array_equal(a.columns, b.columns) and not np.array_equal(a.columns, c.columns)
    seed = volume_seed("file1000001.h5")
    assert seed == tuple(map(ord, "file1000001.h5"))
    assert np.array_equal(func(320, seed=seed).columns, func(320, seed=seed).columns)


def test_acceleration_one_is_fully_sampled_and_below_one_refused():
    for kind in ("random", "equispaced"):
        assert make_mask_func(kind, 1)(33, seed=0).columns.all()
    with pytest.raises(ValueError):
        make_mask_func("random", 0.5)
    with pytest.raises(ValueError):
        RandomMask([0.08], [4, 8])


def _fastmri_random_reference(num_cols, center_fraction, acceleration, seed):
    """fastMRI 0.3.0's RandomMaskFunc, re-derived from its published algorithm."""
    rng = np.random.RandomState()
    rng.seed(seed)
    rng.randint(1)  # choose_acceleration draws an index among the (one) configurations
    num_low = round(num_cols * center_fraction)
    center = np.zeros(num_cols, dtype=np.float32)
    pad = (num_cols - num_low + 1) // 2
    center[pad : pad + num_low] = 1
    prob = (num_cols / acceleration - num_low) / (num_cols - num_low)
    accel = rng.uniform(size=num_cols) < prob
    return np.maximum(center, accel).astype(bool), num_low


@pytest.mark.parametrize("seed", [0, 1, 42, 1234])
@pytest.mark.parametrize("cols, accel, frac", [(320, 4, 0.08), (368, 8, 0.04), (372, 4, 0.08)])
def test_random_mask_equals_fastmri_algorithm(seed, cols, accel, frac):
    ref, nlf = _fastmri_random_reference(cols, frac, accel, seed)
    m = RandomMask([frac], [accel])(cols, seed=seed)
    assert np.array_equal(m.columns, ref) and m.num_low_frequencies == nlf


@pytest.mark.skipif(not FIXTURE.exists(), reason="shared fixtures not beside the checkout")
def test_masks_match_fastmri_fixture_column_for_column():
    cases = json.loads(FIXTURE.read_text())["cases"]
    assert len(cases) == 48
    for case in cases:
        kind = "equispaced" if "equi" in case["mask"] else "random"
        func = make_mask_func(kind, case["acceleration"], case["center_fraction"])
        seed = case["seed"]
        if isinstance(seed, str):
            seed = volume_seed(seed.split(":", 1)[1])
        m = func(case["cols"], seed=seed)
        assert np.flatnonzero(m.columns).tolist() == case["columns"], case
        assert m.num_low_frequencies == case["num_low_frequencies"]


def test_equispaced_offset_and_spacing():
    m = EquispacedMask([0.08], [4])(320, seed=0, offset=0)
    assert m.columns[0]


def test_crop_rss_zero_filled_batched():
    x = _complex(3, 4, 40, 36)
    crop = center_crop(x, (32, 30))
    assert crop.shape == (3, 4, 32, 30)
    torch.testing.assert_close(crop, x[..., 4:36, 3:33])
    with pytest.raises(ValueError):
        center_crop(x, (41, 10))
    r = rss(x)
    torch.testing.assert_close(r, x.abs().square().sum(1).sqrt())
    k = fft2c(x)
    mask = mask_to_tensor(np.stack([np.arange(36) % 2 == 0] * 3))
    assert mask.shape == (3, 1, 1, 36)
    masked = apply_mask(k, mask)
    assert masked[..., 1::2].abs().max() == 0
    zf = SamplingOperator(mask, (32, 32)).zero_filled(k)
    torch.testing.assert_close(zf, center_crop(rss(ifft2c(masked)), (32, 32)))
    # Fully sampled zero-filling is the RSS image itself.
    full = SamplingOperator(mask_to_tensor(np.ones(36, bool))).zero_filled(k)
    torch.testing.assert_close(full, rss(x), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------- the sampling operator


def test_operator_adjoint_and_zero_filled_against_fastmri():
    """``<A x, y> = <x, A^H y>`` for the masked FFT, and the zero-filled magnitude equals the
    real fastMRI package's (its ifft2c on real-view tensors, rss, centre crop)."""
    import fastmri
    from fastmri.data.transforms import center_crop as fm_crop

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 12, 10, dtype=torch.complex128, generator=gen)
    y = torch.randn(2, 3, 12, 10, dtype=torch.complex128, generator=gen)
    cols = torch.rand(2, 10, generator=gen) > 0.5
    op = SamplingOperator(cols[:, None, None, :], (8, 8))
    lhs = torch.vdot(op.forward(x).flatten(), y.flatten())
    rhs = torch.vdot(x.flatten(), op.adjoint(y).flatten())
    torch.testing.assert_close(lhs, rhs)
    k = fft2c(x.to(torch.complex64))
    ours = op.zero_filled(k)
    masked = torch.view_as_real(k * cols[:, None, None, :])
    theirs = fm_crop(fastmri.rss(fastmri.complex_abs(fastmri.ifft2c(masked)), dim=1), (8, 8))
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    # No mask and no crop: the identity sampling of the full grid.
    full = SamplingOperator().zero_filled(k)
    torch.testing.assert_close(full, rss(x.to(torch.complex64)), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="k-space must be"):
        op.zero_filled(k[0])
