"""The inner maximisation of ``harden`` and its loss terms, against hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from mri_audit.data.datasets import SyntheticDataset, collate
from mri_audit.fnaf.engine import FnafEngine
from mri_audit.fnaf.features import prepare_context
from mri_audit.fnaf.registry import load_attack
from mri_audit.harden.config import HardenConfig
from mri_audit.harden.inner import attacked_slices, feature_loss, training_attack
from mri_audit.models.estimator import Reconstructor
from mri_audit.mri.operator import SamplingOperator
from mri_audit.mri.physics import make_mask_func, volume_seed

CLASSES = {n: load_attack(n) for n in ("fnaf-rs", "fnaf-pgd")}


@pytest.fixture(scope="module")
def ctx():
    data = SyntheticDataset(volumes=2, slices=1, size=48)
    batch = collate([data[0], data[1]])
    func = make_mask_func("random", 4, None)
    return prepare_context(
        batch.kspace,
        target_shape=tuple(batch.target.shape[-2:]),
        volumes=batch.volumes,
        slices=batch.slices,
        mask_for=lambda v, n: func(n, seed=volume_seed(v)),
    )


class ZeroFilled(torch.nn.Module):
    """The zero-filled magnitude (image input, no normalisation): shows exactly r0."""

    def forward(self, x):
        return x


def _found(ctx, config):
    est = Reconstructor(ZeroFilled(), target_shape=ctx.target_shape, normalize="none")
    attack = training_attack(est, config, CLASSES, seed=3)
    with est.cropping(ctx.target_shape):
        return attack.attack(ctx, FnafEngine(est))


def _zero_filled(ctx):
    op = SamplingOperator(crop=ctx.target_shape)
    return lambda kspace, mask: op.magnitude(kspace)


def test_training_attack_is_fnaf_pgd_with_the_inner_steps_or_random_search():
    est = Reconstructor(ZeroFilled(), target_shape=(8, 8))
    pgd = training_attack(est, HardenConfig(inner_steps=3, candidates=5), CLASSES, seed=1)
    assert pgd.name == "fnaf-pgd" and pgd.steps == 3 and pgd.candidates == 5
    rs = training_attack(est, HardenConfig(inner_steps=0), CLASSES, seed=1)
    assert rs.name == "fnaf-rs"


def test_attacked_slices_are_a_keyed_part_of_the_batch():
    assert attacked_slices(4, 1.0, 7) == [0, 1, 2, 3]
    half = attacked_slices(4, 0.5, 7)
    assert len(half) == 2 and half == attacked_slices(4, 0.5, 7) and half == sorted(half)
    assert len(attacked_slices(5, 0.5, 7)) == 3 and len(attacked_slices(4, 0.01, 7)) == 1
    assert {tuple(attacked_slices(4, 0.5, k)) for k in range(20)} != {tuple(half)}


def test_data_recovery_is_half_the_margin_for_a_model_showing_exactly_r0(ctx):
    """The zero-filled image shows what the data carries (r = r0): the hinge r0 + δ/2 − r is
    δ/2 on every feature."""
    config = HardenConfig(inner_steps=1, candidates=3, recovery=1.0, recovery_target="data")
    result = _found(ctx, config)
    assert bool(result.found.all())
    clean = _zero_filled(ctx)(ctx.kspace * ctx.mask, ctx.mask)
    _, recovery = feature_loss(_zero_filled(ctx), ctx, result, clean, config)
    assert float(recovery) == pytest.approx(config.margin / 2, abs=1e-5)


def test_recovery_terms_vanish_for_a_model_that_shows_the_whole_feature(ctx):
    """A model that returns the fully-sampled truth shows all of the feature: r = 1 >= r0 +
    δ/2, and what it adds is what the feature adds to the truth."""
    from mri_audit.fnaf.features import insert, paint
    from mri_audit.mri.physics import center_crop, ifft2c, rss

    def truth(kspace, mask):
        # The masked input is not enough; the test reads the full k-space it was made from.
        return center_crop(rss(ifft2c(truth.full), dim=1), ctx.target_shape)

    for target in ("data", "feature"):
        config = HardenConfig(inner_steps=1, candidates=3, recovery=1.0, recovery_target=target)
        result = _found(ctx, config)
        f = result.features.take(result.found.nonzero().squeeze(1))
        d, _ = paint(f, ctx.target_shape)
        truth.full, _ = insert(ctx, f.slice_index, d)
        _, recovery = feature_loss(truth, ctx, result, ctx.target, config)
        assert float(recovery) == pytest.approx(0.0, abs=1e-6)
