"""Worst-case image panels for the report, recomputed from the stored features."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from mri_audit.data import collate
from mri_audit.features import decode_features, insert, paint, prepare_context
from mri_audit.physics import center_crop, ifft2c, rss

__all__ = ["worst_records", "render_panels"]

logger = logging.getLogger(__name__)


def worst_records(records: Sequence[dict], model: str, k: int = 6) -> list[dict]:
    """The ``k`` records of ``model`` with the highest criterion score (hits first), one per
    slice."""
    fnaf = [
        r
        for r in records
        if r["model"] == model
        and r.get("kind", "fnaf") == "fnaf"
        and r["found"]
        and r.get("score") is not None
    ]
    fnaf.sort(key=lambda r: (bool(r["hit"]), r["score"]), reverse=True)
    out, seen = [], set()
    for r in fnaf:
        key = (r["volume"], int(r["slice"]))
        if key not in seen:
            seen.add(key)
            out.append(r)
        if len(out) == k:
            break
    return out


def _dataset_index(dataset) -> dict[tuple[str, int], int]:
    return {key: i for i, key in enumerate(dataset.keys())}


def render_panels(auditor, dataset, cases: Sequence[dict]) -> dict[str, np.ndarray]:
    """Images of each worst case: zero-filled input, target with feature, each model's output.

    Returns:
        arrays named ``case{i}_zero_filled``, ``case{i}_target`` and ``case{i}_model{j}``
        (float16, in target units), for the report.
    """
    index = _dataset_index(dataset)
    arrays: dict[str, np.ndarray] = {}
    for i, case in enumerate(cases):
        pos = index.get((case["volume"], int(case["slice"])))
        if pos is None or not case.get("feature"):
            continue
        batch = collate([dataset[pos]])
        device = auditor.models[0].estimator.device
        ctx = prepare_context(
            batch.kspace.to(device),
            target_shape=tuple(batch.target.shape[-2:]),
            volumes=batch.volumes,
            slices=batch.slices,
            mask_for=auditor.mask_for,
            window=auditor.config.window,
            insert_mode=auditor.config.insert,
        )
        features = decode_features([case["feature"]], [0], device=device)
        d, _ = paint(features, ctx.target_shape)
        kspace, target = insert(ctx, features.slice_index, d)
        masked = kspace * ctx.mask
        zf = center_crop(rss(ifft2c(masked), dim=1), ctx.target_shape)
        arrays[f"case{i}_zero_filled"] = zf[0].float().cpu().numpy().astype(np.float16)
        arrays[f"case{i}_target"] = target[0].float().cpu().numpy().astype(np.float16)
        for j, m in enumerate(auditor.models):
            with m.estimator.evaluation(), torch.inference_mode():
                recon = m.estimator.reconstruct(
                    masked, ctx.mask, num_low_frequencies=ctx.num_low_frequencies
                )
            arrays[f"case{i}_model{j}"] = recon[0].float().cpu().numpy().astype(np.float16)
    return arrays
