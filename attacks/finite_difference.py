"""``fnaf-fd``: the FNAF paper's finite-difference attack on the feature's location."""

from __future__ import annotations

import numbers

import torch

from mri_audit.fnaf.attack import FnafAttack
from mri_audit.fnaf.budget import BudgetTrace
from mri_audit.fnaf.engine import FnafEngine, Scores
from mri_audit.fnaf.features import FeatureBatch, SliceContext


class FiniteDifference(FnafAttack):
    """Move the feature's location along a finite-difference estimate of the score's gradient.

    Each of the ``candidates`` evaluations per slice draws a fresh feature of the attack's shape
    (a random walk with its own path and intensities by default; a disk, or a line at a fresh
    angle; keyed by (seed, volume, slice, candidate)) and places it with its first pixel (a
    walk's start, a disk's or line's centre) at a location: evaluation 0 at the feature's own
    random position; then, in a repeating cycle of three, a probe ``h`` pixels along the rows, a
    probe ``h`` pixels along the columns (each a forward difference of the criterion's score,
    rounded to its resolution, against the current location; towards the window's inside at its
    edge), and a move of ``step`` pixels along the sign of the estimated gradient on each axis.
    Every evaluation is a candidate for the final selection, so the budget equals ``fnaf-rs``'s
    and is spent whole: with ``restarts`` independent chains per slice, the budget is split
    between them as evenly as possible. The candidates are returned in candidate number (chain
    ``j``'s evaluation ``k`` is number ``k`` plus the budgets of the chains before it).

    Args:
        restarts: independent chains per slice (1 to ``candidates``).
        h: probe distance in pixels (default 5, as the reference code).
        step: pixels moved per step along each axis (default 5).
    """

    name = "fnaf-fd"
    budget_unit = "evaluations"  # the best of the first k evaluations, in the order made
    attack_params = FnafAttack.attack_params + ["restarts", "h", "step"]

    def __init__(self, estimator, *, restarts: int = 1, h: int = 5, step: int = 5, **kwargs):
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

    def budgets(self) -> list[int]:
        """Evaluations of each chain: ``candidates`` split as evenly as possible."""
        k, r = self.candidates, self.restarts
        return [k // r + (j < k % r) for j in range(r)]

    @staticmethod
    def _place(ctx: SliceContext, f: FeatureBatch, row: torch.Tensor, col: torch.Tensor):
        """``f`` moved so its first pixel is at ``(row, col)``, kept whole inside the window.

        A feature larger than the window is kept whole inside the target instead.
        """
        win = ctx.window
        h, w = ctx.target_shape
        big = torch.iinfo(torch.int64).max
        top = torch.where(f.valid, f.rows, big).amin(1)
        bottom = torch.where(f.valid, f.rows, -1).amax(1)
        left = torch.where(f.valid, f.cols, big).amin(1)
        right = torch.where(f.valid, f.cols, -1).amax(1)

        def shift(want, low, high, first, last, size):
            inside = torch.minimum(torch.maximum(want, low), high)
            return torch.minimum(torch.maximum(inside, -first), size - 1 - last)

        dr = shift(
            row - f.rows[:, 0], win.top - top, win.top + win.height - 1 - bottom, top, bottom, h
        )
        dc = shift(
            col - f.cols[:, 0], win.left - left, win.left + win.width - 1 - right, left, right, w
        )
        return f.shifted(dr, dc)

    def _search(self, ctx: SliceContext, engine: FnafEngine):
        device = ctx.kspace.device
        budgets = self.budgets()
        b, r = ctx.num_slices, self.restarts
        offsets = torch.tensor([sum(budgets[:j]) for j in range(r)], device=device)
        si = torch.arange(b, device=device).repeat_interleave(r)
        chain = torch.arange(r, device=device).repeat(b)
        budget = torch.tensor(budgets, device=device)[chain]
        first = offsets[chain]
        win = ctx.window
        r_max, c_max = win.top + win.height - 1, win.left + win.width - 1

        def draw(index: torch.Tensor, k: int, row=None, col=None) -> FeatureBatch:
            f = self.draw(ctx, si[index], first[index] + k)
            return f if row is None else self._place(ctx, f, row, col)

        def key(scores: Scores) -> torch.Tensor:
            # The score rounded to the criterion's resolution: a difference within float noise
            # is no gradient (no move), on every machine alike. Inadmissible candidates rank
            # lowest without poisoning differences with infinities.
            return self.rule.rank_key(scores).nan_to_num(neginf=-1e30)

        everyone = torch.arange(si.numel(), device=device)
        start = draw(everyone, 0)
        scores = engine.evaluate(ctx, start)
        pos_r, pos_c = start.rows[:, 0].clone(), start.cols[:, 0].clone()
        here = key(scores)
        probe_r, probe_c = here.clone(), here.clone()
        grad_r = torch.zeros_like(pos_r)
        grad_c = torch.zeros_like(pos_c)
        moved_r = torch.zeros_like(pos_r)
        all_features, all_scores, numbers = [start], [scores], [first]
        # Evaluation order: round by round, chain by chain (the active chains are a prefix).
        costs, made = [chain + 1], r
        for k in range(1, max(budgets)):
            idx = (budget > k).nonzero().squeeze(1)
            costs.append(made + chain[idx] + 1)
            made += sum(b > k for b in budgets)
            phase = (k - 1) % 3
            hr = torch.where(pos_r + self.h <= r_max, self.h, -self.h)
            hc = torch.where(pos_c + self.h <= c_max, self.h, -self.h)
            if phase == 0:
                row, col = pos_r + hr, pos_c
            elif phase == 1:
                row, col = pos_r, pos_c + hc
            else:
                row = (pos_r + self.step * grad_r).clamp(win.top, r_max)
                col = (pos_c + self.step * grad_c).clamp(win.left, c_max)
            f = draw(idx, k, row[idx], col[idx])
            s = engine.evaluate(ctx, f)
            value = key(s)
            if phase == 0:
                probe_r[idx] = value
                # The probe's real offset (the window may have clamped the fresh feature).
                moved_r[idx] = torch.sign(f.rows[:, 0] - pos_r[idx])
            elif phase == 1:
                probe_c[idx] = value
                moved_c = torch.sign(f.cols[:, 0] - pos_c[idx])
                # Sign of the forward difference, oriented by the probe's direction (0: none).
                grad_r[idx] = (torch.sign(probe_r[idx] - here[idx]) * moved_r[idx]).long()
                grad_c[idx] = (torch.sign(value - here[idx]) * moved_c).long()
            else:
                pos_r[idx], pos_c[idx] = f.rows[:, 0], f.cols[:, 0]
                here[idx] = value
            all_features.append(f)
            all_scores.append(s)
            numbers.append(first[idx] + k)
        # Each slice's candidates in ascending candidate number (selection's tie order).
        features = FeatureBatch.cat(all_features)
        number = features.slice_index * self.candidates + torch.cat(numbers)
        order = torch.argsort(number, stable=True)
        features, scores = features.take(order), Scores.cat(all_scores).take(order)
        cost = torch.cat(costs)[order]
        trace = BudgetTrace("evaluations", features.slice_index, scores, cost, self.candidates)
        return features, scores, trace
