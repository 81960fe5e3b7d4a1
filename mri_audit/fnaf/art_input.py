"""ART-style input: fully-sampled k-space as a real view, turned into a :class:`SliceContext`.

Shared by the ``generate`` methods of the FNAF and degradation attacks (ART's numpy-in,
numpy-out contract; torch tensors pass through on their device).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mri_audit.fnaf.features import SliceContext, prepare_context
from mri_audit.models.estimator import Reconstructor
from mri_audit.mri.physics import Mask, make_mask_func

__all__ = ["context_from_x", "insert_worst"]


def context_from_x(
    estimator: Reconstructor,
    x,
    *,
    mask=None,
    volumes=None,
    slices=None,
    window: float | Sequence[int] = 0.375,
    insert_mode: str = "phase",
) -> tuple[SliceContext, bool]:
    """The :class:`SliceContext` of ART-style input (fully-sampled k-space as a real view).

    Returns:
        the context, and whether ``x`` was a numpy array.

    Shape:
        x: ``(B, coils, H, W, 2)``.
    """
    is_numpy = isinstance(x, np.ndarray)
    xt = torch.as_tensor(x, device=estimator.device, dtype=torch.float32)
    if xt.ndim != 5 or xt.shape[-1] != 2:
        raise ValueError(f"x must be k-space (B, coils, H, W, 2), got {tuple(xt.shape)}")
    kspace = torch.view_as_complex(xt.contiguous())
    b = kspace.shape[0]
    volumes = list(volumes) if volumes is not None else [f"x{i}" for i in range(b)]
    slices = list(slices) if slices is not None else [0] * b
    ctx = prepare_context(
        kspace,
        target_shape=estimator.target_shape,
        volumes=volumes,
        slices=slices,
        mask_for=_mask_source(estimator, mask, volumes),
        window=window,
        insert_mode=insert_mode,
    )
    return ctx, is_numpy


def _mask_source(estimator: Reconstructor, mask, volumes):
    fixed = mask if mask is not None else estimator.fixed_mask
    if fixed is not None:
        cols = np.asarray(torch.as_tensor(fixed).cpu(), dtype=bool)
        if cols.ndim == 1:
            cols = np.broadcast_to(cols, (len(volumes), cols.shape[0]))
        by_volume = dict(zip(volumes, cols, strict=True))

        def mask_for(volume: str, num_cols: int) -> Mask:
            c = by_volume[volume]
            if c.shape[0] != num_cols:
                raise ValueError(f"mask has {c.shape[0]} columns, k-space has {num_cols}")
            return Mask(c.copy(), 0)

        return mask_for
    func = make_mask_func("random", 4)

    def seeded(volume: str, num_cols: int) -> Mask:
        return func(num_cols, seed=tuple(map(ord, volume)))

    return seeded


def insert_worst(attack, x, *, mask=None, volumes=None, slices=None, **kwargs):
    """:meth:`FnafAttack.generate`'s work: ``x`` with ``attack``'s worst admissible feature
    inserted into each slice (nothing where none was found); the result is kept in
    ``attack.last_result``.

    Shape:
        x: ``(B, coils, H, W, 2)``; returns the same.
    """
    from mri_audit.fnaf.features import INSERT_MODES, insert, paint

    ctx, is_numpy = context_from_x(
        attack.estimator,
        x,
        mask=mask,
        volumes=volumes,
        slices=slices,
        window=attack.window,
        insert_mode=kwargs.get("insert_mode", INSERT_MODES[0]),
    )
    result = attack.attack(ctx)
    attack.last_result = result
    d, _ = paint(result.features, ctx.target_shape)
    d = d * result.found[:, None, None]
    adv, _ = insert(ctx, torch.arange(ctx.num_slices, device=d.device), d)
    out = torch.view_as_real(adv)
    return out.cpu().numpy() if is_numpy else out
