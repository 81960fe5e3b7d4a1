"""``fnaf-rs``: random search, the FNAF paper's attack."""

from __future__ import annotations

import torch

from mri_audit.fnaf.attack import FnafAttack
from mri_audit.fnaf.engine import FnafEngine, Scores
from mri_audit.fnaf.features import FeatureBatch, SliceContext


def candidate_grid(ctx: SliceContext, count: int, first: int = 0):
    """Slice index and candidate number of ``count`` candidates per slice.

    Shape:
        returns two ``(B * count,)`` int64 tensors.
    """
    device = ctx.kspace.device
    slice_index = torch.arange(ctx.num_slices, device=device).repeat_interleave(count)
    candidate = torch.arange(first, first + count, device=device).repeat(ctx.num_slices)
    return slice_index, candidate


class RandomSearch(FnafAttack):
    """Random search: draw ``candidates`` random features per slice, keep the best.

    The features are the attack's ``feature`` shape (a random walk by default; a disk or a line,
    see :mod:`mri_audit.fnaf.shapes`), keyed by (seed, volume, slice, candidate).

    The criterion's best admissible candidate is selected by :meth:`FnafAttack.attack`; the
    candidates themselves do not depend on the criterion.
    """

    name = "fnaf-rs"
    budget_unit = "candidates"  # candidate k is the k-th draw: the budget curve is exact

    def _search(self, ctx: SliceContext, engine: FnafEngine) -> tuple[FeatureBatch, Scores]:
        # The same search with the same settings on the same slices is done once per engine
        # (the candidates and their quantities do not depend on the criterion).
        shape = repr((self.feature, self.feature_size, self.feature_width, self.feature_contrast))
        key = ("fnaf-rs", self.seed, self.candidates, self.walk_steps, shape, ctx.window)
        memo = engine.memo(ctx)
        if key not in memo:
            slice_index, candidate = candidate_grid(ctx, self.candidates)
            features = self.draw(ctx, slice_index, candidate)
            memo[key] = (features, engine.evaluate(ctx, features))
        return memo[key]
