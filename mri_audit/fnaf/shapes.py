"""Feature shapes behind the feature interface: the random walk, a soft disk and a soft line.

Every shape is a :class:`~mri_audit.fnaf.features.FeatureBatch` (the pixels it writes and their
intensities), so painting, insertion, the engine, the attacks and exact replay
(:func:`~mri_audit.fnaf.features.encode_features`) work unchanged for all of them.

* ``walk``: the paper's random walk (:func:`~mri_audit.fnaf.features.random_walks`); ``size`` is its
  number of steps.
* ``disk``: a disk of radius ``R = size`` pixels centred on a pixel ``(r0, c0)`` of the window.
  A pixel at distance ``ρ = √((r - r0)² + (c - c0)²)`` (pixel centres) has weight
  ``clamp(R + 1/2 - ρ, 0, 1)``: 1 up to ``R - 1/2``, falling linearly to 0 at ``R + 1/2``.
* ``line``: a segment of length ``ℓ = size`` and width ``w = width`` through a window pixel
  ``(r0, c0)`` at an angle ``θ`` in ``[0, π)``, counter-clockwise from the column axis as the
  image is displayed (row 0 at the top): unit direction ``(Δrow, Δcol) = (-sin θ, cos θ)``. A pixel
  with offset ``(a, b)`` lies ``u = -a sin θ + b cos θ`` along the segment and
  ``v = a cos θ + b sin θ`` across it, and has weight
  ``clamp(w/2 + 1/2 - |v|, 0, 1) · clamp(ℓ/2 + 1/2 - |u|, 0, 1)``: the same one-pixel linear
  edge across the width and at the ends, so the weights sum to about ``ℓ · w``.

A disk or line pixel's intensity is ``contrast · (max t - min t) · weight`` of its slice
(``contrast`` 1 when not given); every pixel with weight > 0 inside the target is in the feature,
once, the centre first (so :meth:`FeatureBatch.shifted` by the first pixel moves the centre).
A feature may be clipped by the image's edge; its centre is always in the window.

Keyed draws (:mod:`mri_audit.rng`, keyed by (seed, volume, slice, candidate)), distinct from the
walk's (0, 1, 2 and 16 on): 3 the centre's row, 4 its column, 5 the line's angle, 6 the size when
it is a ``(low, high)`` range. A feature therefore never depends on the batch it is drawn in.
"""

from __future__ import annotations

import math
import numbers

import torch

from mri_audit import rng
from mri_audit.fnaf.features import FeatureBatch, SliceContext, random_walks

__all__ = ["SHAPES", "DEFAULT_SIZE", "check_shape", "draw_features"]

SHAPES = ("walk", "disk", "line")
DEFAULT_SIZE: dict[str, int | float] = {"walk": 10, "disk": 3.0, "line": 10.0}
"""Default ``size`` of each shape: walk steps, disk radius, line length (pixels)."""
_DRAW_CENTRE_ROW, _DRAW_CENTRE_COL, _DRAW_ANGLE, _DRAW_SIZE = 3, 4, 5, 6

SizeSpec = float | int | tuple | torch.Tensor


def _per_feature(
    name: str, value, n: int, device, *, integral: bool = False, upper: float | None = None
) -> torch.Tensor | None:
    """``value`` (a number or ``(n,)`` tensor) as an ``(n,)`` tensor, checked > 0 (<= upper).

    Float64, or int64 with ``integral`` (whole numbers, 10.0 too); None stays None.
    """
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        t = value.to(device)
        if t.ndim == 0:
            t = t.expand(n)
        if t.shape != (n,):
            raise ValueError(
                f"{name} must be a number or one per feature ({n}), got {tuple(t.shape)}"
            )
        if integral and t.is_floating_point() and n and not bool((t == t.round()).all()):
            raise ValueError(f"{name} must be whole numbers")
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        if integral and not float(value).is_integer():
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        t = torch.full((n,), value, device=device)
    else:
        raise ValueError(f"{name} must be a number or a tensor, got {value!r}")
    t = t.to(torch.int64 if integral else torch.float64)
    ok = (t >= 1) if integral else (t > 0) & torch.isfinite(t)
    if upper is not None:
        ok &= t <= upper
    if n and not bool(ok.all()):
        bound = f"in (0, {upper:g}]" if upper is not None else (">= 1" if integral else "> 0")
        raise ValueError(f"every {name} must be {bound}")
    return t


