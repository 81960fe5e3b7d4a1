"""The FNAF attack base class: ART's ``EvasionAttack`` with the threat model enforced once.

Subclasses implement only their search (:meth:`FnafAttack._search`: every candidate evaluated,
with its engine quantities). :meth:`FnafAttack.attack` is final: it runs the search with the model
frozen and restored afterwards, keeps only candidates the criterion admits (its IP rule), selects
the best one per slice by the criterion's score (rounded to its resolution; ties: the lowest
candidate number, so every machine picks the same feature), applies the hit rule and the
control, and also records what every other criterion would have selected among the same
candidates (so an audit can be re-read under another criterion). ``generate`` provides ART's
contract (numpy in, numpy out; torch tensors pass through on their device).
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Sequence
from typing import NamedTuple

import torch

from mri_audit.fnaf.budget import BudgetTrace, budget_hits, in_order
from mri_audit.fnaf.criteria import CRITERIA, DEFAULT_CRITERION, QUANTITIES, Criterion, all_criteria
from mri_audit.fnaf.engine import FnafEngine, Scores, select_best
from mri_audit.fnaf.features import (
    FeatureBatch,
    SliceContext,
)
from mri_audit.fnaf.records import result_records  # re-exported
from mri_audit.fnaf.shapes import check_shape, draw_features
from mri_audit.models.art_setup import EvasionAttack
from mri_audit.models.estimator import Reconstructor

__all__ = ["AttackResult", "Pick", "FnafAttack", "result_records", "QUANTITIES"]

logger = logging.getLogger(__name__)


class Pick(NamedTuple):
    """One criterion's best admissible candidate of each slice.

    Shape:
        index: ``(B,)`` position in the evaluated candidates; found: ``(B,)`` bool; score:
        ``(B,)``; scores: the candidate's quantities (NaN where not found); accepted: ``(B,)``
        admissible candidates; row, col: ``(B,)`` centroid of the feature (NaN where not found).
    """

    index: torch.Tensor
    found: torch.Tensor
    score: torch.Tensor
    scores: Scores
    accepted: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor


class AttackResult(NamedTuple):
    """The best admissible feature of each slice under the attack's criterion, and its scores.

    Shape:
        features: a :class:`FeatureBatch` of ``B`` (meaningless where ``found`` is False);
        found, hit, score, control, control_hit, evaluated, accepted: ``(B,)``;
        scores: :class:`Scores` of the selected candidates; picks: every criterion's
        :class:`Pick` among the same candidates.
    """

    criterion: str
    features: FeatureBatch
    found: torch.Tensor
    hit: torch.Tensor
    score: torch.Tensor
    scores: Scores
    control: torch.Tensor
    control_hit: torch.Tensor
    evaluated: torch.Tensor
    accepted: torch.Tensor
    picks: dict[str, Pick]
    budget: dict[str, torch.Tensor] | None = None  # mri_audit.fnaf.budget.budget_hits
    budget_unit: str | None = None

    def __getattr__(self, name):  # r, r0, e, loss, ... of the selected candidate
        if name in Scores._fields:
            return getattr(self.scores, name)
        raise AttributeError(name)


class FnafAttack(EvasionAttack):
    """Base of the FNAF attacks (DESIGN §4–5).

    Args:
        estimator: the :class:`Reconstructor` under attack.
        candidates: evaluation budget per slice (default 11).
        feature_steps: random-walk length, or an inclusive ``(low, high)`` range.
        feature, feature_size, feature_width, feature_contrast: the feature's shape (``walk``,
            ``disk`` or ``line``) and :func:`~mri_audit.fnaf.shapes.draw_features`'s ``size`` (None:
            the shape's default; a walk's is ``feature_steps``), ``width`` and ``contrast``.
        window: centred window fraction (default 0.375) or ``(top, left, height, width)``.
        criterion: ``erasure`` (default), ``recovery`` or ``paper`` (the score attacks
            maximise and the hit rule).
        margin: ``δ`` of ``erasure`` (default 0.1).
        min_recovery: ``r_min`` of ``recovery`` (default 0.5).
        threshold: ``τ`` of ``paper`` (default 1e-3).
        ip_epsilon: ``ε`` of ``paper`` (default 1e-4).
        seed: audit seed; candidate randomness is keyed by (seed, volume, slice, candidate).
        batch_size: candidates per model batch.
        verbose: log progress.
    """

    name = "fnaf"
    kind = "fnaf"
    needs_gradients = False
    # "candidates" or "evaluations": _search returns them in evaluation order; an attack with
    # another order returns its own BudgetTrace as _search's third value.
    budget_unit: str | None = None
    attack_params = EvasionAttack.attack_params + [
        "candidates",
        "feature_steps",
        "feature",
        "feature_size",
        "feature_width",
        "feature_contrast",
        "window",
        "criterion",
        "margin",
        "min_recovery",
        "threshold",
        "ip_epsilon",
        "seed",
        "batch_size",
        "verbose",
    ]
    _estimator_requirements = (Reconstructor,)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "attack" in cls.__dict__:
            raise TypeError(
                f"{cls.__name__} overrides FnafAttack.attack, which is final: implement _search"
            )

    def __init__(
        self,
        estimator: Reconstructor,
        *,
        candidates: int = 11,
        feature_steps: int | tuple[int, int] = 10,
        feature: str = "walk",
        feature_size: float | tuple[float, float] | None = None,
        feature_width: float = 1.0,
        feature_contrast: float | None = None,
        window: float | Sequence[int] = 0.375,
        criterion: str = DEFAULT_CRITERION,
        margin: float = 0.1,
        min_recovery: float = 0.5,
        threshold: float = 1e-3,
        ip_epsilon: float = 1e-4,
        seed: int = 0,
        batch_size: int = 16,
        verbose: bool = False,
    ) -> None:
        super().__init__(estimator=estimator)
        self.candidates = candidates
        self.feature_steps = feature_steps
        self.feature = feature
        self.feature_size = feature_size
        self.feature_width = feature_width
        self.feature_contrast = feature_contrast
        self.window = window
        self.criterion = criterion
        self.margin = margin
        self.min_recovery = min_recovery
        self.threshold = threshold
        self.ip_epsilon = ip_epsilon
        self.seed = seed
        self.batch_size = batch_size
        self.verbose = verbose
        self._check_params()

    def _check_params(self) -> None:
        def positive_int(name: str, value) -> None:
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

        positive_int("candidates", self.candidates)
        positive_int("batch_size", self.batch_size)
        steps = self.feature_steps
        if isinstance(steps, numbers.Integral):
            positive_int("feature_steps", steps)
        elif not (
            isinstance(steps, (tuple, list))
            and len(steps) == 2
            and all(isinstance(s, numbers.Integral) and s >= 1 for s in steps)
            and steps[0] <= steps[1]
        ):
            raise ValueError(f"feature_steps must be >= 1 or a (low, high) range, got {steps!r}")
        if self.feature == "walk" and self.feature_size is not None:
            raise ValueError("feature_size is a disk's radius or a line's length, not a walk's")
        sizes = {"size": self.feature_size, "width": self.feature_width}
        check_shape(self.feature, contrast=self.feature_contrast, **sizes)
        if isinstance(self.window, numbers.Real):
            if not 0 < self.window <= 1:
                raise ValueError(f"window fraction must be in (0, 1], got {self.window}")
        elif len(self.window) != 4:
            raise ValueError("window must be a fraction or (top, left, height, width)")
        if self.criterion not in CRITERIA:
            raise ValueError(
                f"unknown criterion {self.criterion!r}; choose one of {', '.join(CRITERIA)}"
            )
        for name in ("margin", "min_recovery", "threshold", "ip_epsilon"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                raise ValueError(f"{name} must be a number, got {value!r}")
        self.criteria  # noqa: B018 -- validates the thresholds
        if not isinstance(self.seed, numbers.Integral):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    @property
    def criteria(self) -> dict[str, Criterion]:
        """Every criterion with this attack's thresholds."""
        return all_criteria(
            margin=float(self.margin),
            min_recovery=float(self.min_recovery),
            threshold=float(self.threshold),
            ip_epsilon=float(self.ip_epsilon),
        )

    @property
    def rule(self) -> Criterion:
        """The criterion this attack maximises."""
        return self.criteria[self.criterion]

    @property
    def walk_steps(self) -> int | tuple[int, int]:
        """The random-walk length (or range) as ints."""
        s = self.feature_steps
        return int(s) if isinstance(s, numbers.Integral) else (int(s[0]), int(s[1]))

    def draw(
        self, ctx: SliceContext, slice_index: torch.Tensor, candidate: torch.Tensor
    ) -> FeatureBatch:
        """This attack's features of ``(N,)`` (slice, candidate) keys (:func:`draw_features`)."""
        walk = self.feature == "walk"
        return draw_features(
            ctx,
            slice_index,
            candidate,
            shape=self.feature,
            size=self.walk_steps if walk else self.feature_size,
            contrast=self.feature_contrast,
            width=self.feature_width,
            seed=self.seed,
        )

    # ------------------------------------------------------------------ the search
    def _search(self, ctx: SliceContext, engine: FnafEngine) -> tuple[FeatureBatch, Scores]:
        """Return every candidate evaluated (features and their engine quantities), each
        slice's in ascending candidate number (a tie goes to the first), and optionally a
        :class:`~mri_audit.fnaf.budget.BudgetTrace` (else, with a ``budget_unit``, the
        candidates' order is their evaluation order)."""
        raise NotImplementedError

    def engine(self) -> FnafEngine:
        return FnafEngine(self.estimator, batch_size=self.batch_size)

    def select(self, ctx: SliceContext, features: FeatureBatch, scores: Scores):
        """The best admissible candidate per slice under this attack's criterion (its score
        rounded to the criterion's resolution; ties: the lowest candidate number)."""
        return select_best(self.rule.rank_key(scores), features.slice_index, ctx.num_slices)

    def attack(self, ctx: SliceContext, engine: FnafEngine | None = None) -> AttackResult:
        """Run the attack on a batch of slices (the fast path; tensors stay on the device).

        Final: subclasses implement :meth:`_search` only.
        """
        engine = engine or self.engine()
        with (
            self.estimator.evaluation(parameters_require_grad=False),
            self.estimator.cropping(ctx.target_shape),  # this batch's target size
        ):
            features, scores, *traced = self._search(ctx, engine)
            trace: BudgetTrace | None = traced[0] if traced else None
            if trace is None and self.budget_unit:
                trace = in_order(self.budget_unit, features.slice_index, scores, self.candidates)
            # A stochastic model's search hits are not yet confirmed on fresh noise: no curve.
            budget = (
                trace is not None
                and not self.estimator.call.stochastic
                and budget_hits(self.criteria, trace, ctx.num_slices)
            )
            counts = None
            if self.estimator.call.stochastic:  # the picks re-scored on fresh noise
                features, scores, counts = self._rescore(
                    ctx, engine.confirming(), features, scores, top=1
                )
            elif engine.precision != "fp32":
                features, scores, counts = self._rescore(
                    ctx, engine.full_precision(), features, scores, top=2
                )
        result = self._finish(ctx, features, scores, counts)
        return result._replace(budget=budget or None, budget_unit=budget and trace.unit or None)

    def _rescore(self, ctx: SliceContext, engine: FnafEngine, features, scores, *, top: int):
        """The search finds the candidates; the reported scores come from ``engine``.

        Reduced precision (``top=2``): each criterion's two best candidates per slice are
        rescored in fp32 (so a re-read under another criterion is rescored too, and a
        refinement that reduced precision ranked above its start cannot report less than the
        start). A stochastic model (``top=1``): each criterion's pick is re-scored on fresh,
        independent noise (:meth:`FnafEngine.confirming`), so its hit is not the luck of the
        draw that won the search (the winner's curse). Counts come from the whole search.
        """
        si = features.slice_index
        keep, accepted = [], {}
        for name, crit in self.criteria.items():
            key = crit.rank_key(scores)
            first = select_best(key, si, ctx.num_slices)
            second = select_best(
                key.index_fill(0, first.index[first.found], -float("inf")), si, ctx.num_slices
            )
            keep += [first.index[first.found], second.index[second.found]][:top]
            accepted[name] = first.accepted
        control = self._control(ctx, si, scores.control)
        keep = torch.cat(keep).unique()
        rescored = engine.evaluate(ctx, features.take(keep))
        return features.take(keep), rescored, (first.evaluated, control, accepted)

    @staticmethod
    def _control(ctx: SliceContext, slice_index: torch.Tensor, control: torch.Tensor):
        """The control: per slice, the highest no-feature ``L`` over the candidates' regions."""
        best = torch.full((ctx.num_slices,), -float("inf"), device=control.device)
        best = best.scatter_reduce(0, slice_index, control.float(), reduce="amax")
        return torch.where(torch.isfinite(best), best, torch.full_like(best, float("nan")))

    def _finish(self, ctx: SliceContext, features: FeatureBatch, scores: Scores, counts=None):
        # The constraint and the selection are enforced here, once, whatever the subclass did.
        si = features.slice_index
        picks = {
            name: self._pick(ctx, features, scores, crit) for name, crit in self.criteria.items()
        }
        main = picks[self.criterion]
        if counts is None:
            evaluated = torch.zeros(ctx.num_slices, dtype=torch.int64, device=si.device)
            evaluated = evaluated.index_add(0, si, torch.ones_like(si))
            control = self._control(ctx, si, scores.control)
        else:
            evaluated, control, accepted = counts
            picks = {n: p._replace(accepted=accepted[n]) for n, p in picks.items()}
            main = picks[self.criterion]
        return AttackResult(
            criterion=self.criterion,
            features=features.take(main.index),
            found=main.found,
            hit=main.found & self.rule.hit(main.scores),
            score=main.score,
            scores=main.scores,
            control=control,
            control_hit=self.rule.control_hit(control),
            evaluated=evaluated,
            accepted=main.accepted,
            picks=picks,
        )

    @staticmethod
    def _pick(ctx, features: FeatureBatch, scores: Scores, crit: Criterion) -> Pick:
        key = crit.key(scores)  # the recorded score stays unrounded
        sel = select_best(crit.rank_key(scores), features.slice_index, ctx.num_slices)
        nan = torch.tensor(float("nan"), device=key.device)
        found = sel.found
        taken = scores.take(sel.index)
        chosen = Scores(*(torch.where(found, t.float(), nan) for t in taken))
        f = features.take(sel.index)
        n = f.valid.sum(1).clamp_min(1)
        row = (f.rows * f.valid).sum(1) / n
        col = (f.cols * f.valid).sum(1) / n
        return Pick(
            index=sel.index,
            found=found,
            score=torch.where(found, key[sel.index].float(), nan),
            scores=chosen,
            accepted=sel.accepted,
            row=torch.where(found, row.float(), nan),
            col=torch.where(found, col.float(), nan),
        )

    # ------------------------------------------------------------------ ART contract
    def generate(self, x, y=None, *, mask=None, volumes=None, slices=None, **kwargs):
        """ART entry point: insert the worst admissible feature into each slice.

        Args:
            x: fully-sampled k-space as a real view (numpy or torch).
            y: ignored (the target is the slice's own fully-sampled magnitude).
            mask: sampling columns, ``(W,)`` or ``(B, W)``; defaults to the estimator's fixed
                mask, else a 4x random mask seeded by each volume name.
            volumes, slices: volume names and slice indices (random-draw keys); default
                ``"x{i}"`` and 0.

        Returns:
            ``x`` with the feature inserted (same shape and type). Scores: :attr:`last_result`.

        Shape:
            x: ``(B, coils, H, W, 2)``.
        """
        from mri_audit.fnaf.art_input import insert_worst

        return insert_worst(self, x, mask=mask, volumes=volumes, slices=slices, **kwargs)
