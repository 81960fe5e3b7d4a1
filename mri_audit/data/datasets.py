"""fastMRI HDF5 slices and the built-in synthetic phantom set.

Both datasets yield :class:`SliceSample` items with fastMRI's conventions: native complex k-space
``(coils, H, W)`` (single-coil files get ``coils = 1``), the reference magnitude
(``reconstruction_esc`` / ``reconstruction_rss``) and the volume's file name, which seeds the
per-volume mask (:func:`mri_audit.mri.physics.volume_seed`).

Data is checked before any model pass: opening a :class:`SliceDataset` validates every kept
slice (:mod:`mri_audit.data.checks`); ``invalid_reason(i)`` then says, without I/O, why slice ``i``
cannot be audited (or None), and ``valid_indices()`` lists the others. A file with a bad ``max``
attribute or with no valid slice is a :class:`~mri_audit.errors.DataError`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np
import torch

from mri_audit.data import phantoms
from mri_audit.data.batching import SliceBatch, collate, iter_batches, valid_indices
from mri_audit.data.checks import check_volumes, rss_target, size_reason, summarize
from mri_audit.data.fastmri_io import VolumeInfo, inspect_file, resolve_files
from mri_audit.errors import DataError
from mri_audit.rng import derive_seed

__all__ = [
    "BUILTIN_TRAIN",
    "BUILTIN_VAL",
    "SliceSample",
    "SliceBatch",
    "collate",
    "iter_batches",
    "valid_indices",
    "SliceDataset",
    "SyntheticDataset",
    "open_dataset",
    "central_slices",
]

logger = logging.getLogger(__name__)

BUILTIN_VAL: dict[str, int] = dict(volumes=6, slices=4, size=160, coils=1)
BUILTIN_TRAIN: dict[str, int] = dict(volumes=48, slices=8, size=160, coils=1)
# Where `harden` chooses its kept weights: never the `val` volumes its before/after audit reports.
BUILTIN_SELECT: dict[str, int] = dict(volumes=6, slices=4, size=160, coils=1)


class SliceSample(NamedTuple):
    """One fully-sampled slice.

    Attributes:
        kspace: complex64 k-space.
        target: float32 reference magnitude.
        volume: the volume's file name (e.g. ``file1000001.h5``); seeds its mask.
        slice: the slice index in the volume.
        max_value: the volume's target maximum (fastMRI's ``max`` attribute).
        attrs: plain-python metadata (acquisition, patient_id, norm, max, encoding sizes, ...).

    Shape:
        kspace: ``(coils, H, W)``; target: ``(h, w)`` with ``h <= H`` and ``w <= W``.
    """

    kspace: torch.Tensor
    target: torch.Tensor
    volume: str
    slice: int
    max_value: float
    attrs: dict


def central_slices(num_slices: int, max_slices: int | None) -> list[int]:
    """The ``max_slices`` slice indices closest to the middle of the volume, in order."""
    if max_slices is None or max_slices >= num_slices:
        return list(range(num_slices))
    start = (num_slices - max_slices) // 2
    return list(range(start, start + max_slices))


def _check_limit(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{name} must be >= 1 (or None for all), got {value}")


class SliceDataset(torch.utils.data.Dataset):
    """Slices of fastMRI HDF5 files, read lazily.

    Every file is validated once, up front: its metadata and attrs, then every kept slice's
    k-space and target, read in chunks (:func:`~mri_audit.data.checks.scan_volume`). Bad files
    (a bad ``max`` attribute, bad header sizes, no valid slice) raise
    :class:`~mri_audit.errors.DataError` with one line naming the file and the fix; invalid
    slices in an otherwise good file are kept, with a reason (:meth:`invalid_reason`).

    Args:
        source: a ``.h5`` file, a folder of them (sorted by name, non-recursive) or a list.
        max_volumes: keep only the first ``max_volumes`` files.
        max_slices: keep only the ``max_slices`` central slices of each volume.
    """

    def __init__(
        self,
        source: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        max_volumes: int | None = None,
        max_slices: int | None = None,
    ) -> None:
        _check_limit("max_volumes", max_volumes)
        _check_limit("max_slices", max_slices)
        if not isinstance(source, (str, os.PathLike)):
            source = [Path(p) for p in source]
        self.source = source
        self.max_volumes, self.max_slices = max_volumes, max_slices
        files = resolve_files(source)[:max_volumes]
        self._volumes: list[VolumeInfo] = [inspect_file(p) for p in files]
        self._examples = [
            (v, s)
            for v, vol in enumerate(self._volumes)
            for s in central_slices(vol.num_slices, max_slices)
        ]
        kept = [central_slices(vol.num_slices, max_slices) for vol in self._volumes]
        self._invalid, self._peaks = check_volumes(self._volumes, kept)

    def invalid_reason(self, index: int) -> str | None:
        """Why item ``index`` cannot be audited (a short phrase), or None if it can (no I/O)."""
        return self._invalid.get(range(len(self))[index])

    def valid_indices(self) -> list[int]:
        """The indices of the items that can be audited, in order (no I/O)."""
        return [i for i in range(len(self)) if i not in self._invalid]

    @property
    def volumes(self) -> list[str]:
        """The volume (file) names, in order."""
        return [v.path.name for v in self._volumes]

    def __len__(self) -> int:
        return len(self._examples)

    def shape_key(self, index: int) -> tuple:
        """``(k-space shape, target shape)`` of an item, from metadata (no data is read)."""
        vol = self._volumes[self._examples[index][0]]
        return (tuple(vol.kspace_shape), tuple(vol.target_shape))

    def keys(self) -> list[tuple[str, int]]:
        """``(volume name, slice index)`` of every item, in order (no data is read)."""
        names = self.volumes
        return [(names[v], int(s)) for v, s in self._examples]

    def __getitem__(self, index: int) -> SliceSample:
        v, s = self._examples[index]
        vol = self._volumes[v]
        try:
            with h5py.File(vol.path, "r", locking=False) as hf:
                kspace = np.asarray(hf["kspace"][s], dtype=np.complex64)
                target = None
                if vol.target_key is not None:
                    target = np.asarray(hf[vol.target_key][s], dtype=np.float32)
        except (OSError, KeyError) as err:
            raise DataError(
                f"{vol.path}: cannot read slice {s} ({err}); re-download or re-create the file"
            ) from None
        kspace_t = torch.from_numpy(kspace.reshape(vol.kspace_shape))
        if target is None:
            target_t = rss_target(kspace_t, vol.target_shape)
        else:
            target_t = torch.from_numpy(target)
        return SliceSample(
            kspace=kspace_t,
            target=target_t,
            volume=vol.path.name,
            slice=s,
            max_value=self._max_value(v),
            attrs=dict(vol.attrs),
        )

    def _max_value(self, v: int) -> float:
        """The volume's target maximum: attrs ``max`` (validated), else the finite maximum over
        all its slices (computed when the dataset was opened)."""
        vol = self._volumes[v]
        if "max" in vol.attrs:
            return float(vol.attrs["max"])
        return self._peaks[v]

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary for the results file."""
        src = self.source
        source = str(src) if isinstance(src, (str, os.PathLike)) else [str(p) for p in src]
        return {
            "kind": "fastmri",
            "source": source,
            "volumes": len(self._volumes),
            "slices": len(self),
            "kspace_shapes": _shapes(v.kspace_shape[1:] for v in self._volumes),
            "target_shapes": _shapes(v.target_shape for v in self._volumes),
            "coils": sorted({v.kspace_shape[0] for v in self._volumes}),
            "max_volumes": self.max_volumes,
            "max_slices": self.max_slices,
            "files": self.file_digests(),
            "invalid_slices": summarize(self._invalid),
        }

    def file_digests(self) -> list[dict[str, Any]]:
        """Each file's name, sha256 and target key (hashed once per dataset; the hash is also
        cached across runs by path, size and modification time)."""
        from mri_audit.hashing import cached_sha256s

        if getattr(self, "_digests", None) is None:
            hashes = cached_sha256s([v.path for v in self._volumes])
            self._digests = [
                {
                    "name": v.path.name,
                    "sha256": h,
                    "slices": v.num_slices,
                    "target": v.target_key,
                }
                for v, h in zip(self._volumes, hashes, strict=True)
            ]
        return self._digests


