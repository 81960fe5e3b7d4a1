"""The feature-recovery map: how much of a feature a model shows, by shape, size and contrast.

FNAF attacks ask whether *some* small feature is lost; the map asks *which* ones, as
contrast-detail analysis does with a phantom of graded inserts. For every cell of a grid
(shape × size × contrast) and every slice, ``draws`` random placements of that feature are
inserted into the fully-sampled k-space and scored through the same engine as the attacks
(:class:`~mri_audit.fnaf.engine.FnafEngine`: one model pass per feature, the zero-filled evidence
with
it). Per model and cell: the mean recovery ``r``, the mean evidence ``r₀``, the erasure rate under
the ``erasure`` criterion at ``margin``, each with a 95% interval clustered by volume. From them,
per model, shape and contrast, the smallest size with mean ``r >= 0.5`` (the contrast-detail
curve), and the same for ``r₀`` (what the undersampled data itself carries).

Every placement is keyed by (seed, volume, slice, cell, draw) (:mod:`mri_audit.audit.map_grid`),
so a
feature never depends on batching, on the other cells of the grid, or on ``draws``.

Compute (:func:`score_map`) → plain data (:func:`summarize_map`, :func:`recovery_map`) → render
(:mod:`mri_audit.report.map_figures`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from mri_audit.audit.map_grid import (
    DEFAULT_CONTRASTS,
    DEFAULT_DRAWS,
    DEFAULT_SHAPES,
    DEFAULT_SIZES,
    RECOVERED,
    SIZE_UNITS,
    Cell,
    MapGrid,
    candidate_number,
)
from mri_audit.audit.map_stats import clustered_mean, smallest_recovered
from mri_audit.audit.stats import clustered_rate
from mri_audit.data.batching import iter_batches, valid_indices
from mri_audit.errors import ModelError, MriAuditError
from mri_audit.fnaf.criteria import Erasure
from mri_audit.fnaf.engine import FnafEngine
from mri_audit.fnaf.features import FeatureBatch, SliceContext, prepare_context
from mri_audit.models.estimator import Reconstructor
from mri_audit.mri.physics import MaskFunc, volume_seed

__all__ = [
    "DEFAULT_CONTRASTS",
    "DEFAULT_DRAWS",
    "DEFAULT_SHAPES",
    "DEFAULT_SIZES",
    "RECOVERED",
    "SIZE_UNITS",
    "Cell",
    "MapGrid",
    "MapSamples",
    "candidate_number",
    "recovery_map",
    "score_map",
    "summarize_map",
]

logger = logging.getLogger(__name__)


class MapSamples(NamedTuple):
    """Every scored feature of a map.

    Attributes:
        models: model names.
        cells: the grid's cells (:meth:`MapGrid.cells`).
        volumes, slices: each slice's volume name and slice index, in scoring order.
        r, r0: recovery and evidence of each feature (NaN where not finite).
        hit: the ``erasure`` criterion's hit at the map's margin.

    Shape:
        r, r0, hit: ``(models, slices, cells, draws)``.
    """

    models: tuple[str, ...]
    cells: tuple[Cell, ...]
    volumes: tuple[str, ...]
    slices: tuple[int, ...]
    r: np.ndarray
    r0: np.ndarray
    hit: np.ndarray


def _shape_features(
    ctx: SliceContext, grid: MapGrid, shape: str, *, seed: int
) -> tuple[FeatureBatch, torch.Tensor]:
    """Every feature of one shape for the slices of ``ctx``: for each size, slice, contrast and
    draw. Returns the batch and each feature's position ``(slice, cell-in-shape, draw)`` as one
    flat index into ``(slices, sizes × contrasts, draws)``.

    Shape:
        returns ``N = slices · sizes · contrasts · draws`` features and an ``(N,)`` index.
    """
    from mri_audit.fnaf.shapes import draw_features

    device = ctx.kspace.device
    b, nc, d = ctx.num_slices, len(grid.contrasts), grid.draws
    parts, where = [], []
    for zi, size in enumerate(grid.sizes_of(shape)):
        numbers = [
            candidate_number(Cell(shape, size, c), k) for c in grid.contrasts for k in range(d)
        ]
        per_slice = torch.tensor(numbers, dtype=torch.int64, device=device)
        slice_index = torch.arange(b, device=device).repeat_interleave(nc * d)
        candidate = per_slice.repeat(b)
        contrast = torch.tensor(grid.contrasts, device=device).repeat_interleave(d).repeat(b)
        parts.append(
            draw_features(
                ctx,
                slice_index,
                candidate,
                shape=shape,
                size=int(size) if shape == "walk" else float(size),
                contrast=contrast.to(ctx.target.dtype),
                width=grid.width,
                seed=seed,
            )
        )
        local = torch.arange(nc * d, device=device).repeat(b)  # contrast-major, then draw
        where.append(slice_index * (len(grid.sizes_of(shape)) * nc * d) + zi * nc * d + local)
    return FeatureBatch.cat(parts), torch.cat(where)


def score_map(
    models: Sequence[tuple[str, Reconstructor]],
    dataset,
    grid: MapGrid,
    *,
    mask_func: MaskFunc,
    seed: int = 0,
    margin: float = 0.1,
    batch_size: int = 16,
    window: float = 0.375,
    insert_mode: str = "phase",
    on_batch: Callable[[int, int, float], None] | None = None,
) -> MapSamples:
    """Score every feature of the grid on every valid slice of ``dataset``, for every model.

    The features of a batch of slices are drawn once and scored through each model's engine in
    chunks of ``batch_size`` (one model pass per feature; the clean reconstruction once per
    slice). Slices are batched so that a context holds at least two chunks of features.

    Args:
        models: ``(name, estimator)`` pairs (e.g. :class:`~mri_audit.audit.auditor.AuditModel`).
        dataset: slices (``SliceSample`` items); invalid slices are skipped.
        grid: the cells and draws.
        mask_func: the mask function (per-volume masks, seeded from the volume name).
        seed: the seed of every placement.
        margin: ``δ`` of the erasure criterion.
        batch_size: features per model batch.
        window: the centred window (fraction of each side) features are placed in.
        insert_mode: ``phase`` or ``magnitude`` (see :func:`~mri_audit.fnaf.features.insert`).
        on_batch: called after each batch of slices with (slices done, total, seconds elapsed).

    Raises:
        ModelError: a model failed on a batch (its name, the slice and the cause).
    """
    names = tuple(str(n) for n, _ in models)
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique, got {list(names)}")
    cells = grid.cells()
    per_slice = len(cells) * grid.draws
    slices_per_batch = max(1, math.ceil(2 * batch_size / per_slice))
    rule = Erasure(margin=margin)
    masks: dict[tuple[str, int], Any] = {}

    def mask_for(volume: str, num_cols: int):
        if (volume, num_cols) not in masks:
            masks[(volume, num_cols)] = mask_func(num_cols, seed=volume_seed(volume))
        return masks[(volume, num_cols)]

    engines = [FnafEngine(est, batch_size=batch_size) for _, est in models]
    total = len(valid_indices(dataset))
    out = {q: [] for q in ("r", "r0", "hit")}
    volumes: list[str] = []
    slices: list[int] = []
    started, done = time.perf_counter(), 0
    for batch in iter_batches(dataset, slices_per_batch):
        device = models[0][1].device
        batch = batch.to(device)
        ctx = prepare_context(
            batch.kspace,
            target_shape=tuple(batch.target.shape[-2:]),
            volumes=batch.volumes,
            slices=batch.slices,
            mask_for=mask_for,
            window=window,
            insert_mode=insert_mode,
            data_range=batch.max_values,
        )
        features = [_shape_features(ctx, grid, s, seed=seed) for s in grid.shapes]
        values = {q: np.full((len(models), ctx.num_slices, per_slice), np.nan) for q in out}
        values["hit"] = np.zeros((len(models), ctx.num_slices, per_slice), dtype=bool)
        for m, ((name, est), engine) in enumerate(zip(models, engines, strict=True)):
            offset = 0
            for shape, (fb, where) in zip(grid.shapes, features, strict=True):
                try:
                    with est.evaluation():
                        scores = engine.evaluate(ctx, fb)
                except (KeyboardInterrupt, MriAuditError):
                    raise
                except Exception as err:
                    cause = " ".join(f"{type(err).__name__}: {err}".split())[:200]
                    raise ModelError(
                        f"{name} failed on {batch.volumes[0]} slice {batch.slices[0]} "
                        f"(a {shape} feature): {cause}"
                    ) from err
                n_shape = len(grid.sizes_of(shape)) * len(grid.contrasts) * grid.draws
                idx = where.cpu().numpy()
                rows, cols = idx // n_shape, offset + idx % n_shape
                r, r0 = scores.r.double().cpu(), scores.r0.double().cpu()
                hit = rule.hit({"r": r, "r0": r0, "e": r0 - r}).numpy()
                values["r"][m, rows, cols] = r.numpy()
                values["r0"][m, rows, cols] = r0.numpy()
                values["hit"][m, rows, cols] = hit
                offset += n_shape
        for q in out:
            out[q].append(values[q])
        volumes += list(batch.volumes)
        slices += [int(s) for s in batch.slices]
        done += ctx.num_slices
        if on_batch is not None:
            on_batch(done, total, time.perf_counter() - started)
    shape4 = (len(models), len(slices), len(cells), grid.draws)

    def stack(q: str) -> np.ndarray:
        if not out[q]:
            return np.zeros(shape4, dtype=bool if q == "hit" else np.float64)
        return np.concatenate(out[q], axis=1).reshape(shape4)

    return MapSamples(
        names, tuple(cells), tuple(volumes), tuple(slices), stack("r"), stack("r0"), stack("hit")
    )


def summarize_map(
    samples: MapSamples, grid: MapGrid, *, threshold: float = RECOVERED
) -> dict[str, Any]:
    """Per model and cell: mean ``r``, mean ``r₀`` and erasure rate with intervals clustered by
    volume; per model, shape and contrast the smallest recovered size (and for ``r₀``).

    Returns:
        ``{"models", "volumes", "slices", "cells", "curves", "evidence",
        "relative_curves"}``: ``cells`` one dict per
        (model, cell) with ``model``, ``shape``, ``size``, ``contrast``, ``n`` (finite features),
        ``clusters``, ``r`` and ``r0`` (:func:`~mri_audit.audit.map_stats.clustered_mean`) and
        ``erasure`` (:func:`~mri_audit.audit.stats.clustered_rate`); ``curves[model][shape]`` and
        ``evidence[shape]`` the smallest size reaching ``threshold`` at each contrast (None
        where none does), in the grid's contrast order; ``relative_curves[model][shape]`` the
        same read of mean ``r`` / mean ``r₀`` (the share of the data's evidence the model shows;
        cells with mean ``r₀`` below 0.01 carry none and never count).
    """
    draws = grid.draws
    labels = [v for v in samples.volumes for _ in range(draws)]
    rows: list[dict] = []
    means: dict[tuple[str, str], dict] = {}
    for m, model in enumerate(samples.models):
        for c, cell in enumerate(samples.cells):
            r = samples.r[m, :, c, :].reshape(-1)
            r0 = samples.r0[m, :, c, :].reshape(-1)
            finite = np.isfinite(r) & np.isfinite(r0)
            hits = samples.hit[m, :, c, :].reshape(-1)[finite].tolist()
            kept = [v for v, ok in zip(labels, finite.tolist(), strict=True) if ok]
            rate = clustered_rate(hits, kept)
            r_stat = clustered_mean(r[finite].tolist(), kept)
            r0_stat = clustered_mean(r0[finite].tolist(), kept)
            rows.append(
                {
                    "model": model,
                    "shape": cell.shape,
                    "size": cell.size,
                    "contrast": cell.contrast,
                    "n": int(finite.sum()),
                    "clusters": r_stat["clusters"],
                    "r": r_stat,
                    "r0": r0_stat,
                    "erasure": {k: rate[k] for k in ("value", "low", "high", "count", "total")}
                    | {"design_effect": rate["design_effect"]},
                }
            )
            means[(model, cell)] = {"r": r_stat["mean"], "r0": r0_stat["mean"]}

    def curve(model: str, shape: str, q: str) -> list:
        sizes = grid.sizes_of(shape)
        return [
            smallest_recovered(
                sizes, [means[(model, Cell(shape, z, c))][q] for z in sizes], threshold
            )
            for c in grid.contrasts
        ]

    def relative(model: str, shape: str) -> list:
        # Mean r over mean r₀: the share of what the data carries that the model shows.
        sizes = grid.sizes_of(shape)
        ratios = {
            (z, c): _ratio(means[(model, Cell(shape, z, c))]) for z in sizes for c in grid.contrasts
        }
        return [
            smallest_recovered(sizes, [ratios[(z, c)] for z in sizes], threshold)
            for c in grid.contrasts
        ]

    first = samples.models[0] if samples.models else None
    return {
        "models": list(samples.models),
        "volumes": len(set(samples.volumes)),
        "slices": len(samples.slices),
        "cells": rows,
        "curves": {m: {s: curve(m, s, "r") for s in grid.shapes} for m in samples.models},
        # r₀ does not depend on the model (same features, same data and masks): one curve.
        "evidence": {s: curve(first, s, "r0") for s in grid.shapes} if first else {},
        "relative_curves": {m: {s: relative(m, s) for s in grid.shapes} for m in samples.models},
    }


def _ratio(mean: Mapping[str, float | None]) -> float | None:
    """Mean ``r`` over mean ``r₀`` (None when ``r₀`` is missing or below 0.01: no evidence)."""
    r, r0 = mean["r"], mean["r0"]
    if r is None or r0 is None or not math.isfinite(r0) or r0 < 0.01:
        return None
    return r / r0


def recovery_map(
    models: Sequence[tuple[str, Reconstructor]],
    dataset,
    *,
    mask_func: MaskFunc,
    shapes: Sequence[str] = DEFAULT_SHAPES,
    sizes: Mapping[str, Sequence[float]] | None = None,
    contrasts: Sequence[float] = DEFAULT_CONTRASTS,
    draws: int = DEFAULT_DRAWS,
    width: float = 1.0,
    seed: int = 0,
    margin: float = 0.1,
    threshold: float = RECOVERED,
    batch_size: int = 16,
    window: float = 0.375,
    insert_mode: str = "phase",
    on_batch: Callable[[int, int, float], None] | None = None,
) -> dict[str, Any]:
    """The feature-recovery map of ``models`` on ``dataset``, as plain data.

    Args:
        models: ``(name, estimator)`` pairs, names unique.
        dataset: slices (``SliceSample`` items).
        mask_func: the mask function (per-volume masks seeded from the volume name).
        shapes, sizes, contrasts, draws, width: the grid (see :meth:`MapGrid.make`).
        seed: the seed of every placement.
        margin: ``δ`` of the erasure criterion (a hit when ``min(r₀ − r, r₀) >= δ``).
        threshold: the mean ``r`` that counts as recovered (0.5).
        batch_size: features per model batch (the numbers do not depend on it).
        window: centred window (fraction of each side) features are placed in.
        insert_mode: ``phase`` or ``magnitude``.
        on_batch: progress callback (slices done, total, seconds elapsed).

    Returns:
        :func:`summarize_map`'s dict plus ``grid`` (:meth:`MapGrid.to_dict` with ``seed``,
        ``margin``, ``threshold``, ``window``, ``insert``) and ``features_scored`` and
        ``elapsed_seconds``; the report's map section renders from it alone.

    Raises:
        ValueError: a bad grid value; ModelError: a model failed on some slice.
    """
    grid = MapGrid.make(shapes, sizes, contrasts, draws, width)
    started = time.perf_counter()
    samples = score_map(
        models,
        dataset,
        grid,
        mask_func=mask_func,
        seed=seed,
        margin=margin,
        batch_size=batch_size,
        window=window,
        insert_mode=insert_mode,
        on_batch=on_batch,
    )
    section = summarize_map(samples, grid, threshold=threshold)
    section["grid"] = grid.to_dict() | {
        "seed": int(seed),
        "margin": float(margin),
        "threshold": float(threshold),
        "window": float(window),
        "insert": insert_mode,
    }
    section["features_scored"] = int(samples.r.size)
    section["elapsed_seconds"] = time.perf_counter() - started
    return section
