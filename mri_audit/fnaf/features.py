"""FNAF features: random-walk generation, painting, insertion into k-space, replay encoding.

A feature is a random walk of ``n`` steps inside a window of the target (DESIGN §4): each step
writes an intensity drawn from ``U[min t, max t]`` of that slice into the current pixel, then moves
one pixel up, down, left or right, clipped to the window. It is stored compactly as the visited
pixels and their intensities (:class:`FeatureBatch`), so it replays exactly on another model.

Insertion (``phase`` mode) adds the feature to the complex image with the local phase, weighted
per coil by ``x_c / rss(x)``, on the full k-space grid: ``x'_c = x_c + d * x_c / rss(x)``, so the
RSS magnitude grows by exactly ``d``. ``magnitude`` mode reproduces the reference implementation:
the slice is replaced by its cropped magnitude target (phase discarded) and FFT'd on that grid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from mri_audit import rng
from mri_audit.fnaf.window import Window, make_window
from mri_audit.mri.operator import SamplingOperator
from mri_audit.mri.physics import Mask, center_crop, fft2c, ifft2c, mask_to_tensor, rss

__all__ = [
    "INSERT_MODES",
    "Window",
    "make_window",
    "SliceContext",
    "prepare_context",
    "FeatureBatch",
    "random_walks",
    "paint",
    "insert",
    "encode_features",
    "decode_features",
]

INSERT_MODES = ("phase", "magnitude")
# Draw numbers of the random walk (fixed so a replay never depends on the batch).
_DRAW_ROW, _DRAW_COL, _DRAW_STEPS, _DRAW_WALK = 0, 1, 2, 16


class SliceContext(NamedTuple):
    """Everything the attacks need about a batch of fully-sampled slices, on one device.

    Shape:
        kspace, image, sens: ``(B, coils, H, W)`` complex; mask: ``(B, 1, 1, W)`` bool;
        target, zero_filled: ``(B, h, w)``; per-slice statistics: ``(B,)``.
    """

    kspace: torch.Tensor
    image: torch.Tensor
    sens: torch.Tensor
    mask: torch.Tensor
    num_low_frequencies: int | None
    target: torch.Tensor
    t_min: torch.Tensor
    t_max: torch.Tensor
    t_mean: torch.Tensor
    t_std: torch.Tensor
    zero_filled: torch.Tensor
    zf_mean: torch.Tensor
    zf_std: torch.Tensor
    volumes: tuple[str, ...]
    volume_keys: torch.Tensor
    slices: torch.Tensor
    window: Window
    data_range: torch.Tensor

    @property
    def target_shape(self) -> tuple[int, int]:
        return (int(self.target.shape[-2]), int(self.target.shape[-1]))

    @property
    def crop_offset(self) -> tuple[int, int]:
        return (
            (self.kspace.shape[-2] - self.target.shape[-2]) // 2,
            (self.kspace.shape[-1] - self.target.shape[-1]) // 2,
        )

    @property
    def num_slices(self) -> int:
        return int(self.kspace.shape[0])


def prepare_context(
    kspace: torch.Tensor,
    *,
    target_shape: Sequence[int],
    volumes: Sequence[str],
    slices: Sequence[int],
    mask_for: Callable[[str, int], Mask],
    window: float | Sequence[int] = 0.375,
    insert_mode: str = "phase",
    data_range: torch.Tensor | None = None,
) -> SliceContext:
    """Build the :class:`SliceContext` of a batch of fully-sampled slices.

    Args:
        kspace: fully-sampled k-space.
        target_shape: ``(h, w)`` reconstructions are cropped to.
        volumes: file name of each slice's volume (mask seed and random-draw key).
        slices: slice index of each slice in its volume.
        mask_for: ``(volume, num_columns) -> Mask``; one mask per volume (fastMRI's seeding).
        window: window spec, see :func:`make_window`.
        insert_mode: ``phase`` (default) or ``magnitude`` (reference implementation).
        data_range: per-slice SSIM/PSNR data range, the volume's target maximum (fastMRI);
            defaults to each slice's own maximum.

    Shape:
        kspace: ``(B, coils, H, W)`` complex.
    """
    if kspace.ndim != 4 or not kspace.is_complex():
        raise ValueError(f"k-space must be complex (B, coils, H, W), got {tuple(kspace.shape)}")
    if insert_mode not in INSERT_MODES:
        raise ValueError(f"insert mode must be one of {INSERT_MODES}, got {insert_mode!r}")
    if len(volumes) != kspace.shape[0] or len(slices) != kspace.shape[0]:
        raise ValueError("give one volume name and slice index per k-space slice")
    image = ifft2c(kspace)
    magnitude = rss(image, dim=1)
    target = center_crop(magnitude, target_shape)
    if insert_mode == "magnitude":
        image = target.unsqueeze(1).to(kspace.dtype)
        kspace = fft2c(image)
        magnitude = target
    coils = image.shape[1]
    sens = torch.where(
        magnitude.unsqueeze(1) > 0,
        image / magnitude.unsqueeze(1).clamp_min(torch.finfo(magnitude.dtype).tiny),
        torch.full_like(image, coils**-0.5),
    )
    masks = [mask_for(v, kspace.shape[-1]) for v in volumes]
    nlf = {m.num_low_frequencies for m in masks}
    mask = torch.stack([mask_to_tensor(m.columns, device=kspace.device)[0] for m in masks])
    zf = SamplingOperator(crop=target_shape).magnitude(kspace * mask)
    flat_t, flat_z = target.flatten(1), zf.flatten(1)
    device = kspace.device
    return SliceContext(
        kspace=kspace,
        image=image,
        sens=sens,
        mask=mask,
        num_low_frequencies=nlf.pop() if len(nlf) == 1 else None,
        target=target,
        t_min=flat_t.amin(1),
        t_max=flat_t.amax(1),
        t_mean=flat_t.mean(1),
        t_std=flat_t.std(1).clamp_min(1e-12),
        zero_filled=zf,
        zf_mean=flat_z.mean(1),
        zf_std=flat_z.std(1).clamp_min(1e-12),
        volumes=tuple(volumes),
        volume_keys=torch.tensor([rng.volume_key(v) for v in volumes], device=device),
        slices=torch.as_tensor(list(slices), dtype=torch.int64, device=device),
        window=make_window(target_shape, window),
        data_range=(flat_t.amax(1) if data_range is None else data_range.to(device, flat_t.dtype)),
    )


class FeatureBatch(NamedTuple):
    """A batch of features, each the pixels it writes (in order) and their intensities.

    Later writes to a pixel replace earlier ones, as in the walk. ``valid`` marks the pixels that
    belong to the feature (ragged walks, clipped shapes); the others hold an in-image position.

    Shape:
        rows, cols: ``(N, n)`` int64 target coordinates; values: ``(N, n)`` float;
        valid: ``(N, n)`` bool; slice_index: ``(N,)`` index into the :class:`SliceContext`.
    """

    rows: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor
    valid: torch.Tensor
    slice_index: torch.Tensor

    @property
    def count(self) -> int:
        """Number of features in the batch."""
        return int(self.rows.shape[0])

    def take(self, index: torch.Tensor) -> FeatureBatch:
        """The features at ``index`` (a LongTensor or bool mask over the batch)."""
        return FeatureBatch(*(t[index] for t in self))

    @staticmethod
    def cat(parts: Sequence[FeatureBatch]) -> FeatureBatch:
        """Concatenate batches, padding shorter walks with invalid steps."""
        n = max(p.rows.shape[1] for p in parts)

        def pad(t: torch.Tensor, fill) -> torch.Tensor:
            extra = n - t.shape[1]
            if extra == 0:
                return t
            return torch.cat([t, t.new_full((t.shape[0], extra), fill)], dim=1)

        return FeatureBatch(
            torch.cat([pad(p.rows, 0) for p in parts]),
            torch.cat([pad(p.cols, 0) for p in parts]),
            torch.cat([pad(p.values, 0) for p in parts]),
            torch.cat([pad(p.valid, False) for p in parts]),
            torch.cat([p.slice_index for p in parts]),
        )

    def shifted(self, drow: torch.Tensor, dcol: torch.Tensor) -> FeatureBatch:
        """The same shapes and intensities moved by ``(drow, dcol)`` pixels (``(N,)`` each)."""
        return self._replace(rows=self.rows + drow[:, None], cols=self.cols + dcol[:, None])


def random_walks(
    ctx: SliceContext,
    slice_index: torch.Tensor,
    candidate: torch.Tensor,
    *,
    steps: int | tuple[int, int] = 10,
    seed: int = 0,
) -> FeatureBatch:
    """Draw random-walk features; candidate ``c`` of slice ``s`` depends only on (seed, s, c).

    Args:
        ctx: the slices.
        slice_index: which slice of ``ctx`` each feature belongs to.
        candidate: candidate number of each feature within its slice.
        steps: walk length, or an inclusive ``(low, high)`` range drawn per candidate.
        seed: the audit seed.

    Shape:
        slice_index, candidate: ``(N,)``; returns a batch of ``N`` walks of ``max steps``.
    """
    device = ctx.kspace.device
    slice_index = slice_index.to(device)
    keys = rng.candidate_keys(
        seed, ctx.volume_keys[slice_index], ctx.slices[slice_index], candidate.to(device)
    )
    low, high = (steps, steps) if isinstance(steps, int) else (int(steps[0]), int(steps[1]))
    if not 1 <= low <= high:
        raise ValueError(f"feature steps must be >= 1 (got {steps})")
    n_steps = low + rng.randint(keys, _DRAW_STEPS, high - low + 1)
    win = ctx.window
    row = win.top + rng.randint(keys, _DRAW_ROW, win.height)
    col = win.left + rng.randint(keys, _DRAW_COL, win.width)
    lo, span = ctx.t_min[slice_index], ctx.t_max[slice_index] - ctx.t_min[slice_index]
    d_row = torch.tensor([-1, 1, 0, 0], device=device)
    d_col = torch.tensor([0, 0, -1, 1], device=device)
    rows, cols, values = [], [], []
    for i in range(high):
        rows.append(row)
        cols.append(col)
        values.append(lo + rng.uniform(keys, _DRAW_WALK + 2 * i, lo.dtype) * span)
        move = rng.randint(keys, _DRAW_WALK + 2 * i + 1, 4)
        row = (row + d_row[move]).clamp(win.top, win.top + win.height - 1)
        col = (col + d_col[move]).clamp(win.left, win.left + win.width - 1)
    valid = torch.arange(high, device=device)[None, :] < n_steps[:, None]
    return FeatureBatch(
        torch.stack(rows, 1), torch.stack(cols, 1), torch.stack(values, 1), valid, slice_index
    )


def paint(features: FeatureBatch, shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Render features to images (differentiable with respect to ``features.values``).

    Returns:
        ``(d, support)``: the feature intensities and the visited pixels ``S``.

    Shape:
        returns ``(N, h, w)`` float and ``(N, h, w)`` bool.
    """
    h, w = int(shape[0]), int(shape[1])
    n = features.count
    lin = features.rows * w + features.cols
    valid = features.valid
    # A pixel keeps the value of the last valid step that wrote it: per pixel, the largest valid
    # step index (-1: none), then each step is kept when it is its pixel's last (O(n) per feature).
    step = torch.arange(lin.shape[1], device=lin.device, dtype=torch.int32).expand_as(lin)
    step = torch.where(valid, step, -1)
    last = torch.full((n, h * w), -1, dtype=torch.int32, device=lin.device)
    last = last.scatter_reduce(1, lin, step, reduce="amax", include_self=True)
    keep = valid & (last.gather(1, lin) == step)
    values = torch.where(keep, features.values, torch.zeros_like(features.values))
    d = features.values.new_zeros(n, h * w).scatter_add(1, lin, values)
    support = last >= 0
    return d.view(n, h, w), support.view(n, h, w)


def insert(
    ctx: SliceContext, slice_index: torch.Tensor, d: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Add features to their slices' images and return the k-space and the target they give.

    Returns:
        ``(kspace, target)``: fully-sampled k-space with the feature, and the cropped RSS
        magnitude of the featured image (the ground truth a reconstruction is scored against).

    Shape:
        slice_index: ``(N,)``; d: ``(N, h, w)``; returns ``(N, coils, H, W)`` complex and
        ``(N, h, w)``.
    """
    top, left = ctx.crop_offset
    h, w = ctx.target_shape
    image = ctx.image[slice_index].clone()
    sens = ctx.sens[slice_index, :, top : top + h, left : left + w]
    image[..., top : top + h, left : left + w] += d.unsqueeze(1).to(sens.dtype) * sens
    target = rss(image[..., top : top + h, left : left + w], dim=1)
    return fft2c(image), target


def encode_features(features: FeatureBatch) -> list[dict[str, list]]:
    """Compact, exactly replayable plain-data form of each feature (one host transfer)."""
    rows, cols = features.rows.tolist(), features.cols.tolist()
    values, valid = features.values.tolist(), features.valid.tolist()
    out = []
    for r, c, v, ok in zip(rows, cols, values, valid, strict=True):
        # By the mask, not a prefix: a clipped shape or a grown support has gaps.
        keep = [i for i, k in enumerate(ok) if k]
        out.append(
            {
                "rows": [r[i] for i in keep],
                "cols": [c[i] for i in keep],
                "values": [v[i] for i in keep],
            }
        )
    return out


def decode_features(
    encoded: Sequence[dict[str, list]], slice_index: Sequence[int], *, device=None
) -> FeatureBatch:
    """Rebuild a :class:`FeatureBatch` from :func:`encode_features` output."""
    n = max((len(e["rows"]) for e in encoded), default=1)
    rows = torch.zeros(len(encoded), n, dtype=torch.int64)
    cols = torch.zeros_like(rows)
    values = torch.zeros(len(encoded), n, dtype=torch.float32)
    valid = torch.zeros(len(encoded), n, dtype=torch.bool)
    for i, e in enumerate(encoded):
        k = len(e["rows"])
        rows[i, :k] = torch.tensor(e["rows"], dtype=torch.int64)
        cols[i, :k] = torch.tensor(e["cols"], dtype=torch.int64)
        values[i, :k] = torch.tensor(e["values"], dtype=torch.float32)
        valid[i, :k] = True
    batch = FeatureBatch(rows, cols, values, valid, torch.as_tensor(list(slice_index)))
    return FeatureBatch(*(t.to(device) for t in batch))
