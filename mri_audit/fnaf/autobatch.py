"""The default ``--batch-size`` (candidates per model batch): measured on a GPU, fixed on a CPU.

On a GPU the batch is sized from free memory: one slice's candidates are run through the engine
at two batch sizes, the difference in peak memory gives the bytes each extra candidate costs
(inference, and the gradient pass of ``fnaf-pgd`` when the audit needs gradients), and the batch
takes ``fraction`` of the free memory. The engine still halves its batch if it runs out.

On a CPU there is no transfer to amortise and large batches fall out of cache, while very small
ones leave the per-chunk bookkeeping uncovered: the batch holds about ``CPU_PIXELS`` k-space
pixels (4 candidates at 160x160, 1 at 320x320), which ran fastest in ``benchmarks/bench_fnaf.py``
(see ``benchmarks/RESULTS.md``).

Results never depend on the batch size (each candidate's random draws are keyed by seed, volume,
slice and candidate), so this choice changes speed only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from mri_audit.data.datasets import SliceBatch
from mri_audit.fnaf.engine import FnafEngine
from mri_audit.fnaf.features import prepare_context, random_walks
from mri_audit.models.estimator import Reconstructor
from mri_audit.mri.physics import MaskFunc, volume_seed

__all__ = ["CPU_PIXELS", "MAX_BATCH", "batch_from_memory", "cpu_batch", "choose_batch_size"]

logger = logging.getLogger(__name__)

#: k-space pixels per candidate batch on a CPU.
CPU_PIXELS = 4 * 160 * 160
#: The largest automatic batch (beyond it a GPU gains nothing and one chunk holds all slices).
MAX_BATCH = 256


def batch_from_memory(
    free_bytes: int,
    per_candidate: float,
    *,
    per_slice_grad: float = 0.0,
    candidates: int = 11,
    fraction: float = 0.5,
    cap: int = MAX_BATCH,
) -> int:
    """The largest batch whose model work fits in ``fraction`` of the free memory.

    A context holds ``ceil(2 * batch / candidates)`` slices (the auditor's plan), and the
    white-box refinement takes gradients through one feature per slice at once, so
    ``per_slice_grad`` counts ``2 / candidates`` per candidate. Batches of 8 or more are rounded
    down to a multiple of 8.

    Args:
        free_bytes: free device memory.
        per_candidate: bytes one more candidate costs without gradients.
        per_slice_grad: bytes one more slice costs in the gradient pass (0: not needed).
        candidates: candidates per slice.
        fraction: share of the free memory to plan for.
        cap: upper bound.
    """
    cost = max(float(per_candidate), 2.0 * float(per_slice_grad) / max(candidates, 1), 1.0)
    n = int(fraction * free_bytes // cost)
    n = max(1, min(cap, n))
    return n - n % 8 if n >= 8 else n


def cpu_batch(height: int, width: int) -> int:
    """Candidates per batch on a CPU for ``height x width`` k-space (1 to 16)."""
    return max(1, min(16, CPU_PIXELS // max(1, height * width)))


def _peak_bytes(device: torch.device, run) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    run()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def _measure(
    estimator: Reconstructor,
    probe: SliceBatch,
    mask_func: MaskFunc,
    *,
    gradient: bool,
    peak=_peak_bytes,
) -> tuple[float, float]:
    """Bytes per extra candidate (inference) and per extra slice (gradient pass) on CUDA.

    ``peak(device, run)`` runs ``run`` and returns the peak memory it allocated.
    """
    device = estimator.device
    batch = probe.to(device)
    ctx = prepare_context(
        batch.kspace[:1].expand(4, -1, -1, -1).contiguous(),
        target_shape=tuple(batch.target.shape[-2:]),
        volumes=[batch.volumes[0]] * 4,
        slices=[int(batch.slices[0])] * 4,
        mask_for=lambda v, n: mask_func(n, seed=volume_seed(v)),
    )
    sizes = (1, 4)

    def features(n: int):
        idx = torch.arange(n, device=device)
        return random_walks(ctx, idx % 4, idx, steps=(10, 100), seed=0)

    def infer(n: int) -> None:
        engine = FnafEngine(estimator, batch_size=n)
        with estimator.evaluation():
            engine.evaluate(ctx, features(n))

    peaks = [peak(device, lambda n=n: infer(n)) for n in sizes]
    per_candidate = max(0.0, (peaks[1] - peaks[0]) / (sizes[1] - sizes[0]))
    per_slice = 0.0
    if gradient:
        engine = FnafEngine(estimator)

        def grad(n: int) -> None:
            f = features(n)
            f = f._replace(values=f.values.detach().requires_grad_(True))
            with estimator.evaluation():
                scores = engine.scores_with_grad(ctx, f)
                torch.autograd.grad(scores.e.nansum(), [f.values])

        peaks = [peak(device, lambda n=n: grad(n)) for n in sizes]
        per_slice = max(0.0, (peaks[1] - peaks[0]) / (sizes[1] - sizes[0]))
    return per_candidate, per_slice


def choose_batch_size(
    estimators: Sequence[Reconstructor],
    probe: SliceBatch,
    mask_func: MaskFunc,
    *,
    gradient: bool,
    candidates: int = 11,
    fraction: float = 0.5,
) -> int:
    """The batch size for ``--batch-size auto`` (the same for every model of the audit).

    Args:
        estimators: the audited models (all on one device).
        probe: a batch whose first slice is measured.
        mask_func: the audit's mask function.
        gradient: whether an attack takes gradients through the model (``fnaf-pgd``).
        candidates: candidates per slice.
        fraction: share of the free GPU memory to plan for.
    """
    device = estimators[0].device
    if device.type != "cuda":
        return cpu_batch(*probe.kspace.shape[-2:])
    per_candidate = per_slice = 0.0
    for est in estimators:
        c, s = _measure(est, probe, mask_func, gradient=gradient)
        per_candidate, per_slice = max(per_candidate, c), max(per_slice, s)
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    size = batch_from_memory(
        free,
        per_candidate,
        per_slice_grad=per_slice,
        candidates=candidates,
        fraction=fraction,
    )
    logger.info(
        "batch size %d: %.1f MiB per candidate, %.1f MiB per gradient slice, %.1f GiB free",
        size,
        per_candidate / 2**20,
        per_slice / 2**20,
        free / 2**30,
    )
    return size
