"""Worst-case image panels for the report, recomputed from the stored features."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from mri_audit.data.datasets import collate
from mri_audit.fnaf.features import decode_features, insert, paint, prepare_context
from mri_audit.mri.operator import SamplingOperator

__all__ = ["worst_records", "render_panels"]

logger = logging.getLogger(__name__)


def _disagrees(record: dict) -> bool:
    """Whether another model's replay of the record's feature has the other hit label."""
    own = bool(record["hit"])
    return any(
        replay is not None and bool(replay.get("hit")) != own
        for replay in (record.get("transfer") or {}).values()
    )


def _key(record: dict) -> tuple[bool, float]:
    return bool(record["hit"]), float(record["score"])


def worst_records(records: Sequence[dict], model: str, k: int = 6) -> list[dict]:
    """The worst cases the report shows: at most ``k`` records, one per slice.

    Chosen across attacks and including disagreements: up to a third of the cases (at least one
    where any exists) are records of any model whose feature is a hit on one model and not on
    another (its transfer replays), ``model``'s own first; the rest go round-robin over the
    attacks to ``model``'s records with the highest criterion score, hits first. Each case's
    ``why`` says which (``worst`` or ``disagree``).

    Args:
        records: the audit's records (FNAF and degradation, every model).
        model: the audited model's name.
        k: how many cases.
    """
    fnaf = [
        r
        for r in records
        if r.get("kind", "fnaf") == "fnaf" and r["found"] and r.get("score") is not None
    ]
    out, seen = [], set()

    def take(r: dict, why: str) -> None:
        key = (r["volume"], int(r["slice"]))
        if key not in seen and len(out) < k:
            seen.add(key)
            out.append(r | {"why": why})

    disagree = sorted(
        (r for r in fnaf if _disagrees(r)),
        key=lambda r: (r["model"] == model, *_key(r)),
        reverse=True,
    )
    for r in disagree[: max(1, k // 3)]:
        take(r, "disagree")
    by_attack: dict[str, list[dict]] = {}
    for r in sorted((r for r in fnaf if r["model"] == model), key=_key, reverse=True):
        by_attack.setdefault(r["attack"], []).append(r)
    queues = list(by_attack.values())
    while len(out) < k and any(queues):
        for queue in queues:
            while queue:
                r = queue.pop(0)
                if (r["volume"], int(r["slice"])) not in seen:
                    take(r, "worst")
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
        zf = SamplingOperator(crop=ctx.target_shape).magnitude(masked)
        arrays[f"case{i}_zero_filled"] = zf[0].float().cpu().numpy().astype(np.float16)
        arrays[f"case{i}_target"] = target[0].float().cpu().numpy().astype(np.float16)
        for j, m in enumerate(auditor.models):
            est = m.estimator
            with est.evaluation(), est.cropping(ctx.target_shape), torch.inference_mode():
                samples = _samples(est, ctx, masked)
            arrays[f"case{i}_model{j}"] = _half(samples.mean(0)[0])
            if samples.shape[0] > 1:  # a stochastic model: its mean, and one sample beside it
                arrays[f"case{i}_model{j}_sample"] = _half(samples[0, 0])
    return arrays


def _half(image: torch.Tensor) -> np.ndarray:
    return image.float().cpu().numpy().astype(np.float16)


def _samples(est, ctx, masked: torch.Tensor) -> torch.Tensor:
    """The model's reconstructions of ``masked`` under the audit's keyed noise, ``(S, B, h, w)``
    (one for a deterministic model): the panels show what the records measured."""
    from mri_audit.models.sampling import reconstruct_samples

    return reconstruct_samples(
        est,
        ctx.volume_keys,
        ctx.slices,
        lambda: est.reconstruct(masked, ctx.mask, num_low_frequencies=ctx.num_low_frequencies),
    )
