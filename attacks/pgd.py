"""``fnaf-pgd``: white-box projected gradient ascent on the criterion's score."""

from __future__ import annotations

import numbers

import torch

from attacks.random_search import RandomSearch
from mri_audit.fnaf.budget import BudgetTrace
from mri_audit.fnaf.engine import FnafEngine, Scores
from mri_audit.fnaf.features import FeatureBatch, SliceContext
from mri_audit.mri.metrics import ring4


class FnafPGD(RandomSearch):
    """Refine the best random candidate of each slice by projected gradient ascent.

    Starting from ``fnaf-rs``'s best admissible feature (same seed, same candidates), each step
    moves the intensities by ``step_size * (max t - min t)`` along the sign of the gradient of the
    criterion's score and projects them to ``[min t, max t]`` on the support. A step that leaves
    the criterion's admissible set is undone for that slice and its step size halved, so every
    iterate kept is admissible; the best iterate is kept (by the score rounded to the criterion's
    resolution, the earliest on ties), so the result is never below ``fnaf-rs``. With
    ``grow > 0`` the support gains, in each of the first ``grow`` steps, the ring pixel where the
    score rises fastest.

    Args:
        steps: gradient steps.
        step_size: step as a fraction of the slice's intensity range.
        grow: pixels the support may gain.
    """

    name = "fnaf-pgd"
    needs_gradients = True
    budget_unit = "steps"  # the random start at step 0, then the best iterate after each step
    attack_params = RandomSearch.attack_params + ["steps", "step_size", "grow"]

    def __init__(
        self, estimator, *, steps: int = 8, step_size: float = 0.1, grow: int = 0, **kwargs
    ):
        self.steps, self.step_size, self.grow = steps, step_size, grow
        super().__init__(estimator, **kwargs)

    def _check_params(self) -> None:
        super()._check_params()
        if not isinstance(self.steps, numbers.Integral) or self.steps < 0:
            raise ValueError(f"steps must be an integer >= 0, got {self.steps!r}")
        if not isinstance(self.grow, numbers.Integral) or self.grow < 0:
            raise ValueError(f"grow must be an integer >= 0, got {self.grow!r}")
        if not isinstance(self.step_size, numbers.Real) or not self.step_size > 0:
            raise ValueError(f"step_size must be > 0, got {self.step_size!r}")

    def _search(self, ctx: SliceContext, engine: FnafEngine):
        features, scores = super()._search(ctx, engine)
        si = features.slice_index
        parts = [(si, scores, torch.zeros_like(si))]  # step 0: the random candidates

        def trace() -> BudgetTrace:
            si, s, cost = zip(*parts, strict=True)
            return BudgetTrace(
                "steps", torch.cat(si), Scores.cat(list(s)), torch.cat(cost), self.steps
            )

        start = self.select(ctx, features, scores)
        found = start.found.nonzero().squeeze(1)
        if self.steps == 0 or found.numel() == 0:
            return features, scores, trace()
        refined, history = self._ascend(ctx, engine, features.take(start.index[found]))
        final = engine.evaluate(ctx, refined)
        # The best iterate after each step (the last one as reported, from the final scores).
        for step, best in enumerate([*history[1:-1], final], start=1):
            parts.append((refined.slice_index, best, torch.full_like(refined.slice_index, step)))
        return FeatureBatch.cat([features, refined]), Scores.cat([scores, final]), trace()

    def _grown(self, f: FeatureBatch) -> FeatureBatch:
        pad = torch.zeros(f.count, self.grow, dtype=torch.int64, device=f.rows.device)
        return FeatureBatch(
            torch.cat([f.rows, pad + f.rows[:, :1]], 1),
            torch.cat([f.cols, pad + f.cols[:, :1]], 1),
            torch.cat([f.values, pad.to(f.values.dtype) + f.values[:, :1]], 1),
            torch.cat([f.valid, pad.bool()], 1),
            f.slice_index,
        )

    def _ascend(
        self, ctx: SliceContext, engine: FnafEngine, f: FeatureBatch
    ) -> tuple[FeatureBatch, list[Scores]]:
        """The best admissible iterate, and the best iterate's quantities after each step."""
        rule = self.rule
        si = f.slice_index
        lo, hi = ctx.t_min[si, None], ctx.t_max[si, None]
        step = self.step_size * (hi - lo)
        first_slot = f.rows.shape[1]
        f = self._grown(f) if self.grow else f
        h, w = ctx.target_shape
        best = f._replace(values=f.values.detach().clone())
        # The best iterate so far by the rounded score: a later one must beat it by a whole
        # resolution step (float noise never replaces the earlier, e.g. fnaf-rs's start).
        best_rank = torch.full((f.count,), -float("inf"), device=lo.device, dtype=torch.float64)
        history: list[Scores] = []
        best_q: Scores | None = None
        for it in range(self.steps + 1):
            values = f.values.detach().requires_grad_(True)
            probe = torch.zeros(f.count, h, w, device=lo.device, requires_grad=bool(self.grow))
            q = engine.scores_with_grad(ctx, f._replace(values=values), probe=probe)
            score = rule.score(q)
            ok = rule.admissible(q.detach()) & torch.isfinite(score.detach())
            rank = rule.rank_key(q.detach())
            better = ok & (rank > best_rank)
            best_rank = torch.where(better, rank, best_rank)
            best = FeatureBatch(
                *(
                    torch.where(better[:, None], new.detach(), old)
                    for new, old in zip(f[:4], best[:4], strict=True)
                ),
                si,
            )
            q = q.detach()
            best_q = (
                q
                if best_q is None
                else Scores(*(torch.where(better, n, o) for n, o in zip(q, best_q, strict=True)))
            )
            history.append(best_q)
            if it == self.steps:
                break
            inputs = [values, probe] if self.grow else [values]
            total = torch.where(ok, score, torch.zeros_like(score)).sum()
            grads = torch.autograd.grad(total, inputs, allow_unused=True)
            grads = [
                torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs, strict=True)
            ]
            # A rejected iterate goes back to the best admissible point with half the step.
            step = torch.where(ok[:, None], step, step / 2)
            f = FeatureBatch(
                *(
                    torch.where(ok[:, None], cur, old)
                    for cur, old in zip(f[:4], best[:4], strict=True)
                ),
                si,
            )
            base = torch.where(ok[:, None], values.detach(), best.values)
            new_values = torch.minimum(torch.maximum(base + step * grads[0].sign(), lo), hi)
            f = f._replace(values=new_values)
            if self.grow and it < self.grow:
                f = self._add_pixel(ctx, f, grads[1], slot=first_slot + it)
        return best, history

    def _add_pixel(
        self, ctx: SliceContext, f: FeatureBatch, grad: torch.Tensor, slot: int
    ) -> FeatureBatch:
        """Add the ring pixel (inside the window) where the score rises fastest."""
        n, h, w = grad.shape
        support = torch.zeros(n, h * w, dtype=torch.bool, device=grad.device)
        lin = f.rows * w + f.cols
        support.scatter_(1, torch.where(f.valid, lin, lin[:, :1]), True)
        support = support.view(n, h, w)
        win = ctx.window
        inside = torch.zeros_like(support[0])
        inside[win.top : win.top + win.height, win.left : win.left + win.width] = True
        score = torch.where(ring4(support) & inside, grad, torch.full_like(grad, -float("inf")))
        best = score.flatten(1).amax(1)
        flat = score.flatten(1).argmax(1)
        rows, cols, valid = f.rows.clone(), f.cols.clone(), f.valid.clone()
        values = f.values.clone()
        can = torch.isfinite(best) & ~valid[:, slot]
        rows[:, slot] = torch.where(can, flat // w, rows[:, slot])
        cols[:, slot] = torch.where(can, flat % w, cols[:, slot])
        valid[:, slot] |= can
        top = torch.where(f.valid, f.values, torch.full_like(f.values, -float("inf"))).amax(1)
        values[:, slot] = torch.where(can, top, values[:, slot])
        return FeatureBatch(rows, cols, values, valid, f.slice_index)
