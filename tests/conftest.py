"""Shared fixtures: small synthetic fastMRI-format files, written once per test session."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import pytest

from mri_audit.data.phantoms import synth_dataset


class FastMRIDirs(NamedTuple):
    """Folders of small synthetic fastMRI files (k-space grids larger than the targets).

    Attributes:
        single: 2 single-coil volumes, 4 slices, k-space 128x72, target 64x64.
        multi: 2 four-coil volumes, 3 slices, k-space 96x80, target 64x64.
    """

    single: Path
    multi: Path


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each worker's torch gets its share of the cores, not all of them
    (two workers each spinning two threads on two cores run slower than one)."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))


SINGLE = dict(volumes=2, slices=4, size=64, coils=1, kspace_shape=(128, 72), seed=11)
MULTI = dict(volumes=2, slices=3, size=64, coils=4, kspace_shape=(96, 80), seed=12)


@pytest.fixture(scope="session")
def fastmri_dirs(tmp_path_factory: pytest.TempPathFactory) -> FastMRIDirs:
    """Session-wide folders of synthetic fastMRI files (treat them as read-only)."""
    root = tmp_path_factory.mktemp("fastmri")
    single, multi = root / "singlecoil", root / "multicoil"
    synth_dataset(single, prefix="file_sc", **SINGLE)
    synth_dataset(multi, prefix="file_mc", **MULTI)
    return FastMRIDirs(single=single, multi=multi)


@pytest.fixture(scope="session")
def harden_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 single-coil volumes (2 slices each): `harden` trains on one, chooses its kept weights on
    another and reports its before/after audit on the third."""
    root = tmp_path_factory.mktemp("harden") / "singlecoil"
    synth_dataset(root, prefix="file_hd", **{**SINGLE, "volumes": 3, "slices": 2, "seed": 13})
    return root


@pytest.fixture(scope="session")
def singlecoil_dir(fastmri_dirs: FastMRIDirs) -> Path:
    """A folder of 2 single-coil volumes (4 slices, k-space 128x72, target 64x64)."""
    return fastmri_dirs.single


@pytest.fixture(scope="session")
def multicoil_dir(fastmri_dirs: FastMRIDirs) -> Path:
    """A folder of 2 four-coil volumes (3 slices, k-space 96x80, target 64x64)."""
    return fastmri_dirs.multi
