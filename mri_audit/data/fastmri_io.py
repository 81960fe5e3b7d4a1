"""The fastMRI HDF5 format: ISMRMRD headers, file discovery and metadata-only validation.

fastMRI raw files hold ``kspace`` (``(slices, H, W)`` single-coil or ``(slices, coils, H, W)``
multi-coil, complex64), the reference ``reconstruction_esc`` (single-coil) or
``reconstruction_rss`` (multi-coil) ``(slices, h, w)``, attrs ``max``, ``norm``, ``acquisition``,
``patient_id``, and an ``ismrmrd_header`` XML whose encoding sizes fastMRI's own ``SliceDataset``
parses. Validation problems raise :class:`~mri_audit.errors.DataError` with one line naming the
file and the fix.

Of the attrs, only ``max`` is used (as the metrics' data range): it must be a finite positive real
scalar when present. ``norm``, ``acquisition`` and ``patient_id`` are carried as metadata only, and
the header's encoding sizes (used for the fallback target size) must lie in
``1..MAX_HEADER_SIZE``. Per-slice checks of the data itself live in :mod:`mri_audit.data.checks`.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np

from mri_audit.errors import DataError

__all__ = [
    "ISMRMRD_NS",
    "MAX_HEADER_SIZE",
    "TARGET_KEYS",
    "VolumeInfo",
    "ismrmrd_header",
    "parse_ismrmrd_header",
    "inspect_file",
    "resolve_files",
    "plain",
    "max_attr_problem",
]

logger = logging.getLogger(__name__)

ISMRMRD_NS = "http://www.ismrm.org/ISMRMRD"
TARGET_KEYS = ("reconstruction_esc", "reconstruction_rss")
_PIXEL_MM = 0.4375  # fastMRI knee: 140 mm over 320 px
MAX_HEADER_SIZE = 65536  # a header matrix size above this is corrupt, not a scanner's


def ismrmrd_header(kspace_shape: Sequence[int], size: int | Sequence[int], slices: int) -> bytes:
    """A minimal ISMRMRD XML header that fastMRI's ``SliceDataset`` can parse.

    Args:
        kspace_shape: the k-space grid ``(H, W)`` (``encodedSpace``; ``x`` = H, ``y`` = W).
        size: the target size (``reconSpace``), an int or ``(h, w)``.
        slices: number of slices (``encodingLimits/slice``).
    """
    kh, kw = int(kspace_shape[0]), int(kspace_shape[1])
    rh, rw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def space(tag: str, x: int, y: int) -> str:
        return (
            f"<{tag}><matrixSize><x>{x}</x><y>{y}</y><z>1</z></matrixSize>"
            f"<fieldOfView_mm><x>{x * _PIXEL_MM:.4f}</x><y>{y * _PIXEL_MM:.4f}</y>"
            f"<z>3.0000</z></fieldOfView_mm></{tag}>"
        )

    def limit(tag: str, maximum: int, center: int) -> str:
        return (
            f"<{tag}><minimum>0</minimum><maximum>{maximum}</maximum>"
            f"<center>{center}</center></{tag}>"
        )

    xml = (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<ismrmrdHeader xmlns="{ISMRMRD_NS}"><encoding>'
        + space("encodedSpace", kh, kw)
        + space("reconSpace", rh, rw)
        + "<encodingLimits>"
        + limit("kspace_encoding_step_1", kw - 1, kw // 2)
        + limit("kspace_encoding_step_2", 0, 0)
        + limit("slice", slices - 1, (slices - 1) // 2)
        + "</encodingLimits><trajectory>cartesian</trajectory></encoding></ismrmrdHeader>"
    )
    return xml.encode("utf-8")


def plain(value: Any) -> Any:
    """h5py/numpy attribute values as plain python (for JSON and pickling).

    Strings, numbers, booleans and (nested) lists of them come back as such; anything else (an
    HDF5 reference, a compound record) as its ``repr``, so metadata can never break a later step.
    """
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()] if value.ndim else plain(value.item())
    if isinstance(value, np.generic):
        return plain(value.item())
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return repr(value)


def max_attr_problem(value: Any) -> str | None:
    """What is wrong with a raw ``max`` attribute value, or None when it is usable.

    Usable means a finite positive real scalar (an int or float, numpy's included); 0, NaN, inf,
    negative numbers, strings, bytes, booleans, complex numbers and arrays are not.
    """
    if isinstance(value, np.ndarray):
        if value.ndim:
            return f"an array of shape {tuple(value.shape)}"
        value = value[()]
    if isinstance(value, (bytes, np.bytes_, str)):
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        return f"the string {text[:40]!r}"
    if isinstance(value, (complex, np.complexfloating)):
        return f"the complex number {value}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        return f"a {type(value).__name__}, not a number"
    number = float(value)
    if not np.isfinite(number) or number <= 0:
        return f"{number:g}" if np.isfinite(number) else str(number)
    return None


def parse_ismrmrd_header(header: bytes | str) -> dict[str, Any]:
    """Encoding sizes from an ISMRMRD XML header, as fastMRI's ``SliceDataset`` reads them.

    Returns:
        ``encoding_size`` and ``recon_size`` (``(x, y, z)``), ``padding_left`` and
        ``padding_right``; an empty dict when the header cannot be parsed.
    """
    try:
        root = ET.fromstring(header)

        def query(*path: str) -> int:
            node = root.find(".//" + "//".join(f"m:{p}" for p in path), {"m": ISMRMRD_NS})
            if node is None or node.text is None:
                raise ValueError(f"no {'/'.join(path)}")
            return int(node.text)

        enc = tuple(query("encoding", "encodedSpace", "matrixSize", a) for a in "xyz")
        rec = tuple(query("encoding", "reconSpace", "matrixSize", a) for a in "xyz")
        lims = ("encoding", "encodingLimits", "kspace_encoding_step_1")
        center, maximum = query(*lims, "center"), query(*lims, "maximum") + 1
    except (ET.ParseError, ValueError, TypeError):
        return {}
    padding_left = enc[1] // 2 - center
    return {
        "encoding_size": enc,
        "recon_size": rec,
        "padding_left": padding_left,
        "padding_right": padding_left + maximum,
    }


class VolumeInfo(NamedTuple):
    """What validation learns about one file, from metadata only."""

    path: Path
    num_slices: int
    kspace_shape: tuple[int, ...]  # (coils, H, W)
    target_key: str | None
    target_shape: tuple[int, int]
    attrs: dict


def _fail(path: Path, problem: str, fix: str) -> DataError:
    return DataError(f"{path}: {problem}; {fix}")


def inspect_file(path: Path) -> VolumeInfo:
    """Validate one fastMRI file with h5py metadata only (no bulk reads)."""
    try:
        hf = h5py.File(path, "r", locking=False)
    except OSError as err:
        reason = str(err).split("(", 1)[-1].rstrip(")") if "(" in str(err) else str(err)
        raise _fail(
            path, f"not a readable HDF5 file ({reason})", "re-download or re-create the file"
        ) from None
    with hf:
        if "kspace" not in hf or not isinstance(hf["kspace"], h5py.Dataset):
            raise _fail(
                path,
                "no 'kspace' dataset",
                "give a fastMRI file ('kspace' plus 'reconstruction_esc' or 'reconstruction_rss')",
            )
        ds = hf["kspace"]
        if ds.ndim not in (3, 4):
            raise _fail(
                path,
                f"k-space has shape {ds.shape}",
                "expected (slices, H, W) single-coil or (slices, coils, H, W) multi-coil",
            )
        if ds.dtype.kind != "c":
            raise _fail(path, f"k-space is {ds.dtype}, not complex", "store it as complex64")
        shape = ds.shape if ds.ndim == 4 else (ds.shape[0], 1, *ds.shape[1:])
        num_slices, grid = int(shape[0]), (int(shape[2]), int(shape[3]))
        if num_slices < 1 or min(shape[1:]) < 1:
            raise _fail(path, f"k-space is empty (shape {ds.shape})", "re-create the file")
        attrs = _read_attrs(path, hf)
        if "ismrmrd_header" in hf:
            try:
                header = parse_ismrmrd_header(hf["ismrmrd_header"][()])
            except (OSError, TypeError) as err:
                logger.debug("%s: unreadable ismrmrd_header (%s)", path, err)
            else:
                _check_header_sizes(path, header)
                attrs.update(header)
        preferred = TARGET_KEYS if ds.ndim == 3 else TARGET_KEYS[::-1]
        target_key = next((k for k in preferred if k in hf), None)
        if target_key is not None:
            target = hf[target_key]
            if target.ndim != 3 or target.shape[0] != num_slices:
                raise _fail(
                    path,
                    f"{target_key} has shape {target.shape} for {num_slices} k-space slices",
                    "expected (slices, h, w) with one target per k-space slice",
                )
            target_shape = (int(target.shape[1]), int(target.shape[2]))
        else:
            logger.warning(
                "%s: no reconstruction_esc/reconstruction_rss target; using the centre-cropped "
                "RSS of the fully-sampled k-space instead",
                path,
            )
            recon = attrs.get("recon_size")
            fits = recon is not None and recon[0] <= grid[0] and recon[1] <= grid[1]
            target_shape = (recon[0], recon[1]) if fits else (min(grid),) * 2
        if target_shape[0] > grid[0] or target_shape[1] > grid[1]:
            raise _fail(
                path,
                f"target {target_shape[0]}x{target_shape[1]} is larger than the k-space grid "
                f"{grid[0]}x{grid[1]}",
                "targets must be centre crops of the k-space image (check the file's origin)",
            )
    attrs.update(target_key=target_key, num_slices=num_slices)
    return VolumeInfo(path, num_slices, tuple(shape[1:]), target_key, target_shape, attrs)


def _read_attrs(path: Path, hf: h5py.File) -> dict[str, Any]:
    """The file's attrs as plain python; a bad ``max`` is a :class:`DataError`."""
    try:
        raw = dict(hf.attrs.items())
    except (OSError, TypeError, ValueError) as err:
        raise _fail(path, f"unreadable attributes ({err})", "re-create the file") from None
    if "max" in raw:
        problem = max_attr_problem(raw["max"])
        if problem is not None:
            raise _fail(
                path,
                f"attribute 'max' is {problem}; it must be the volume's finite positive target "
                "maximum",
                "fix it or delete it (mri-audit then computes it from the target)",
            )
        raw["max"] = float(np.asarray(raw["max"]))
    return {k: plain(v) for k, v in raw.items()}


def _check_header_sizes(path: Path, header: dict[str, Any]) -> None:
    """Encoding and recon sizes must be in ``1..MAX_HEADER_SIZE`` (a :class:`DataError`)."""
    for key, space in (("encoding_size", "encodedSpace"), ("recon_size", "reconSpace")):
        size = header.get(key)
        if size is not None and not all(1 <= n <= MAX_HEADER_SIZE for n in size):
            raise _fail(
                path,
                f"ismrmrd_header {space} matrixSize is {'x'.join(map(str, size))}; each size "
                f"must be between 1 and {MAX_HEADER_SIZE}",
                "fix the header or delete the ismrmrd_header dataset",
            )


def resolve_files(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The .h5 files a source names: a file, a folder (non-recursive ``*.h5``) or a list."""
    if isinstance(source, (str, os.PathLike)):
        items = [Path(source)]
    else:
        items = [Path(s) for s in source]
        if not items:
            raise DataError("no data files given; pass a fastMRI .h5 file or a folder of them")
    files: list[Path] = []
    for item in items:
        if item.is_dir():
            found = sorted(p for p in item.glob("*.h5") if p.is_file())
            if not found:
                hint = (
                    " (the search is not recursive: point at the folder that holds them)"
                    if next(item.glob("*/*.h5"), None) is not None
                    else ""
                )
                raise DataError(
                    f"{item}: no .h5 files in this folder{hint}; give a folder of fastMRI .h5 files"
                )
            files.extend(found)
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(
                f"{item}: no such file or folder; give a fastMRI .h5 file or a folder of them"
            )
    return files
