"""``fnaf-fd``: finite-difference ascent on the feature's location."""

from __future__ import annotations

import numbers

import torch

from attacks.random_search import candidate_grid
from mri_audit.attack import FnafAttack
from mri_audit.engine import FnafEngine, Scores
from mri_audit.features import FeatureBatch, SliceContext, random_walks


class FiniteDifference(FnafAttack):
    """Move a fixed feature (shape and intensities per restart) toward higher loss.

    Each iteration probes ``±h`` pixels along rows and columns (central differences), then steps
    ``step`` pixels toward higher loss on each axis, clipped so the feature stays in the window.
    Every evaluated position counts against the same budget as ``fnaf-rs`` (``candidates``).

    Args:
        restarts: independent starting features per slice.
        h: probe distance in pixels.
        step: pixels moved per iteration along each axis.
    """

    name = "fnaf-fd"
    attack_params = FnafAttack.attack_params + ["restarts", "h", "step"]

    def __init__(self, estimator, *, restarts: int = 1, h: int = 2, step: int = 3, **kwargs):
        self.restarts, self.h, self.step = restarts, h, step
        super().__init__(estimator, **kwargs)

    def _check_params(self) -> None:
        super()._check_params()
        for name in ("restarts", "h", "step"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.candidates < self.restarts:
            raise ValueError("the budget (candidates) must cover one evaluation per restart")

    def _shift_range(self, ctx: SliceContext, f: FeatureBatch):
        win = ctx.window
        big = torch.iinfo(torch.int64).max
        rows_lo = torch.where(f.valid, f.rows, big).amin(1)
        cols_lo = torch.where(f.valid, f.cols, big).amin(1)
        rows_hi = torch.where(f.valid, f.rows, -1).amax(1)
        cols_hi = torch.where(f.valid, f.cols, -1).amax(1)
        return (
            (win.top - rows_lo, win.top + win.height - 1 - rows_hi),
            (win.left - cols_lo, win.left + win.width - 1 - cols_hi),
        )

    def _search(self, ctx: SliceContext, engine: FnafEngine) -> tuple[FeatureBatch, Scores]:
        slice_index, candidate = candidate_grid(ctx, self.restarts)
        base = random_walks(ctx, slice_index, candidate, steps=self.walk_steps, seed=self.seed)
        (r_lo, r_hi), (c_lo, c_hi) = self._shift_range(ctx, base)
        zero = torch.zeros_like(slice_index)
        dr, dc = zero.clone(), zero.clone()
        current = engine.evaluate(ctx, base)
        all_features, all_scores = [base], [current]
        budget = self.candidates // self.restarts - 1
        n = base.count
        while budget >= 5:
            h = self.h
            probes_r = torch.cat([(dr + h).clamp(r_lo, r_hi), (dr - h).clamp(r_lo, r_hi), dr, dr])
            probes_c = torch.cat([dc, dc, (dc + h).clamp(c_lo, c_hi), (dc - h).clamp(c_lo, c_hi)])
            reps = base.take(torch.arange(n, device=dr.device).repeat(4))
            probe_features = reps.shifted(probes_r, probes_c)
            probe = engine.evaluate(ctx, probe_features)
            here = current.loss.nan_to_num(-1.0)
            up, down, right, left = probe.loss.nan_to_num(-1.0).view(4, n).unbind(0)
            grad_r = (up - down) / (probes_r[:n] - probes_r[n : 2 * n]).clamp_min(1)
            grad_c = (right - left) / (probes_c[2 * n : 3 * n] - probes_c[3 * n :]).clamp_min(1)
            # Where both probes were rejected, stay; otherwise step toward the higher loss.
            grad_r = torch.where((up < 0) & (down < 0), torch.zeros_like(here), grad_r)
            grad_c = torch.where((right < 0) & (left < 0), torch.zeros_like(here), grad_c)
            dr = (dr + self.step * torch.sign(grad_r).long()).clamp(r_lo, r_hi)
            dc = (dc + self.step * torch.sign(grad_c).long()).clamp(c_lo, c_hi)
            moved = base.shifted(dr, dc)
            current = engine.evaluate(ctx, moved)
            all_features += [probe_features, moved]
            all_scores += [probe, current]
            budget -= 5
        features = FeatureBatch.cat(all_features)
        return features, Scores.cat(all_scores)