def _shapes(shapes) -> list[list[int]]:
    return [list(t) for t in sorted({tuple(int(n) for n in sh) for sh in shapes})]


class SyntheticDataset(torch.utils.data.Dataset):
    """The built-in phantom set, in memory: volumes are generated on first use and cached.

    Volume ``i`` of a split is :func:`mri_audit.data.phantoms.make_volume` seeded by
    ``derive_seed(seed, split_id, i)``; ``train``, ``select`` and ``val`` use different split
    ids, so held-out evaluation never sees a training volume, and ``harden`` chooses its kept
    weights on ``select``, never on the ``val`` volumes that audits report. Items are
    :class:`SliceSample` s named like fastMRI files (``synth_val_0000.h5``) so masks are seeded
    per volume exactly as for real data. Phantom slices are finite and non-zero by construction
    and sizes below :data:`~mri_audit.data.checks.MIN_SIDE` are refused, so every slice is valid.

    Args:
        split: ``"val"``, ``"train"`` or ``"select"``.
        volumes: number of volumes.
        slices: slices per volume.
        size: target size (square).
        coils: receive coils (1 = single-coil).
        seed: base seed.
        kspace_shape: k-space grid; None for ``(size, size)``.
        noise: k-space noise level (see :func:`~mri_audit.data.phantoms.make_volume`).
        max_volumes: keep only the first ``max_volumes`` volumes.
        max_slices: keep only the ``max_slices`` central slices of each volume.
    """

    SPLITS = {"val": 0, "train": 1, "select": 2}

    def __init__(
        self,
        *,
        split: str = "val",
        volumes: int = BUILTIN_VAL["volumes"],
        slices: int = BUILTIN_VAL["slices"],
        size: int = BUILTIN_VAL["size"],
        coils: int = BUILTIN_VAL["coils"],
        seed: int = 0,
        kspace_shape: tuple[int, int] | None = None,
        noise: float = 0.02,
        max_volumes: int | None = None,
        max_slices: int | None = None,
    ) -> None:
        if split not in self.SPLITS:
            raise ValueError(f"unknown split {split!r}; choose from {', '.join(self.SPLITS)}")
        for name, value in (("volumes", volumes), ("slices", slices), ("coils", coils)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        too_small = size_reason(tuple(kspace_shape or (size, size)), (size, size))
        if too_small is not None:
            raise ValueError(f"size and kspace_shape: {too_small}")
        _check_limit("max_volumes", max_volumes)
        _check_limit("max_slices", max_slices)
        self.split, self.seed, self.noise = split, seed, noise
        self.num_volumes = min(volumes, max_volumes) if max_volumes else volumes
        self.slices, self.size, self.coils = slices, size, coils
        self.kspace_shape = tuple(kspace_shape) if kspace_shape else (size, size)
        self.max_volumes, self.max_slices = max_volumes, max_slices
        keep = central_slices(slices, max_slices)
        self._examples = [(v, s) for v in range(self.num_volumes) for s in keep]
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor, dict]] = {}

    @property
    def volumes(self) -> list[str]:
        """The volume names, in order."""
        return [self.volume_name(v) for v in range(self.num_volumes)]

    def volume_name(self, index: int) -> str:
        """The fastMRI-style file name of volume ``index``."""
        return f"synth_{self.split}_{index:04d}.h5"

    def volume_seed(self, index: int) -> int:
        """The :func:`~mri_audit.data.phantoms.make_volume` seed of volume ``index``."""
        return derive_seed(self.seed, self.SPLITS[self.split], index)

    def _volume(self, v: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        if v not in self._cache:
            vol = phantoms.make_volume(
                self.volume_seed(v),
                slices=self.slices,
                size=self.size,
                coils=self.coils,
                kspace_shape=self.kspace_shape,
                noise=self.noise,
            )
            attrs = {
                "acquisition": "CORPD_FBK",
                "patient_id": f"synth-{self.split}-{self.seed}-{v:04d}",
                "max": float(vol.target.max()),
                "norm": float(np.linalg.norm(vol.target.astype(np.float64))),
                "encoding_size": (*self.kspace_shape, 1),
                "recon_size": (self.size, self.size, 1),
                "target_key": "reconstruction_esc" if self.coils == 1 else "reconstruction_rss",
                "num_slices": self.slices,
            }
            self._cache[v] = (torch.from_numpy(vol.kspace), torch.from_numpy(vol.target), attrs)
        return self._cache[v]

    def __len__(self) -> int:
        return len(self._examples)

    def shape_key(self, index: int) -> tuple:
        """``(k-space shape, target shape)`` of an item (every item has the same)."""
        return ((self.coils, *self.kspace_shape), (self.size, self.size))

    def keys(self) -> list[tuple[str, int]]:
        """``(volume name, slice index)`` of every item, in order (no data is read)."""
        names = self.volumes
        return [(names[v], int(s)) for v, s in self._examples]

    def invalid_reason(self, index: int) -> str | None:
        """Why item ``index`` cannot be audited: always None (phantoms are valid); no I/O."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} slices")
        return None

    def valid_indices(self) -> list[int]:
        """The indices of the items that can be audited: all of them."""
        return list(range(len(self)))

    def __getitem__(self, index: int) -> SliceSample:
        v, s = self._examples[index]
        kspace, target, attrs = self._volume(v)
        return SliceSample(
            kspace=kspace[s],
            target=target[s],
            volume=self.volume_name(v),
            slice=s,
            max_value=float(attrs["max"]),
            attrs=dict(attrs),
        )

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary for the results file."""
        return {
            "kind": "synthetic",
            "source": f"built-in synthetic phantoms (split={self.split}, seed={self.seed})",
            "split": self.split,
            "seed": self.seed,
            "volumes": self.num_volumes,
            "slices": len(self),
            "kspace_shapes": [list(self.kspace_shape)],
            "target_shapes": [[self.size, self.size]],
            "coils": [self.coils],
            "noise": self.noise,
            "max_volumes": self.max_volumes,
            "max_slices": self.max_slices,
            "invalid_slices": {},
        }


def open_dataset(
    path: str | os.PathLike | None,
    *,
    max_volumes: int | None = None,
    max_slices: int | None = None,
    **synthetic_kwargs: Any,
) -> SliceDataset | SyntheticDataset:
    """A fastMRI :class:`SliceDataset` for ``path``, or the built-in :class:`SyntheticDataset`.

    Args:
        path: a ``.h5`` file or a folder of them; None for the built-in phantoms.
        max_volumes: keep only the first ``max_volumes`` volumes.
        max_slices: keep only the ``max_slices`` central slices of each volume.
        synthetic_kwargs: :class:`SyntheticDataset` options (``split``, ``volumes``, ...); used
            only when ``path`` is None.
    """
    if path is None:
        return SyntheticDataset(max_volumes=max_volumes, max_slices=max_slices, **synthetic_kwargs)
    if synthetic_kwargs:
        logger.debug("ignoring synthetic-data options %s for %s", sorted(synthetic_kwargs), path)
    return SliceDataset(path, max_volumes=max_volumes, max_slices=max_slices)
