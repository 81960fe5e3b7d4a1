"""The FNAF evaluation engine: candidates through the model in large batches, on the device.

Candidates for many slices are evaluated together in chunks of ``batch_size``: insertion, masking,
FFTs, the information-preservation (IP) check and the losses run batched on the model's device,
the model sees only IP-accepted candidates, and nothing goes back to the host per candidate.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch

from mri_audit.errors import DeviceError
from mri_audit.features import FeatureBatch, SliceContext, insert, paint
from mri_audit.metrics import fnaf_region
from mri_audit.physics import center_crop, ifft2c, rss
from mri_audit.reconstructor import Reconstructor

__all__ = ["Scores", "FnafEngine", "Selection", "select_best", "PRECISIONS"]

# Model precision for the candidate search; selected features are rescored in fp32.
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

logger = logging.getLogger(__name__)


class Scores(NamedTuple):
    """Per-candidate scores.

    Attributes:
        loss: the FNAF loss ``L`` (NaN where the candidate failed IP and was not reconstructed).
        region_nmse: NMSE on the region Ω in normalised units (NaN likewise).
        ip: the IP distance ``D``.
        rho: fraction of the feature's k-space energy the mask acquires.
        accepted: ``D >= epsilon``.
        control: ``L`` of the clean reconstruction on the same region, without the feature.

    Shape:
        every field ``(N,)``.
    """

    loss: torch.Tensor
    region_nmse: torch.Tensor
    ip: torch.Tensor
    rho: torch.Tensor
    accepted: torch.Tensor
    control: torch.Tensor

    def take(self, index: torch.Tensor) -> Scores:
        """The scores at ``index``."""
        return Scores(*(t[index] for t in self))

    @staticmethod
    def cat(parts: list[Scores]) -> Scores:
        return Scores(*(torch.cat(field) for field in zip(*parts, strict=True)))


class FnafEngine:
    """Scores FNAF candidates against one :class:`Reconstructor`.

    Args:
        estimator: the model and its forward operator.
        ip_epsilon: IP acceptance threshold on ``D`` (default 1e-4).
        batch_size: candidates per model batch.
    """

    def __init__(
        self,
        estimator: Reconstructor,
        *,
        ip_epsilon: float = 1e-4,
        batch_size: int = 16,
        precision: str = "fp32",
    ):
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        self.estimator = estimator
        self.ip_epsilon = float(ip_epsilon)
        self.batch_size = int(batch_size)
        self._clean: tuple[torch.Tensor, torch.Tensor] | None = None
        self._memo: tuple[torch.Tensor, dict] | None = None

    def autocast(self):
        """The model's precision context for the candidate search (a no-op for fp32)."""
        dtype = PRECISIONS[self.precision]
        device = self.estimator.device.type
        return torch.autocast(device, dtype=dtype, enabled=dtype is not None)

    def full_precision(self) -> FnafEngine:
        """An fp32 engine on the same model (for rescoring selected features)."""
        if self.precision == "fp32":
            return self
        return FnafEngine(self.estimator, ip_epsilon=self.ip_epsilon, batch_size=self.batch_size)

    def memo(self, ctx: SliceContext) -> dict:
        """A per-context store for search results several attacks share (e.g. ``fnaf-pgd``
        starts from exactly ``fnaf-rs``'s candidates); cleared when the context changes."""
        if self._memo is None or self._memo[0] is not ctx.kspace:
            self._memo = (ctx.kspace, {})
        return self._memo[1]

    def clean_reconstruction(self, ctx: SliceContext) -> torch.Tensor:
        """The model's reconstruction of each clean slice (cached per context).

        Shape:
            returns ``(B, h, w)``.
        """
        # Keep the k-space itself as the key: an id() could be reused after it is freed.
        if self._clean is None or self._clean[0] is not ctx.kspace:

            def run(start: int, stop: int) -> torch.Tensor:
                sl = slice(start, stop)
                return self.estimator.reconstruct(
                    ctx.kspace[sl] * ctx.mask[sl],
                    ctx.mask[sl],
                    num_low_frequencies=ctx.num_low_frequencies,
                    zero_filled=ctx.zero_filled[sl],
                )

            with torch.inference_mode():
                outs = self._chunked(ctx.num_slices, run)
            self._clean = (ctx.kspace, torch.cat(outs).float())
        return self._clean[1]

    def _prepare(self, ctx: SliceContext, features: FeatureBatch, probe=None):
        """Insertion, undersampling and IP for a chunk (no model call)."""
        si = features.slice_index
        d, support = paint(features, ctx.target_shape)
        if probe is not None:
            d = d + probe
        kspace, target = insert(ctx, si, d)
        mask = ctx.mask[si]
        masked = kspace * mask
        zf = center_crop(rss(ifft2c(masked), dim=1), ctx.target_shape)
        ip = ((zf - ctx.zero_filled[si]) / ctx.zf_std[si, None, None]).square().mean((-2, -1))
        delta = (kspace - ctx.kspace[si]).abs().square()
        rho = (delta * mask).sum((1, 2, 3)) / delta.sum((1, 2, 3)).clamp_min(1e-30)
        return fnaf_region(support), masked, mask, zf, target, ip, rho

    def _losses(self, ctx, si, recon, target, region):
        h, w = ctx.target_shape
        std = ctx.t_std[si, None, None]
        err = ((recon - target) / std).square() * region
        loss = err.sum((-2, -1)) / (h * w)
        ref = ((target - ctx.t_mean[si, None, None]) / std).square() * region
        return loss, err.sum((-2, -1)) / ref.sum((-2, -1)).clamp_min(1e-12)

    def _control(self, ctx, si, region):
        clean = self.clean_reconstruction(ctx)[si]
        return self._losses(ctx, si, clean, ctx.target[si], region)[0]

    def evaluate(self, ctx: SliceContext, features: FeatureBatch) -> Scores:
        """Score candidates (no gradients; IP-rejected candidates skip the model).

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
            empty = torch.empty(0, device=ctx.kspace.device)
            return Scores(empty, empty, empty, empty, empty.bool(), empty)
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

    def _evaluate_chunk(self, ctx: SliceContext, chunk: FeatureBatch) -> Scores:
        si = chunk.slice_index
        region, masked, mask, zf, target, ip, rho = self._prepare(ctx, chunk)
        accepted = ip >= self.ip_epsilon
        loss = torch.full_like(ip, float("nan"))
        rnmse = torch.full_like(ip, float("nan"))
        idx = accepted.nonzero().squeeze(1)
        if idx.numel():
            with self.autocast():
                recon = self.estimator.reconstruct(
                    masked[idx],
                    mask[idx],
                    num_low_frequencies=ctx.num_low_frequencies,
                    zero_filled=zf[idx],
                ).float()
            l_acc, n_acc = self._losses(ctx, si[idx], recon, target[idx], region[idx])
            loss[idx], rnmse[idx] = l_acc, n_acc
        return Scores(loss, rnmse, ip, rho, accepted, self._control(ctx, si, region))

    def loss_with_grad(
        self, ctx: SliceContext, features: FeatureBatch, probe: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Differentiable ``L`` and (detached) ``D`` of a batch of features, for white-box attacks.

        The caller sets ``features.values.requires_grad_()`` and wraps the call in
        :meth:`Reconstructor.evaluation`. ``probe`` (zeros with ``requires_grad``) is added to
        the painted features so its gradient gives ``∂L/∂d`` at every pixel.

        Shape:
            returns ``(N,)`` and ``(N,)``.
        """
        si = features.slice_index
        region, masked, mask, zf, target, ip, _ = self._prepare(ctx, features, probe)
        recon = self.estimator.reconstruct(
            masked, mask, num_low_frequencies=ctx.num_low_frequencies, zero_filled=zf
        ).float()
        return self._losses(ctx, si, recon, target, region)[0], ip.detach()