def _range(size) -> tuple[float, float] | None:
    """``(low, high)`` of a range size, else None."""
    if isinstance(size, (tuple, list)):
        if len(size) != 2 or not all(isinstance(s, numbers.Real) for s in size):
            raise ValueError(f"a size range must be (low, high), got {size!r}")
        low, high = size
        if not 0 < low <= high or not math.isfinite(high):
            raise ValueError(f"a size range needs 0 < low <= high, got {size!r}")
        return low, high
    return None


def check_shape(
    shape: str,
    *,
    size: SizeSpec | None = None,
    contrast: float | torch.Tensor | None = None,
    width: float | torch.Tensor = 1.0,
) -> None:
    """Raise ``ValueError`` unless :func:`draw_features` takes these settings.

    Numbers and ranges are checked here; tensors (one value per feature) when drawn.
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown feature shape {shape!r}; choose one of {', '.join(SHAPES)}")
    walk = shape == "walk"
    if not isinstance(size, torch.Tensor) and size is not None:
        span = _range(size)
        if span is None:
            _per_feature(f"{shape} size", size, 1, "cpu", integral=walk)
        elif walk and not all(float(v).is_integer() for v in span):
            raise ValueError(f"walk steps must be whole numbers, got {size!r}")
    if not isinstance(contrast, torch.Tensor):
        _per_feature("contrast", contrast, 1, "cpu", upper=1.0)
    if not isinstance(width, torch.Tensor):
        _per_feature("line width", width, 1, "cpu")


def _walk(ctx, slice_index, candidate, size, contrast, seed) -> FeatureBatch:
    n = slice_index.numel()
    span = _range(size)
    if span is not None:
        steps = (int(span[0]), int(span[1]))
        f = random_walks(ctx, slice_index, candidate, steps=steps, seed=seed)
    else:
        steps = _per_feature("walk steps", size, n, slice_index.device, integral=True)
        longest = int(steps.max()) if n else 1
        f = random_walks(ctx, slice_index, candidate, steps=longest, seed=seed)
        steps_index = torch.arange(longest, device=steps.device)
        f = f._replace(valid=f.valid & (steps_index[None, :] < steps[:, None]))
    if contrast is not None:
        amp = contrast * (ctx.t_max - ctx.t_min)[slice_index].double()
        f = f._replace(values=amp.to(f.values.dtype)[:, None].expand_as(f.values).contiguous())
    return f


def _offsets(reach: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer offsets ``(a, b)`` with ``a² + b² < reach²``, centre first, by distance.

    Shape:
        returns two ``(K,)`` int64 tensors.
    """
    m = max(0, math.ceil(reach))
    a, b = torch.meshgrid(torch.arange(-m, m + 1), torch.arange(-m, m + 1), indexing="ij")
    a, b = a.flatten(), b.flatten()
    r2 = a * a + b * b
    keep = r2.double() < reach * reach
    a, b, r2 = a[keep], b[keep], r2[keep]
    # Lexicographic (distance, row, column): the centre comes first.
    order = torch.argsort(r2 * (4 * m + 3) ** 2 + (a + m) * (4 * m + 3) + (b + m))
    return a[order].to(device), b[order].to(device)


