"""Stochastic and batch-coupled models: how the model is called, reproducibly (DESIGN §3).

A *stochastic* model (posterior sampling, MC dropout, test-time augmentation) draws noise in its
forward pass; a *batch-coupled* one lets batch items see each other (batch statistics). Either
would make an audit's records follow torch's global random stream or the batch layout, not the
model. :class:`ModelCall` holds what the dry run found (:mod:`mri_audit.models.behaviour`) and
calls the model so that neither can happen:

- a batch-coupled model runs one item per forward pass;
- every forward pass of a stochastic model runs under a noise seed keyed by (seed, item key,
  sample), where the item key is (volume, slice): the clean reconstruction and every candidate
  of a slice share one noise stream per sample (common random numbers). A model whose
  ``forward`` takes ``generator=`` gets one ``torch.Generator`` per item and stays batched;
  any other runs per item with torch's global generator seeded for it, the global state saved
  and restored around the call.

Records are then identical for the same seed whatever the batch size, the other volumes, the
process count or the order.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from mri_audit.rng import mix_seed

__all__ = ["ModelCall", "accepts_generator", "item_keys", "reconstruct_samples", "CONFIRM_STREAM"]

CONFIRM_STREAM = 1
"""The noise stream of the confirmation re-score (fresh seeds, independent of the search's)."""


def accepts_generator(model: torch.nn.Module) -> bool:
    """Whether ``model.forward`` takes a ``generator`` keyword (one generator per batch item)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError, AttributeError):
        return False
    return "generator" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def item_keys(volume_keys: torch.Tensor, slices: torch.Tensor) -> list[int]:
    """One integer key per item from its volume key and slice number (the noise's key).

    Shape:
        volume_keys, slices: ``(N,)`` integers.
    """
    pairs = zip(volume_keys.tolist(), slices.tolist(), strict=True)
    return [mix_seed(int(v), int(s)) for v, s in pairs]


def reconstruct_samples(
    estimator,
    volume_keys: torch.Tensor,
    slices: torch.Tensor,
    run: Callable[[], torch.Tensor],
    *,
    stream: int = 0,
) -> torch.Tensor:
    """``run()`` (one reconstruction of a batch) once per sample of ``estimator``, each under the
    items' noise keys; once, unkeyed, for a deterministic model.

    Shape:
        volume_keys, slices: ``(N,)``; returns ``(S, N, h, w)`` float.
    """
    call = estimator.call
    if call.plain:
        return run().float().unsqueeze(0)
    keys = item_keys(volume_keys, slices)
    outs = []
    for sample in range(max(1, int(estimator.samples))):
        with call.noise(keys, sample=sample, stream=stream):
            outs.append(run().float())
    return torch.stack(outs)


@dataclass
class ModelCall:
    """How to call a model: batched as it is, per item, or under keyed noise.

    Attributes:
        stochastic: the model draws noise in its forward pass.
        coupled: batch items influence each other.
        generator: ``forward`` takes ``generator=`` (a list, one per item).
        seed: the audit's seed (the first part of every noise key).
    """

    stochastic: bool = False
    coupled: bool = False
    generator: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        self._keys: list[int] | None = None
        self._sample = 0
        self._stream = 0

    @property
    def plain(self) -> bool:
        """The model is called as it is (deterministic and batch-independent)."""
        return not (self.stochastic or self.coupled)

    @contextlib.contextmanager
    def noise(self, keys: Sequence[int] | None, *, sample: int = 0, stream: int = 0):
        """Inside the block, items are keyed by ``keys`` (one per batch item; None: every item
        keyed 0) and draw sample ``sample`` of noise stream ``stream``."""
        saved = self._keys, self._sample, self._stream
        self._keys, self._sample, self._stream = (
            None if keys is None else list(keys),
            sample,
            stream,
        )
        try:
            yield
        finally:
            self._keys, self._sample, self._stream = saved

    def seeds(self, n: int) -> list[int]:
        """The noise seed of each of ``n`` items under the current keys, sample and stream."""
        keys = self._keys if self._keys is not None else [0] * n
        if len(keys) != n:
            raise ValueError(f"{len(keys)} noise keys for a batch of {n}")
        return [mix_seed(self.seed, k, self._sample, self._stream) for k in keys]

    def __call__(self, model: Callable, args: Sequence[torch.Tensor], **kwargs) -> torch.Tensor:
        """``model(*args, **kwargs)`` as this call says; ``args`` are batched tensors."""
        if self.plain:
            return model(*args, **kwargs)
        n = args[0].shape[0]
        device = args[0].device
        if self.stochastic and self.generator and not self.coupled:
            gens = [torch.Generator(device=device).manual_seed(s) for s in self.seeds(n)]
            return model(*args, generator=gens, **kwargs)
        seeds = self.seeds(n) if self.stochastic else [None] * n
        outs = []
        for i, seed in enumerate(seeds):
            item = [a[i : i + 1] for a in args]
            if seed is None:
                outs.append(model(*item, **kwargs))
                continue
            extra = {}
            if self.generator:
                extra["generator"] = [torch.Generator(device=device).manual_seed(seed)]
            with _seeded(seed, device):
                outs.append(model(*item, **kwargs, **extra))
        return torch.cat(outs)


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """torch's global generators (CPU and the item's GPU) seeded, then restored."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type="cuda"):
        torch.manual_seed(seed)
        yield
