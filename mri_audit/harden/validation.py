"""Validation of ``mri-audit harden``: clean metrics and two attack rates on held-out slices.

The rates come from attacks stronger than the training's (a defence is judged by an attack it
was not trained against): ``fnaf-rs`` with ``val_candidates`` (at least 3x the training's) and
``fnaf-pgd`` with the same candidates and ``val_steps`` gradient steps (at least 4x the
training's inner steps). ``fnaf-pgd`` starts from ``fnaf-rs``'s best candidate of the same draws,
so its rate is never below ``fnaf-rs``'s; it is the rate the kept weights are chosen by.
"""

from __future__ import annotations

import math

from mri_audit.data.datasets import iter_batches, valid_indices
from mri_audit.fnaf.engine import FnafEngine
from mri_audit.harden.config import HardenConfig
from mri_audit.harden.inner import batch_context, criterion_kwargs
from mri_audit.mri.metrics import VolumeMetrics
from mri_audit.mri.physics import volume_seed

__all__ = ["evaluation_attacks", "validate"]


def evaluation_attacks(config: HardenConfig) -> dict[str, dict]:
    """The validation's attacks and their settings, as the card records them."""
    common = {"candidates": config.val_candidates, "feature_steps": 10, "seed": config.seed}
    return {"fnaf-rs": common, "fnaf-pgd": {**common, "steps": config.val_steps}}


def validate(estimator, val_set, config: HardenConfig, attack_classes: dict, mask_func) -> dict:
    """Clean SSIM/NMSE/PSNR and the ``fnaf-rs`` and ``fnaf-pgd`` attack rates on ``val_set``.

    Returns:
        ``ssim``, ``nmse``, ``psnr``, ``rs_rate``, ``pgd_rate`` and ``attack_rate`` (the
        ``fnaf-pgd`` rate: the strongest attack's).
    """
    attacks = {
        name: attack_classes[name](
            estimator, **settings, **criterion_kwargs(config), batch_size=config.candidate_batch
        )
        for name, settings in evaluation_attacks(config).items()
    }
    metrics, hits, total = VolumeMetrics(), dict.fromkeys(attacks, 0), 0
    per = max(1, math.ceil(2 * config.candidate_batch / config.val_candidates))
    for batch in iter_batches(val_set, per, valid_indices(val_set)):
        batch = batch.to(estimator.device)
        ctx = batch_context(batch, lambda v, n: mask_func(n, seed=volume_seed(v)), config)
        # One engine: fnaf-pgd reuses fnaf-rs's candidates (the same draws) instead of redoing them.
        engine = FnafEngine(estimator, batch_size=config.candidate_batch)
        with estimator.cropping(ctx.target_shape):  # volumes may differ in size
            for name, attack in attacks.items():
                hits[name] += int(attack.attack(ctx, engine).hit.sum())
            recon = engine.clean_reconstruction(ctx)
        metrics.update(batch.volumes, recon, ctx.target, batch.max_values)
        total += ctx.num_slices
    total = max(total, 1)
    rs, pgd = hits["fnaf-rs"] / total, hits["fnaf-pgd"] / total
    return {**metrics.summary(), "rs_rate": rs, "pgd_rate": pgd, "attack_rate": pgd}
