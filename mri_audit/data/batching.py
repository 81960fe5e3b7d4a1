"""Slices stacked into batches: :class:`SliceBatch`, :func:`collate`, :func:`iter_batches`.

:func:`iter_batches` batches only a dataset's valid slices unless told which indices to batch, so
an invalid slice (see :mod:`mri_audit.data.checks`) never reaches a model by default.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch

if TYPE_CHECKING:
    from mri_audit.data.datasets import SliceSample

__all__ = ["SliceBatch", "collate", "iter_batches", "take_slices", "valid_indices"]


class SliceBatch(NamedTuple):
    """Slices of equal shape stacked into a batch.

    Shape:
        kspace: ``(B, coils, H, W)`` complex64; target: ``(B, h, w)`` float32;
        max_values: ``(B,)`` float32.
    """

    kspace: torch.Tensor
    target: torch.Tensor
    volumes: list[str]
    slices: list[int]
    max_values: torch.Tensor

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> SliceBatch:
        """The same batch with its tensors on ``device``."""
        return self._replace(
            kspace=self.kspace.to(device, non_blocking=non_blocking),
            target=self.target.to(device, non_blocking=non_blocking),
            max_values=self.max_values.to(device, non_blocking=non_blocking),
        )

    @property
    def batch_size(self) -> int:
        """The number of slices in the batch."""
        return len(self.volumes)


def collate(samples: Sequence[SliceSample]) -> SliceBatch:
    """Stack samples into a :class:`SliceBatch` (usable as a DataLoader ``collate_fn``).

    Raises:
        ValueError: no samples, or samples whose k-space or target shapes differ.
    """
    if not samples:
        raise ValueError("cannot collate an empty list of slices")
    k_shapes = {tuple(s.kspace.shape) for s in samples}
    t_shapes = {tuple(s.target.shape) for s in samples}
    if len(k_shapes) > 1 or len(t_shapes) > 1:
        raise ValueError(
            f"cannot batch slices of different shapes: k-space {sorted(k_shapes)}, "
            f"target {sorted(t_shapes)}; use iter_batches to group them by shape"
        )
    return SliceBatch(
        kspace=torch.stack([s.kspace for s in samples]),
        target=torch.stack([s.target for s in samples]),
        volumes=[s.volume for s in samples],
        slices=[int(s.slice) for s in samples],
        max_values=torch.tensor([s.max_value for s in samples], dtype=torch.float32),
    )


def valid_indices(dataset: Sequence[SliceSample]) -> list[int]:
    """The indices of ``dataset``'s valid slices (all of them for a dataset without checks)."""
    if hasattr(dataset, "valid_indices"):
        return list(dataset.valid_indices())
    return list(range(len(dataset)))


def iter_batches(
    dataset: Sequence[SliceSample], batch_size: int, indices: Sequence[int] | None = None
) -> Iterator[SliceBatch]:
    """Batches of up to ``batch_size`` consecutive slices; a change of shape starts a new batch.

    Args:
        dataset: the slices.
        batch_size: most slices per batch.
        indices: the dataset indices to batch, in order; None for its valid slices
            (:func:`valid_indices`), so invalid slices are never batched by default.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    group: list[SliceSample] = []
    key = None
    for i in valid_indices(dataset) if indices is None else indices:
        sample = dataset[i]
        sample_key = (tuple(sample.kspace.shape), tuple(sample.target.shape))
        if group and (sample_key != key or len(group) == batch_size):
            yield collate(group)
            group = []
        group.append(sample)
        key = sample_key
    if group:
        yield collate(group)


def take_slices(batch: SliceBatch, index: list[int]) -> SliceBatch:
    """The slices of a batch at ``index``."""
    idx = torch.as_tensor(index, device=batch.kspace.device)
    return SliceBatch(
        batch.kspace[idx],
        batch.target[idx],
        [batch.volumes[i] for i in index],
        [batch.slices[i] for i in index],
        batch.max_values[idx],
    )
