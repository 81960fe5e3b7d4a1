"""The inner maximisation of ``mri-audit harden`` and the loss on the features it finds.

Each step attacks part of the batch (``attack_fraction``, the slices drawn by a generator keyed
by (seed, epoch, step)) against the *current* weights: ``fnaf-rs`` draws ``candidates`` random
features per slice; with ``inner_steps`` > 0 the best of them is refined by ``fnaf-pgd``'s
projected gradient ascent on the criterion's score (Madry et al.'s PGD training, started from
the best random candidate as the audit's ``fnaf-pgd`` is). The features found then enter the
outer loss

    λ · (L1 on Ω + whole-image loss) + β · ‖(R(x+f) − R(x)) − (t_f − t)‖²_Ω / ‖t_f − t‖²

where the second term (``recovery`` β, TRADES-like) compares what the reconstruction adds when
the feature is there with what the feature adds to the ground truth: it is 0 when the model
shows the whole feature (``r`` = 1) whatever its error elsewhere. With ``recovery_target``
``data`` it is instead the hinge ``max(0, r₀ + δ/2 − r)`` on the criterion's own quantities
(DESIGN §4): the model is asked to show what the undersampled data carries of the feature
(``r₀``, from the zero-filled image) with half the erasure margin to spare, not the whole
feature (which the data may not carry, and which it can only show by amplifying aliasing).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mri_audit.fnaf.attack import AttackResult
from mri_audit.fnaf.features import SliceContext, insert, paint, prepare_context
from mri_audit.harden.config import HardenConfig
from mri_audit.harden.losses import image_loss, pixel_loss
from mri_audit.mri.metrics import fnaf_region
from mri_audit.mri.operator import SamplingOperator

__all__ = [
    "attacked_slices",
    "batch_context",
    "criterion_kwargs",
    "feature_loss",
    "training_attack",
    "training_attack_card",
]


def batch_context(batch, mask_for, config: HardenConfig) -> SliceContext:
    """The :class:`SliceContext` of a batch of slices (already on its device), with the
    run's window and each volume's data range; ``mask_for(volume, num_columns)`` masks it."""
    return prepare_context(
        batch.kspace,
        target_shape=tuple(batch.target.shape[-2:]),
        volumes=batch.volumes,
        slices=batch.slices,
        mask_for=mask_for,
        window=config.window,
        data_range=batch.max_values,
    )


def criterion_kwargs(config: HardenConfig) -> dict:
    """The criterion's settings every attack of the run shares."""
    return {
        "criterion": config.criterion,
        "margin": config.margin,
        "min_recovery": config.min_recovery,
        "threshold": config.threshold,
        "ip_epsilon": config.ip_epsilon,
        "window": config.window,
    }


def training_attack(estimator, config: HardenConfig, attack_classes: dict, *, seed: int):
    """The attack of one training step: ``fnaf-rs``, or ``fnaf-pgd`` with ``inner_steps``."""
    common = {
        "candidates": config.candidates,
        "feature_steps": tuple(config.feature_steps),
        **criterion_kwargs(config),
        "seed": seed,
        "batch_size": config.candidate_batch,
    }
    if config.inner_steps == 0:
        return attack_classes["fnaf-rs"](estimator, **common)
    return attack_classes["fnaf-pgd"](estimator, steps=config.inner_steps, **common)


def training_attack_card(config: HardenConfig) -> dict:
    """The training attack as the card records it."""
    name = "fnaf-pgd" if config.inner_steps else "fnaf-rs"
    card = {
        "attack": name,
        "candidates": config.candidates,
        "feature_steps": list(config.feature_steps),
        "attack_fraction": config.attack_fraction,
        "lambda": config.lam,
        "recovery": config.recovery,
        "recovery_target": config.recovery_target,
    }
    return {**card, "steps": config.inner_steps} if config.inner_steps else card


def attacked_slices(batch_size: int, fraction: float, key: int) -> list[int]:
    """Which slices of a batch are attacked: ``ceil(fraction · batch_size)`` of them, drawn by
    a generator keyed by ``key``, in ascending order."""
    count = min(batch_size, max(1, math.ceil(fraction * batch_size - 1e-9)))
    if count == batch_size:
        return list(range(batch_size))
    picked = np.random.default_rng(key).permutation(batch_size)[:count]
    return sorted(int(i) for i in picked)


def feature_loss(
    reconstruct,
    ctx: SliceContext,
    result: AttackResult,
    clean: torch.Tensor,
    config: HardenConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The FNAF term and the recovery term of the features ``result`` found in ``ctx``.

    Args:
        reconstruct: ``(masked k-space, mask) -> (N, h, w)`` reconstructions (with gradients).
        ctx: the attacked slices.
        result: the attack's result on ``ctx``.
        clean: the reconstructions of ``ctx``'s slices without a feature.
        config: the loss kind and its weights.

    Returns:
        ``(fnaf, recovery)`` scalars (zeros when nothing was found).

    Shape:
        clean: ``(B, h, w)`` for ``B`` = ``ctx.num_slices``.
    """
    zero = torch.zeros((), device=clean.device)
    found = result.found.nonzero().squeeze(1)
    if found.numel() == 0:
        return zero, zero
    features = result.features.take(found)
    si = features.slice_index
    d, support = paint(features, ctx.target_shape)
    kspace, target = insert(ctx, si, d)
    recon = reconstruct(kspace * ctx.mask[si], ctx.mask[si]).float()
    region = fnaf_region(support).float()
    # The region term is per pixel: L1 for the SSIM losses, which have no pixel form.
    kind = "l1" if config.loss.startswith("ssim") else config.loss
    pix = pixel_loss(kind, recon, target, ctx.t_std[si])
    on_region = (pix * region).sum((-2, -1)) / region.sum((-2, -1)).clamp_min(1)
    whole = image_loss(config.loss, recon, target, ctx.t_std[si], ctx.data_range[si])
    fnaf = on_region.mean() + whole
    if config.recovery == 0:
        return fnaf, zero
    shown = recon - clean[si]
    if config.recovery_target == "data":
        # r against r0 (DESIGN §4): only what the model removes of what the data carries.
        zf = SamplingOperator(crop=ctx.target_shape).magnitude(kspace * ctx.mask[si])
        energy = d.square().sum((-2, -1)).clamp_min(1e-12)
        r = (shown * d).sum((-2, -1)) / energy
        r0 = ((zf - ctx.zero_filled[si]) * d).sum((-2, -1)) / energy
        return fnaf, (r0.detach() + config.margin / 2 - r).clamp_min(0).mean()
    added = target - ctx.target[si]
    energy = (added.square() * region).sum((-2, -1)).clamp_min(1e-12)
    recovery = (((shown - added).square() * region).sum((-2, -1)) / energy).mean()
    return fnaf, recovery
