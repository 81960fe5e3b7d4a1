"""The FNAF attack base class: ART's ``EvasionAttack`` with the threat model enforced once.

Subclasses implement only their search (:meth:`FnafAttack._search`); this class validates the
parameters, runs the search with the model frozen and restored afterwards, keeps only
IP-accepted features, applies the hit threshold and the control, and provides ART's
``generate`` contract (numpy in, numpy out; torch tensors pass through on their device).
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from art.attacks.attack import EvasionAttack

from mri_audit.engine import FnafEngine, Scores, select_best
from mri_audit.features import (
    INSERT_MODES,
    FeatureBatch,
    SliceContext,
    encode_features,
    insert,
    paint,
    prepare_context,
)
from mri_audit.physics import Mask, make_mask_func
from mri_audit.reconstructor import Reconstructor

__all__ = ["AttackResult", "FnafAttack", "result_records"]

logger = logging.getLogger(__name__)


class AttackResult(NamedTuple):
    """The best IP-accepted feature of each slice and its scores.

    Shape:
        features: a :class:`FeatureBatch` of ``B`` (meaningless where ``found`` is False);
        every other tensor ``(B,)``; ``extra`` maps names to ``(B,)`` tensors.
    """

    features: FeatureBatch
    found: torch.Tensor
    loss: torch.Tensor
    region_nmse: torch.Tensor
    ip: torch.Tensor
    rho: torch.Tensor
    control: torch.Tensor
    hit: torch.Tensor
    control_hit: torch.Tensor
    evaluated: torch.Tensor
    accepted: torch.Tensor
    extra: dict[str, torch.Tensor]


class FnafAttack(EvasionAttack):
    """Base of the FNAF attacks (DESIGN §4–5).

    Args:
        estimator: the :class:`Reconstructor` under attack.
        candidates: evaluation budget per slice (default 11).
        feature_steps: random-walk length, or an inclusive ``(low, high)`` range.
        window: centred window fraction (default 0.375) or ``(top, left, height, width)``.
        threshold: ``τ``; a slice is a hit when the best accepted ``L >= τ`` (default 1e-3).
        ip_epsilon: ``ε``; a candidate is accepted when its IP distance ``D >= ε`` (1e-4).
        seed: audit seed; candidate randomness is keyed by (seed, volume, slice, candidate).
        batch_size: candidates per model batch.
        verbose: log progress.
    """

    name = "fnaf"
    kind = "fnaf"
    needs_gradients = False
    attack_params = EvasionAttack.attack_params + [
        "candidates",
        "feature_steps",
        "window",
        "threshold",
        "ip_epsilon",
        "seed",
        "batch_size",
        "verbose",
    ]
    _estimator_requirements = (Reconstructor,)

    def __init__(
        self,
        estimator: Reconstructor,
        *,
        candidates: int = 11,
        feature_steps: int | tuple[int, int] = 10,
        window: float | Sequence[int] = 0.375,
        threshold: float = 1e-3,
        ip_epsilon: float = 1e-4,
        seed: int = 0,
        batch_size: int = 16,
        verbose: bool = False,
    ) -> None:
        super().__init__(estimator=estimator)
        self.candidates = candidates
        self.feature_steps = feature_steps
        self.window = window
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
        if isinstance(self.window, numbers.Real):
            if not 0 < self.window <= 1:
                raise ValueError(f"window fraction must be in (0, 1], got {self.window}")
        elif len(self.window) != 4:
            raise ValueError("window must be a fraction or (top, left, height, width)")
        for name in ("threshold", "ip_epsilon"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if not isinstance(self.seed, numbers.Integral):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    @property
    def walk_steps(self) -> int | tuple[int, int]:
        """The random-walk length (or range) as ints."""
        s = self.feature_steps
        return int(s) if isinstance(s, numbers.Integral) else (int(s[0]), int(s[1]))

    # ------------------------------------------------------------------ the search
    def _search(self, ctx: SliceContext, engine: FnafEngine) -> tuple[FeatureBatch, Scores]:
        """Return every candidate evaluated (features and their engine scores)."""
        raise NotImplementedError

    def engine(self) -> FnafEngine:
        return FnafEngine(self.estimator, ip_epsilon=self.ip_epsilon, batch_size=self.batch_size)

    def attack(self, ctx: SliceContext, engine: FnafEngine | None = None) -> AttackResult:
        """Run the attack on a batch of slices (the fast path; tensors stay on the device)."""
        engine = engine or self.engine()
        with self.estimator.evaluation(parameters_require_grad=False):
            features, scores = self._search(ctx, engine)
            if engine.precision != "fp32":
                # Reduced precision finds the candidates; the reported scores are fp32.
                sel = select_best(
                    scores._replace(accepted=scores.accepted & (scores.ip >= self.ip_epsilon)),
                    features.slice_index,
                    ctx.num_slices,
                )
                keep = sel.index[sel.found]
                features = features.take(keep)
                rescored = engine.full_precision().evaluate(ctx, features)
                result = self._finish(ctx, features, rescored)
                return result._replace(evaluated=sel.evaluated, accepted=sel.accepted)
        return self._finish(ctx, features, scores)

    def _finish(self, ctx: SliceContext, features: FeatureBatch, scores: Scores) -> AttackResult:
        # The constraint is enforced here, once, whatever the subclass did.
        scores = scores._replace(accepted=scores.accepted & (scores.ip >= self.ip_epsilon))
        sel = select_best(scores, features.slice_index, ctx.num_slices)
        best, s = features.take(sel.index), scores.take(sel.index)
        nan = torch.full_like(s.loss, float("nan"))
        found = sel.found

        def keep(t):
            return torch.where(found, t, nan)

        loss, control = keep(s.loss), keep(s.control)
        return AttackResult(
            features=best,
            found=found,
            loss=loss,
            region_nmse=keep(s.region_nmse),
            ip=keep(s.ip),
            rho=keep(s.rho),
            control=control,
            hit=found & (loss >= self.threshold),
            control_hit=found & (control >= self.threshold),
            evaluated=sel.evaluated,
            accepted=sel.accepted,
            extra={},
        )

    # ------------------------------------------------------------------ ART contract
    def generate(self, x, y=None, *, mask=None, volumes=None, slices=None, **kwargs):
        """ART entry point: insert the worst IP-accepted feature into each slice.

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
        is_numpy = isinstance(x, np.ndarray)
        xt = torch.as_tensor(x, device=self.estimator.device, dtype=torch.float32)
        if xt.ndim != 5 or xt.shape[-1] != 2:
            raise ValueError(f"x must be k-space (B, coils, H, W, 2), got {tuple(xt.shape)}")
        kspace = torch.view_as_complex(xt.contiguous())
        b = kspace.shape[0]
        volumes = list(volumes) if volumes is not None else [f"x{i}" for i in range(b)]
        slices = list(slices) if slices is not None else [0] * b
        mask_for = self._mask_source(mask, volumes)
        ctx = prepare_context(
            kspace,
            target_shape=self.estimator.target_shape,
            volumes=volumes,
            slices=slices,
            mask_for=mask_for,
            window=self.window,
            insert_mode=kwargs.get("insert_mode", INSERT_MODES[0]),
        )
        result = self.attack(ctx)
        self.last_result = result
        d, _ = paint(result.features, ctx.target_shape)
        d = d * result.found[:, None, None]
        adv, _ = insert(ctx, torch.arange(b, device=kspace.device), d)
        out = torch.view_as_real(adv)
        return out.cpu().numpy() if is_numpy else out

    def _mask_source(self, mask, volumes):
        fixed = mask if mask is not None else self.estimator._fixed_mask
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


def result_records(ctx: SliceContext, result: AttackResult) -> list[dict]:
    """Plain per-slice records of an attack result (one host transfer for the whole batch)."""
    fields = (
        "found",
        "loss",
        "region_nmse",
        "ip",
        "rho",
        "control",
        "hit",
        "control_hit",
        "evaluated",
        "accepted",
    )
    host = {name: getattr(result, name).tolist() for name in fields}
    extra = {name: t.tolist() for name, t in result.extra.items()}
    encoded = encode_features(result.features)
    records = []
    for i, (volume, slice_idx) in enumerate(zip(ctx.volumes, ctx.slices.tolist(), strict=True)):
        rec = {"volume": volume, "slice": int(slice_idx)}
        rec.update({name: host[name][i] for name in fields})
        rec.update({name: values[i] for name, values in extra.items()})
        feature = encoded[i] if host["found"][i] else None
        rec["feature"] = feature
        if feature:
            rec["row"] = round(sum(feature["rows"]) / len(feature["rows"]), 2)
            rec["col"] = round(sum(feature["cols"]) / len(feature["cols"]), 2)
        else:
            rec["row"] = rec["col"] = None
        records.append(rec)
    return records