def _ramp(distance: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    """1 up to ``half - 1/2``, linear to 0 at ``half + 1/2``."""
    return (half + 0.5 - distance).clamp(0.0, 1.0)


def draw_features(
    ctx: SliceContext,
    slice_index: torch.Tensor,
    candidate: torch.Tensor,
    *,
    shape: str = "walk",
    size: SizeSpec | None = None,
    contrast: float | torch.Tensor | None = None,
    width: float | torch.Tensor = 1.0,
    seed: int = 0,
) -> FeatureBatch:
    """Draw features of one shape; candidate ``c`` of slice ``s`` depends only on (seed, s, c).

    Args:
        ctx: the slices.
        slice_index: which slice of ``ctx`` each feature belongs to.
        candidate: candidate number of each feature within its slice (the random-draw key).
        shape: ``walk`` (default), ``disk`` or ``line`` (see the module's docstring).
        size: walk steps (whole number, inclusive ``(low, high)`` range or ``(N,)`` tensor), disk
            radius or line length in pixels (number > 0, ``(low, high)`` range drawn uniformly
            per candidate, or ``(N,)`` tensor). None: :data:`DEFAULT_SIZE` of the shape.
        contrast: intensity as a fraction in ``(0, 1]`` of each slice's ``max t - min t``, a
            number or one per feature. None: 1 for disk and line; the walk's own
            ``U[min t, max t]`` step intensities.
        width: the line's width in pixels (> 0, a number or one per feature); ignored otherwise.
        seed: the audit seed.

    Returns:
        ``N`` features; for disk and line the centre pixel first, the feature's pixels packed
        before any invalid slot (invalid slots hold the centre's position and intensity 0).

    Shape:
        slice_index, candidate: ``(N,)``; contrast, width, a tensor size: ``(N,)`` or scalars.
    """
    check_shape(shape, size=size, contrast=contrast, width=width)
    device = ctx.kspace.device
    slice_index, candidate = slice_index.to(device), candidate.to(device)
    n = slice_index.numel()
    size = DEFAULT_SIZE[shape] if size is None else size
    contrast = _per_feature("contrast", contrast, n, device, upper=1.0)
    if shape == "walk":
        return _walk(ctx, slice_index, candidate, size, contrast, seed)

    keys = rng.candidate_keys(
        seed, ctx.volume_keys[slice_index], ctx.slices[slice_index], candidate
    )
    span = _range(size)
    if span is not None:
        extent = torch.full((n,), float(span[0]), dtype=torch.float64, device=device)
        extent = extent + rng.uniform(keys, _DRAW_SIZE, torch.float64) * (span[1] - span[0])
        largest = float(span[1])
    else:
        extent = _per_feature(f"{shape} size", size, n, device)
        largest = float(extent.max()) if n else 1.0
    win = ctx.window
    row0 = win.top + rng.randint(keys, _DRAW_CENTRE_ROW, win.height)
    col0 = win.left + rng.randint(keys, _DRAW_CENTRE_COL, win.width)
    if shape == "disk":
        a, b = _offsets(largest + 0.5, device)
        rho = torch.sqrt((a * a + b * b).double())
        weight = _ramp(rho[None, :], extent[:, None])
    else:
        half_w = _per_feature("line width", width, n, device) / 2
        largest_w = float(half_w.max()) if n else 0.5
        a, b = _offsets(math.hypot(largest / 2 + 0.5, largest_w + 0.5), device)
        theta = math.pi * rng.uniform(keys, _DRAW_ANGLE, torch.float64)
        sin, cos = torch.sin(theta)[:, None], torch.cos(theta)[:, None]
        along = (b[None, :] * cos - a[None, :] * sin).abs()
        across = (a[None, :] * cos + b[None, :] * sin).abs()
        weight = _ramp(across, half_w[:, None]) * _ramp(along, extent[:, None] / 2)
    h, w = ctx.target_shape
    rows, cols = row0[:, None] + a[None, :], col0[:, None] + b[None, :]
    valid = (weight > 0) & (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    # Pack the feature's pixels first (stable: the centre stays first), drop all-invalid slots.
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)
    count = int(valid.sum(1).max()) if n else 1
    order = order[:, : max(count, 1)]
    valid = valid.gather(1, order)
    amp = (ctx.t_max - ctx.t_min)[slice_index].double()
    if contrast is not None:
        amp = amp * contrast
    values = torch.where(valid, amp[:, None] * weight.gather(1, order), 0.0)
    return FeatureBatch(
        torch.where(valid, rows.gather(1, order), row0[:, None]),
        torch.where(valid, cols.gather(1, order), col0[:, None]),
        values.to(ctx.t_min.dtype),
        valid,
        slice_index,
    )