class Selection(NamedTuple):
    """The best IP-accepted candidate of each slice.

    Shape:
        index: ``(B,)`` position of the best candidate in the candidate batch (0 where none);
        found: ``(B,)`` bool, whether any candidate of that slice was accepted;
        evaluated, accepted: ``(B,)`` int counts.
    """

    index: torch.Tensor
    found: torch.Tensor
    evaluated: torch.Tensor
    accepted: torch.Tensor


def select_best(scores: Scores, slice_index: torch.Tensor, num_slices: int) -> Selection:
    """Per slice, the accepted candidate with the highest loss (ties: the first), on the device.

    Shape:
        scores: ``(N,)`` fields; slice_index: ``(N,)``.
    """
    device = scores.loss.device
    n = scores.loss.shape[0]
    key = torch.where(scores.accepted, scores.loss, torch.full_like(scores.loss, -float("inf")))
    best = torch.full((num_slices,), -float("inf"), device=device, dtype=key.dtype)
    best = best.scatter_reduce(0, slice_index, key, reduce="amax", include_self=True)
    is_best = (key == best[slice_index]) & scores.accepted
    position = torch.where(is_best, torch.arange(n, device=device), torch.full_like(slice_index, n))
    first = torch.full((num_slices,), n, device=device, dtype=torch.int64)
    first = first.scatter_reduce(0, slice_index, position, reduce="amin", include_self=True)
    ones = torch.ones(n, device=device, dtype=torch.int64)
    evaluated = torch.zeros(num_slices, device=device, dtype=torch.int64).index_add(
        0, slice_index, ones
    )
    accepted = torch.zeros_like(evaluated).index_add(0, slice_index, scores.accepted.long())
    found = first < n
    return Selection(torch.where(found, first, torch.zeros_like(first)), found, evaluated, accepted)
