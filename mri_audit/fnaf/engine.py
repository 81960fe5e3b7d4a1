"""The FNAF evaluation engine: candidates through the model in large batches, on the device.

Candidates for many slices are evaluated together in chunks of ``batch_size``: insertion, masking,
FFTs, every quantity of every criterion (DESIGN §4) and the losses run batched on the model's
device, and nothing goes back to the host per candidate. The clean model and zero-filled
reconstructions are computed once per slice and cached, so the recovery quantities add no model
pass: each candidate costs exactly one forward.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch

from mri_audit.errors import DeviceError
from mri_audit.fnaf.criteria import REFERENCE_AREA
from mri_audit.fnaf.features import FeatureBatch, SliceContext, insert, paint
from mri_audit.models.estimator import Reconstructor
from mri_audit.models.sampling import reconstruct_samples
from mri_audit.mri.metrics import fnaf_region
from mri_audit.mri.operator import SamplingOperator

__all__ = ["Scores", "FnafEngine", "Selection", "select_best", "PRECISIONS"]

# Model precision for the candidate search; selected features are rescored in fp32.
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

logger = logging.getLogger(__name__)


class Scores(NamedTuple):
    """Per-candidate quantities (DESIGN §4); every criterion is a function of them.

    Attributes:
        r: model recovery ``Σ_S (m(x+d) − m(x))·d / Σ_S d²`` (1: full contrast, 0: gone).
        r0: evidence, the same with the zero-filled magnitude ``z`` in place of ``m``.
        e: erasure ``r0 − r``.
        rho: fraction of the feature's k-space energy the mask acquires.
        loss: the paper's ``L = Σ_Ω e²/320²`` in per-slice normalised units.
        ip: the paper's IP distance ``D = Σ (N(zf(x')) − N(zf(x)))²/320²``.
        region_nmse: NMSE on the region Ω in normalised units.
        control: ``L`` of the clean reconstruction on the same region, without the feature.
        r_se: standard error of ``r`` over a stochastic model's samples (0 when deterministic;
            also the standard error of ``e``, as ``r0`` has none).
        samples: reconstructions averaged per input (1 when deterministic).

    Shape:
        every field ``(N,)``.
    """

    r: torch.Tensor
    r0: torch.Tensor
    e: torch.Tensor
    rho: torch.Tensor
    loss: torch.Tensor
    ip: torch.Tensor
    region_nmse: torch.Tensor
    control: torch.Tensor
    r_se: torch.Tensor
    samples: torch.Tensor

    def take(self, index: torch.Tensor) -> Scores:
        """The scores at ``index``."""
        return Scores(*(t[index] for t in self))

    def detach(self) -> Scores:
        return Scores(*(t.detach() for t in self))

    @staticmethod
    def cat(parts: list[Scores]) -> Scores:
        return Scores(*(torch.cat(field) for field in zip(*parts, strict=True)))

    @staticmethod
    def empty(device) -> Scores:
        return Scores(*(torch.empty(0, device=device) for _ in Scores._fields))


class _Prepared(NamedTuple):
    d: torch.Tensor
    region: torch.Tensor
    masked: torch.Tensor
    mask: torch.Tensor
    zf: torch.Tensor
    target: torch.Tensor
    ip: torch.Tensor
    rho: torch.Tensor
    r0: torch.Tensor


class FnafEngine:
    """Scores FNAF candidates against one :class:`Reconstructor`.

    Args:
        estimator: the model and its forward operator.
        batch_size: candidates per model batch.
        precision: model precision for the search (``fp32``, ``bf16``, ``fp16``).
    """

    def __init__(
        self,
        estimator: Reconstructor,
        *,
        batch_size: int = 16,
        precision: str = "fp32",
    ):
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        self.estimator = estimator
        self.batch_size = int(batch_size)
        self._clean: tuple[torch.Tensor, torch.Tensor] | None = None
        self._memo: tuple[torch.Tensor, dict] | None = None
        self.stream = 0
        self._confirm: FnafEngine | None = None
        """The noise stream of a stochastic model's samples (the confirmation re-scores on
        :data:`~mri_audit.models.sampling.CONFIRM_STREAM`, fresh seeds)."""

    def autocast(self):
        """The model's precision context for the candidate search (a no-op for fp32)."""
        dtype = PRECISIONS[self.precision]
        device = self.estimator.device.type
        return torch.autocast(device, dtype=dtype, enabled=dtype is not None)

    def full_precision(self) -> FnafEngine:
        """An fp32 engine on the same model (for rescoring selected features)."""
        if self.precision == "fp32":
            return self
        engine = FnafEngine(self.estimator, batch_size=self.batch_size)
        engine._clean = self._clean  # computed outside autocast: already fp32
        engine.stream = self.stream
        return engine

    def confirming(self) -> FnafEngine:
        """An fp32 engine whose samples are fresh, independent noise (a stochastic model's
        selected candidates are re-scored with it: no winner's curse)."""
        from mri_audit.models.sampling import CONFIRM_STREAM

        # One per engine: its clean reconstructions (cached per slice batch) serve every attack.
        if self._confirm is None:
            self._confirm = FnafEngine(self.estimator, batch_size=self.batch_size)
            self._confirm.stream = CONFIRM_STREAM
        self._confirm.batch_size = self.batch_size
        return self._confirm

    def _samples(self, ctx: SliceContext, si: torch.Tensor, run) -> torch.Tensor:
        """``run()`` once per sample, each under the items' noise keys (one sample, no keys,
        for a deterministic model).

        Shape:
            returns ``(S, N, h, w)``.
        """
        return reconstruct_samples(
            self.estimator, ctx.volume_keys[si], ctx.slices[si], run, stream=self.stream
        )

    def memo(self, ctx: SliceContext) -> dict:
        """A per-context store for search results several attacks share (e.g. ``fnaf-pgd``
        starts from exactly ``fnaf-rs``'s candidates); cleared when the context changes."""
        if self._memo is None or self._memo[0] is not ctx.kspace:
            self._memo = (ctx.kspace, {})
        return self._memo[1]

    def clean_reconstruction(self, ctx: SliceContext) -> torch.Tensor:
        """The model's reconstruction of each clean slice (its mean over a stochastic model's
        samples), cached per context.

        Shape:
            returns ``(B, h, w)``.
        """
        return self.clean_samples(ctx).mean(0)

    def clean_samples(self, ctx: SliceContext) -> torch.Tensor:
        """Every sample of the clean reconstructions (one for a deterministic model).

        Shape:
            returns ``(S, B, h, w)``.
        """
        # Keep the k-space itself as the key: an id() could be reused after it is freed.
        if self._clean is None or self._clean[0] is not ctx.kspace:

            def run(start: int, stop: int) -> torch.Tensor:
                sl = slice(start, stop)
                index = torch.arange(start, stop, device=ctx.kspace.device)
                return self._samples(
                    ctx,
                    index,
                    lambda: self.estimator.reconstruct(
                        ctx.kspace[sl] * ctx.mask[sl],
                        ctx.mask[sl],
                        num_low_frequencies=ctx.num_low_frequencies,
                        zero_filled=ctx.zero_filled[sl],
                    ),
                )

            with torch.inference_mode(), self.estimator.cropping(ctx.target_shape):
                outs = self._chunked(ctx.num_slices, run)
            self._clean = (ctx.kspace, torch.cat(outs, dim=1).float())
        return self._clean[1]

    def _prepare(self, ctx: SliceContext, features: FeatureBatch, probe=None) -> _Prepared:
        """Insertion, undersampling and every quantity that needs no model call."""
        si = features.slice_index
        d, support = paint(features, ctx.target_shape)
        if probe is not None:
            d = d + probe
        kspace, target = insert(ctx, si, d)
        mask = ctx.mask[si]
        masked = kspace * mask
        zf = SamplingOperator(crop=ctx.target_shape).magnitude(masked)
        ip = ((zf - ctx.zero_filled[si]) / ctx.zf_std[si, None, None]).square().sum((-2, -1))
        delta = (kspace - ctx.kspace[si]).abs().square()
        rho = (delta * mask).sum((1, 2, 3)) / delta.sum((1, 2, 3)).clamp_min(1e-30)
        r0 = _recovery(zf, ctx.zero_filled[si], d)
        return _Prepared(
            d, fnaf_region(support), masked, mask, zf, target, ip / REFERENCE_AREA, rho, r0
        )

    def _scores(self, ctx, si, p: _Prepared, samples: torch.Tensor) -> Scores:
        clean_samples = self.clean_samples(ctx)[:, si]
        if samples.shape[0] == 1:  # deterministic: exactly the one reconstruction
            recon, clean = samples[0], clean_samples[0]
            r = _recovery(recon, clean, p.d)
            r_se = torch.zeros_like(r)
        else:  # r per sample (common random numbers: the clean and feature runs share noise)
            recon, clean = samples.mean(0), clean_samples.mean(0)
            per = _recovery(samples, clean_samples, p.d)  # (S, N)
            r = per.mean(0)
            r_se = per.std(0) / samples.shape[0] ** 0.5
        std = ctx.t_std[si, None, None]
        region = p.region
        err = ((recon - p.target) / std).square() * region
        loss = err.sum((-2, -1)) / REFERENCE_AREA
        ref = ((p.target - ctx.t_mean[si, None, None]) / std).square() * region
        rnmse = err.sum((-2, -1)) / ref.sum((-2, -1)).clamp_min(1e-12)
        control = ((clean - ctx.target[si]) / std).square() * region
        return Scores(
            r=r,
            r0=p.r0,
            e=p.r0 - r,
            rho=p.rho,
            loss=loss,
            ip=p.ip,
            region_nmse=rnmse,
            control=(control.sum((-2, -1)) / REFERENCE_AREA).detach(),
            r_se=r_se.detach(),
            samples=torch.full_like(r_se.detach(), float(samples.shape[0])),
        )

    def evaluate(self, ctx: SliceContext, features: FeatureBatch) -> Scores:
        """Score candidates (no gradients): every candidate goes through the model once.

        Shape:
            features: ``N`` candidates; returns :class:`Scores` of ``(N,)`` fields.
        """
        self.clean_reconstruction(ctx)
        device = features.rows.device

        def run(start: int, stop: int) -> Scores:
            return self._evaluate_chunk(
                ctx, features.take(torch.arange(start, stop, device=device))
            )

        with torch.inference_mode():
            parts = self._chunked(features.count, run)
        if not parts:
            return Scores.empty(ctx.kspace.device)
        return Scores.cat(parts)

    def _chunked(self, total: int, run) -> list:
        """``run(start, stop)`` over ``[0, total)`` in chunks of ``batch_size``; on running
        out of memory the batch is halved and the chunk retried."""
        out, start = [], 0
        while start < total:
            stop = min(start + self.batch_size, total)
            try:
                out.append(run(start, stop))
            except torch.OutOfMemoryError as err:
                self._shrink(err)
                continue
            start = stop
        return out

    def _shrink(self, err: Exception) -> None:
        """Out of memory: halve the batch and retry, down to one candidate."""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if self.batch_size == 1:
            raise DeviceError(
                "out of GPU memory even with one candidate per batch; use a smaller model, "
                f"smaller images or another device ({' '.join(str(err).split())[:160]})"
            ) from err
        self.batch_size = max(1, self.batch_size // 2)
        logger.warning("out of memory: retrying with --batch-size %d", self.batch_size)

    def _reconstruct(self, ctx: SliceContext, si: torch.Tensor, p: _Prepared) -> torch.Tensor:
        """Every sample of the candidates' reconstructions, ``(S, N, h, w)``."""
        # Cropped to this batch's target size, not the size the model was opened with.
        with self.estimator.cropping(ctx.target_shape):
            return self._samples(
                ctx,
                si,
                lambda: self.estimator.reconstruct(
                    p.masked, p.mask, num_low_frequencies=ctx.num_low_frequencies, zero_filled=p.zf
                ),
            )

    def _evaluate_chunk(self, ctx: SliceContext, chunk: FeatureBatch) -> Scores:
        p = self._prepare(ctx, chunk)
        with self.autocast():
            samples = self._reconstruct(ctx, chunk.slice_index, p)
        return self._scores(ctx, chunk.slice_index, p, samples)

    def scores_with_grad(
        self, ctx: SliceContext, features: FeatureBatch, probe: torch.Tensor | None = None
    ) -> Scores:
        """Differentiable quantities of a batch of features, for white-box attacks.

        The caller sets ``features.values.requires_grad_()`` and wraps the call in
        :meth:`Reconstructor.evaluation`. ``probe`` (zeros with ``requires_grad``) is added to
        the painted features so its gradient gives the score's derivative at every pixel.

        Shape:
            returns :class:`Scores` of ``(N,)`` fields (``control`` detached).
        """
        self.clean_reconstruction(ctx)
        p = self._prepare(ctx, features, probe)
        si = features.slice_index
        return self._scores(ctx, si, p, self._reconstruct(ctx, si, p))


def _recovery(with_feature: torch.Tensor, without: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``Σ (a − b)·d / Σ d²`` per sample (d is zero off its support); NaN for an all-zero d.

    Shape:
        with_feature, without: ``(..., N, h, w)``; d: ``(N, h, w)``; returns ``(..., N)``.
    """
    energy = d.square().sum((-2, -1))
    num = ((with_feature - without) * d).sum((-2, -1))
    return torch.where(energy > 0, num / energy.clamp_min(1e-30), torch.full_like(num, torch.nan))


class Selection(NamedTuple):
    """The best admissible candidate of each slice.

    Shape:
        index: ``(B,)`` position of the best candidate in the candidate batch (0 where none);
        found: ``(B,)`` bool, whether any candidate of that slice was admissible;
        evaluated, accepted: ``(B,)`` int counts.
    """

    index: torch.Tensor
    found: torch.Tensor
    evaluated: torch.Tensor
    accepted: torch.Tensor


def select_best(key: torch.Tensor, slice_index: torch.Tensor, num_slices: int) -> Selection:
    """Per slice, the candidate with the highest ``key`` (``-inf``: inadmissible), on the device.

    Ties go to the lowest position in the candidate batch (attacks order their candidates by
    candidate number), explicitly: the highest key per slice, then the lowest position holding
    it, both exact reductions (``amax``, ``amin``) whose result does not depend on the order the
    device reduces in. Pass :meth:`~mri_audit.fnaf.criteria.Criterion.rank_key` (scores rounded
    to the criterion's resolution), so that float noise cannot break a tie.

    Shape:
        key: ``(N,)``; slice_index: ``(N,)``.
    """
    device = key.device
    n = key.shape[0]
    admissible = torch.isfinite(key)
    key = torch.where(admissible, key, torch.full_like(key, -float("inf")))
    best = torch.full((num_slices,), -float("inf"), device=device, dtype=key.dtype)
    best = best.scatter_reduce(0, slice_index, key, reduce="amax", include_self=True)
    is_best = (key == best[slice_index]) & admissible
    position = torch.where(is_best, torch.arange(n, device=device), torch.full_like(slice_index, n))
    first = torch.full((num_slices,), n, device=device, dtype=torch.int64)
    first = first.scatter_reduce(0, slice_index, position, reduce="amin", include_self=True)
    ones = torch.ones(n, device=device, dtype=torch.int64)
    evaluated = torch.zeros(num_slices, device=device, dtype=torch.int64).index_add(
        0, slice_index, ones
    )
    accepted = torch.zeros_like(evaluated).index_add(0, slice_index, admissible.long())
    found = first < n
    return Selection(torch.where(found, first, torch.zeros_like(first)), found, evaluated, accepted)
