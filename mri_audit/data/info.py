"""``mri-audit data info``: every file of a fastMRI source checked and described, good or bad.

Opening a :class:`~mri_audit.data.datasets.SliceDataset` stops at the first bad file (an audit
cannot use a
folder with one). ``data info`` instead checks every file the same way — the metadata
(:func:`~mri_audit.data.fastmri_io.inspect_file`), then every kept slice
(:func:`~mri_audit.data.checks.scan_volume`) — and reports each one: usable or its one-line
problem, its slices, k-space grid, target key and invalid slices.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from mri_audit.data.checks import scan_volume, summarize, volume_problem
from mri_audit.data.datasets import central_slices
from mri_audit.data.fastmri_io import VolumeInfo, inspect_file, resolve_files
from mri_audit.errors import DataError

__all__ = ["FileReport", "inspect_files"]

COMPUTED_RSS = "computed RSS"
"""The target of a file without ``reconstruction_esc`` / ``reconstruction_rss``."""


class FileReport(NamedTuple):
    """What ``data info`` learns about one file.

    Attributes:
        path: the file.
        problem: why the file cannot be used (one line with its fix, without the path), or None.
        volume: its metadata, when it could be read (None when the problem is in the metadata).
        slices: the slices checked (the central ``max_slices``, or all).
        invalid: invalid slices among those, ``{reason: count}`` (most frequent first).
    """

    path: Path
    problem: str | None
    volume: VolumeInfo | None
    slices: int
    invalid: dict[str, int]

    @property
    def ok(self) -> bool:
        """Whether an audit can use the file."""
        return self.problem is None

    @property
    def target(self) -> str | None:
        """``reconstruction_esc``, ``reconstruction_rss`` or :data:`COMPUTED_RSS` (None when the
        metadata could not be read)."""
        if self.volume is None:
            return None
        return self.volume.target_key or COMPUTED_RSS


def inspect_files(
    source: str | os.PathLike,
    *,
    max_volumes: int | None = None,
    max_slices: int | None = None,
) -> list[FileReport]:
    """Check every file of ``source``, as opening it for an audit would, without stopping.

    Args:
        source: a ``.h5`` file or a folder of them (non-recursive).
        max_volumes: only the first ``max_volumes`` files.
        max_slices: only the ``max_slices`` central slices of each file.

    Returns:
        One report per file, in name order.

    Raises:
        DataError: ``source`` is missing or holds no ``.h5`` file.
    """
    return [_inspect(path, max_slices) for path in resolve_files(source)[:max_volumes]]


def _inspect(path: Path, max_slices: int | None) -> FileReport:
    try:
        with _quiet_missing_target():  # the file's line names its computed target
            vol = inspect_file(path)
    except DataError as err:
        return FileReport(path, _without_path(err, path), None, 0, {})
    kept = central_slices(vol.num_slices, max_slices)
    try:
        scan = scan_volume(vol, kept, want_peak="max" not in vol.attrs)
    except DataError as err:
        return FileReport(path, _without_path(err, path), vol, len(kept), {})
    problem = volume_problem(vol, kept, scan)
    return FileReport(path, problem, vol, len(kept), summarize(scan.reasons))


def _without_path(err: DataError, path: Path) -> str:
    """The error's message without its leading ``"<path>: "``."""
    message = " ".join(str(err).split())
    prefix = f"{path}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


class _DropMissingTarget(logging.Filter):
    """Drops :func:`~mri_audit.data.fastmri_io.inspect_file`'s warning about a missing target."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "no reconstruction_esc/reconstruction_rss target" not in record.getMessage()


@contextlib.contextmanager
def _quiet_missing_target() -> Iterator[None]:
    logger = logging.getLogger("mri_audit.data.fastmri_io")
    drop = _DropMissingTarget()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)
