"""Per-slice checks of fastMRI data, run once when a dataset is opened.

A slice is *invalid* (skipped by the audit with its reason, never given to a model) when:

- its k-space grid or its target is smaller than :data:`MIN_SIDE` pixels on a side
  (``"slice 1x64 is too small (at least 8x8)"``); SSIM's 7x7 window needs at least 8;
- its k-space holds NaN or Inf (:data:`KSPACE_NONFINITE`);
- its k-space is zero everywhere (:data:`KSPACE_ZERO`);
- its target holds NaN or Inf (:data:`TARGET_NONFINITE`).

The first of these that applies is the slice's reason. :func:`scan_volume` reads a file's k-space
and target in chunks of whole slices (at most about :data:`CHUNK_BYTES` at a time, at least one
slice), each slice once, so a large multi-coil file is never held whole in memory. The same pass
computes the volume's target maximum when the file has no ``max`` attribute.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import h5py
import numpy as np
import torch

from mri_audit.data.fastmri_io import VolumeInfo
from mri_audit.errors import DataError
from mri_audit.mri.physics import center_crop, ifft2c, rss

__all__ = [
    "CHUNK_BYTES",
    "KSPACE_NONFINITE",
    "KSPACE_ZERO",
    "MIN_SIDE",
    "TARGET_NONFINITE",
    "VolumeScan",
    "check_volumes",
    "rss_target",
    "scan_volume",
    "size_reason",
    "summarize",
    "volume_problem",
]

logger = logging.getLogger(__name__)

MIN_SIDE = 8
CHUNK_BYTES = 64 * 2**20
KSPACE_NONFINITE = "NaN or Inf in the k-space"
KSPACE_ZERO = "all-zero k-space"
TARGET_NONFINITE = "NaN or Inf in the target"


class VolumeScan(NamedTuple):
    """What :func:`scan_volume` learns about one file.

    Attributes:
        reasons: slice index -> reason, for the invalid slices among those asked (valid ones are
            absent).
        peak: the largest finite target value over all the volume's slices, when asked (None
            otherwise, or when no slice has a finite target value).
    """

    reasons: dict[int, str]
    peak: float | None


def size_reason(kspace_hw: Sequence[int], target_hw: Sequence[int]) -> str | None:
    """The reason a slice of this k-space grid and target size is too small, or None."""
    for what, (h, w) in (("slice", kspace_hw[-2:]), ("target", target_hw[-2:])):
        if min(int(h), int(w)) < MIN_SIDE:
            return f"{what} {int(h)}x{int(w)} is too small (at least {MIN_SIDE}x{MIN_SIDE})"
    return None


def rss_target(kspace: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Centre-cropped RSS of the fully-sampled coil images (the fallback target).

    Shape:
        kspace: ``(coils, H, W)`` complex; returns ``(h, w)`` float32.
    """
    image = rss(ifft2c(kspace.to(torch.complex128)), dim=0)
    return center_crop(image, shape).to(torch.float32).contiguous()


