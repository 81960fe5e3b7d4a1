"""The data of a ``harden`` run: training slices, the held-out ``select`` slices the kept weights
are chosen on, and the held-out slices the before/after audit reports, never the same volumes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["datasets"]


def datasets(opts: Mapping[str, Any]):
    """``(train, select, report)``: training data, the held-out slices the kept epoch or blend is
    chosen on, and the held-out slices the before/after audit reports (never the same).

    Args:
        opts: the checked settings ``data``, ``val_data``, ``max_volumes`` and ``max_slices``.

    Raises:
        ValueError: ``val_data`` shares files with ``data``, or ``data`` has too few volumes to
            hold out a selection and a report part (a usage error, exit 2).
    """
    from mri_audit.data.datasets import (
        BUILTIN_SELECT,
        BUILTIN_TRAIN,
        BUILTIN_VAL,
        SliceDataset,
        SyntheticDataset,
    )
    from mri_audit.data.fastmri_io import resolve_files

    lim = {"max_volumes": opts["max_volumes"], "max_slices": opts["max_slices"]}
    val_lim = {"max_slices": opts["max_slices"]}
    if opts["data"] is None:
        train = SyntheticDataset(split="train", **BUILTIN_TRAIN, **lim)
        select = SyntheticDataset(split="select", **BUILTIN_SELECT, **val_lim)
        report = (
            SliceDataset(opts["val_data"], **val_lim)
            if opts["val_data"] is not None
            else SyntheticDataset(split="val", **BUILTIN_VAL, **val_lim)
        )
        return train, select, report
    files = resolve_files(opts["data"])
    if opts["val_data"] is not None:
        shared = {p.resolve() for p in files} & {
            p.resolve() for p in resolve_files(opts["val_data"])
        }
        if shared:
            raise ValueError(
                f"--val-data shares {len(shared)} file(s) with --data (e.g. "
                f"{sorted(shared)[0].name}): the before/after audit must report volumes the "
                "model was neither trained nor chosen on"
            )
    parts = 2 if opts["val_data"] is not None else 3
    if len(files) < parts:
        need = "a second one to choose the kept weights on" if parts == 2 else "two held out"
        raise ValueError(
            f"--data needs at least {parts} volumes ({need}: one to choose the kept weights "
            "on, one for the before/after audit); or give more volumes"
        )
    held = max(1, len(files) // 10)
    if opts["val_data"] is not None:
        train = SliceDataset(files[:-held], **lim)
        return (
            train,
            SliceDataset(files[-held:], **val_lim),
            SliceDataset(opts["val_data"], **val_lim),
        )
    train = SliceDataset(files[: -2 * held], **lim)
    select = SliceDataset(files[-2 * held : -held], **val_lim)
    return train, select, SliceDataset(files[-held:], **val_lim)
