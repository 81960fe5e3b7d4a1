"""Opening the data of a command: the dataset, every slice checked, and the dry-run slice."""

from __future__ import annotations

import os

from mri_audit.data.batching import SliceBatch, collate, valid_indices
from mri_audit.data.datasets import open_dataset
from mri_audit.errors import DataError

__all__ = ["open_data", "probe_batch"]


def probe_batch(dataset, source: str | None = None) -> SliceBatch:
    """A one-slice batch for the model dry run: the dataset's first *valid* slice.

    A slice with NaN/Inf or all-zero k-space would make a sound model look broken, so the dry
    run never uses one.

    Raises:
        DataError: the dataset has no valid slice.
    """
    valid = valid_indices(dataset)
    if not valid:
        raise DataError(f"no slice to audit in {source or 'the data'} (every slice is invalid)")
    return collate([dataset[valid[0]]])


def open_data(data, max_volumes: int | None = None, max_slices: int | None = None):
    """The dataset (every slice checked), and a one-slice probe batch for the model dry run.

    Args:
        data: a fastMRI ``.h5`` file or folder, None for the built-in phantoms, or a dataset
            object already open (``max_volumes``/``max_slices`` then do not apply).
    """
    if data is not None and not isinstance(data, (str, os.PathLike)):
        return data, probe_batch(data)
    dataset = open_dataset(data, max_volumes=max_volumes, max_slices=max_slices)
    if len(dataset) == 0:
        raise DataError(f"no slices to audit in {data or 'the built-in set'}")
    return dataset, probe_batch(dataset, data or "the built-in set")