def summarize(reasons: dict[int, str] | Sequence[str]) -> dict[str, int]:
    """``{reason: count}``, most frequent first (ties by reason)."""
    values = list(reasons.values()) if isinstance(reasons, dict) else list(reasons)
    counts: dict[str, int] = {}
    for r in values:
        counts[r] = counts.get(r, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _runs(indices: Sequence[int], size: int) -> Iterator[tuple[int, int]]:
    """``[start, stop)`` ranges covering sorted ``indices``, contiguous, at most ``size`` long."""
    run: list[int] = []
    for i in sorted(set(indices)):
        if run and (i != run[-1] + 1 or len(run) == size):
            yield run[0], run[-1] + 1
            run = []
        run.append(i)
    if run:
        yield run[0], run[-1] + 1


def _read(dataset: h5py.Dataset, start: int, stop: int, dtype: type) -> np.ndarray:
    """Slices ``start:stop`` of an HDF5 dataset, as ``dtype`` (one read)."""
    return np.asarray(dataset[start:stop], dtype=dtype)


def scan_volume(
    vol: VolumeInfo,
    slices: Sequence[int],
    *,
    want_peak: bool = False,
    chunk_bytes: int | None = None,
) -> VolumeScan:
    """Check the slices ``slices`` of one file (and find its target maximum if ``want_peak``).

    Args:
        vol: the file, as :func:`~mri_audit.data.fastmri_io.inspect_file` validated it.
        slices: the slice indices to check (the ones the dataset keeps).
        want_peak: also compute the largest finite target value over *every* slice of the
            volume (fastMRI's ``max``), reading all slices in the same single pass.
        chunk_bytes: about how many bytes of k-space and target to hold at once (at least one
            slice); None for :data:`CHUNK_BYTES`.

    Raises:
        DataError: the file's data cannot be read.
    """
    size = size_reason(vol.kspace_shape, vol.target_shape)
    if size is not None:
        return VolumeScan({int(s): size for s in slices}, None)
    kept = {int(s) for s in slices}
    todo = range(vol.num_slices) if want_peak else sorted(kept)
    row_bytes = math.prod(vol.kspace_shape) * 8 + math.prod(vol.target_shape) * 4
    reasons: dict[int, str] = {}
    peak: float | None = None
    try:
        with h5py.File(vol.path, "r", locking=False) as hf:
            per_chunk = max(1, (chunk_bytes or CHUNK_BYTES) // row_bytes)
            for start, stop in _runs(todo, per_chunk):
                kspace = _read(hf["kspace"], start, stop, np.complex64)
                flat = kspace.reshape(stop - start, -1)
                k_finite = np.isfinite(flat).all(axis=1)
                k_nonzero = flat.any(axis=1)
                if vol.target_key is not None:
                    target = _read(hf[vol.target_key], start, stop, np.float32)
                else:
                    target = _fallback_targets(kspace, vol, k_finite)
                del kspace, flat
                for row, s in enumerate(range(start, stop)):
                    t = target[row]
                    t_finite = bool(np.isfinite(t).all())
                    if s in kept:
                        reason = _reason(bool(k_finite[row]), bool(k_nonzero[row]), t_finite)
                        if reason is not None:
                            reasons[s] = reason
                    if want_peak and k_finite[row]:
                        finite = t if t_finite else t[np.isfinite(t)]
                        if finite.size:
                            peak = max(peak or 0.0, float(finite.max()))
    except (OSError, KeyError, ValueError) as err:
        raise DataError(
            f"{vol.path}: cannot read its slices ({err}); re-download or re-create the file"
        ) from None
    return VolumeScan(reasons, peak)


def _reason(k_finite: bool, k_nonzero: bool, t_finite: bool) -> str | None:
    if not k_finite:
        return KSPACE_NONFINITE
    if not k_nonzero:
        return KSPACE_ZERO
    if not t_finite:
        return TARGET_NONFINITE
    return None


def _fallback_targets(kspace: np.ndarray, vol: VolumeInfo, finite: np.ndarray) -> np.ndarray:
    """RSS targets of a chunk (zeros where the k-space is not finite: never used)."""
    out = np.zeros((kspace.shape[0], *vol.target_shape), np.float32)
    for row in range(kspace.shape[0]):
        if finite[row]:
            k = torch.from_numpy(kspace[row].reshape(vol.kspace_shape))
            out[row] = rss_target(k, vol.target_shape).numpy()
    return out


def volume_problem(vol: VolumeInfo, slices: Sequence[int], scan: VolumeScan) -> str | None:
    """Why a scanned file cannot be used as a whole (without its path), or None if it can.

    Args:
        vol: the file, as :func:`~mri_audit.data.fastmri_io.inspect_file` validated it.
        slices: the slice indices that were scanned (the ones a dataset keeps).
        scan: :func:`scan_volume` of those slices, with ``want_peak`` when the file has no
            ``max`` attribute.

    Returns:
        One line with the problem and its fix: no valid slice among ``slices``, or (without a
        ``max`` attribute) no finite positive target anywhere; None for a usable file.
    """
    if len(scan.reasons) == len(slices):
        counts = "; ".join(f"{r}: {n}" for r, n in summarize(scan.reasons).items())
        return (
            f"none of its {len(slices)} slices to audit is valid ({counts}); "
            "fix the file or remove it from the data"
        )
    if "max" not in vol.attrs and (scan.peak is None or not scan.peak > 0):
        return (
            "the target is zero or not finite in every slice and there is no 'max' attribute, "
            "so the metrics have no data range; re-create the file or add its 'max' attribute"
        )
    return None


def check_volumes(
    volumes: Sequence[VolumeInfo], kept: Sequence[Sequence[int]]
) -> tuple[dict[int, str], dict[int, float]]:
    """Scan every file's kept slices once, in dataset order.

    Args:
        volumes: the files, validated by :func:`~mri_audit.data.fastmri_io.inspect_file`.
        kept: for each file, the slice indices the dataset keeps (its items, in order).

    Returns:
        ``(invalid, peaks)``: dataset index -> reason for each invalid item, and volume index ->
        target maximum for each file without a ``max`` attribute.

    Raises:
        DataError: a file with no valid slice, or (without a ``max`` attribute) a target that is
            zero or not finite in every slice; or unreadable data.
    """
    invalid: dict[int, str] = {}
    peaks: dict[int, float] = {}
    first = 0
    for v, (vol, slices) in enumerate(zip(volumes, kept, strict=True)):
        want_peak = "max" not in vol.attrs
        scan = scan_volume(vol, slices, want_peak=want_peak)
        problem = volume_problem(vol, slices, scan)
        if problem is not None:
            raise DataError(f"{vol.path}: {problem}")
        if want_peak:
            peaks[v] = scan.peak
        counts = "; ".join(f"{r}: {n}" for r, n in summarize(scan.reasons).items())
        if scan.reasons:
            logger.warning(
                "%s: %d of %d slices will be skipped (%s)",
                vol.path,
                len(scan.reasons),
                len(slices),
                counts,
            )
        for i, s in enumerate(slices):
            if s in scan.reasons:
                invalid[first + i] = scan.reasons[s]
        first += len(slices)
    return invalid, peaks
