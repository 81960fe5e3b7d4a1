"""Data is checked before any model pass (issue 14, build 4).

Every slice's k-space and target and each file's attrs are validated when a dataset is opened:
bad slices get a reason (and are skipped by the audit), bad files are a one-line DataError (exit 4).
The files here are real HDF5 files written with h5py: 4 single-coil slices of 32x32.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mri_audit.cli import cli
from mri_audit.data import checks as data_checks
from mri_audit.data.checks import (
    KSPACE_NONFINITE,
    KSPACE_ZERO,
    MIN_SIDE,
    TARGET_NONFINITE,
    rss_target,
    size_reason,
)
from mri_audit.data.datasets import SliceDataset, SyntheticDataset, iter_batches, valid_indices
from mri_audit.data.fastmri_io import ismrmrd_header, max_attr_problem
from mri_audit.data.opening import open_data, probe_batch
from mri_audit.errors import DataError

MEDIAN = "examples/median_filter.py:MedianFilter"
N = 32


def _volume(slices: int = 4, shape: tuple[int, int] = (N, N), seed: int = 0):
    """Finite, non-zero single-coil k-space ``(slices, H, W)`` and its RSS target."""
    rng = np.random.default_rng(seed)
    h, w = shape
    image = 0.05 * rng.random((slices, h, w))
    image[:, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] += 1.0
    axes = (-2, -1)
    kspace = np.fft.fftshift(
        np.fft.fft2(np.fft.ifftshift(image, axes=axes), norm="ortho"), axes=axes
    ).astype(np.complex64)
    target = np.stack(
        [rss_target(torch.from_numpy(kspace[i][None]), shape).numpy() for i in range(slices)]
    )
    return kspace, target


def _write(path: Path, kspace=None, target=None, *, attrs=None, header=None, **kw) -> Path:
    """A fastMRI file; ``attrs`` default to a valid ``max`` (None values delete the key)."""
    if kspace is None:
        kspace, default_target = _volume(**kw)
        target = default_target if target is None else target
    with h5py.File(path, "w") as hf:
        hf.create_dataset("kspace", data=kspace)
        if target is not None:
            hf.create_dataset("reconstruction_esc", data=target)
        values = {}
        if target is not None:
            values["max"] = float(np.max(np.where(np.isfinite(target), target, 0)))
        values.update(attrs or {})
        for key, value in values.items():
            if value is not None:
                hf.attrs[key] = value
        if header is not None:
            hf.create_dataset("ismrmrd_header", data=header)
    return path


def _doctored(path: Path, doctor) -> Path:
    """A valid file whose k-space and target arrays ``doctor(kspace, target)`` edits in place."""
    kspace, target = _volume()
    doctor(kspace, target)
    return _write(path, kspace, target)


def _data_error(source, **kw) -> str:
    with pytest.raises(DataError) as info:
        SliceDataset(source, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


def _cli(args: list[str]):
    return CliRunner().invoke(cli, args)


def _run(tmp_path: Path, data: Path, *extra: str):
    return _cli(
        [
            "run",
            "--data",
            str(data),
            "--model",
            MEDIAN,
            "--candidates",
            "4",
            "--attacks",
            "fnaf-rs",
            "--no-progress",
            "--out",
            str(tmp_path / "out"),
            *extra,
        ]
    )


def _assert_exit_4(result, *phrases: str) -> str:
    assert result.exit_code == DataError.exit_code, result.output
    assert isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    assert "Traceback" not in result.output
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])
    return lines[0]


# ---------------------------------------------------------------------------------------------
# Per-slice reasons.


def _nan_kspace(k, t):
    k[1, 3, 4] = np.nan


def _inf_kspace(k, t):
    k[1, 0, 0] = complex(0, np.inf)


def _zero_kspace(k, t):
    k[1] = 0


def _nan_target(k, t):
    t[1, 5, 5] = np.nan


def _inf_target(k, t):
    t[1, 5, 5] = -np.inf


@pytest.mark.parametrize(
    ("doctor", "reason"),
    [
        (_nan_kspace, KSPACE_NONFINITE),
        (_inf_kspace, KSPACE_NONFINITE),
        (_zero_kspace, KSPACE_ZERO),
        (_nan_target, TARGET_NONFINITE),
        (_inf_target, TARGET_NONFINITE),
    ],
)
def test_bad_slice_gets_its_reason(tmp_path: Path, caplog, doctor, reason: str) -> None:
    path = _doctored(tmp_path / "bad.h5", doctor)
    with caplog.at_level(logging.WARNING, logger="mri_audit"):
        ds = SliceDataset(path)
    assert [ds.invalid_reason(i) for i in range(4)] == [None, reason, None, None]
    assert ds.invalid_reason(-3) == reason
    assert ds.valid_indices() == [0, 2, 3] == valid_indices(ds)
    assert ds.describe()["invalid_slices"] == {reason: 1}
    assert ds.describe()["slices"] == 4  # existing keys unchanged
    assert any("1 of 4 slices will be skipped" in r.getMessage() for r in caplog.records)
    for i in ds.valid_indices():
        sample = ds[i]
        assert torch.isfinite(torch.view_as_real(sample.kspace)).all()
        assert sample.max_value > 0 and np.isfinite(sample.max_value)
    batches = list(iter_batches(ds, 8))  # invalid slices are never batched by default
    assert [b.slices for b in batches] == [[0, 2, 3]]
    with pytest.raises(IndexError):
        ds.invalid_reason(4)


def test_first_reason_wins_and_counts_per_reason(tmp_path: Path) -> None:
    def doctor(k, t):
        k[0, 1, 1] = np.nan
        t[0, 1, 1] = np.nan  # k-space is checked first
        k[1] = 0
        k[2] = 0

    ds = SliceDataset(_doctored(tmp_path / "mix.h5", doctor))
    assert ds.invalid_reason(0) == KSPACE_NONFINITE and ds.invalid_reason(2) == KSPACE_ZERO
    assert ds.valid_indices() == [3]
    assert ds.describe()["invalid_slices"] == {KSPACE_ZERO: 2, KSPACE_NONFINITE: 1}


def test_only_kept_slices_count(tmp_path: Path) -> None:
    def doctor(k, t):
        k[0] = np.nan  # outside the 2 central slices (1 and 2)

    ds = SliceDataset(_doctored(tmp_path / "edge.h5", doctor), max_slices=2)
    assert ds.keys() == [("edge.h5", 1), ("edge.h5", 2)] and ds.valid_indices() == [0, 1]
    assert ds.describe()["invalid_slices"] == {}

    def central(k, t):
        k[1:3] = 0

    message = _data_error(_doctored(tmp_path / "mid.h5", central), max_slices=2)
    assert "none of its 2 slices to audit is valid (all-zero k-space: 2)" in message


def test_size_floor() -> None:
    assert MIN_SIDE == 8
    assert size_reason((1, 1, 64), (1, 64)) == "slice 1x64 is too small (at least 8x8)"
    assert size_reason((1, 32, 32), (4, 4)) == "target 4x4 is too small (at least 8x8)"
    assert size_reason((1, 8, 8), (8, 8)) is None


@pytest.mark.parametrize(
    ("kshape", "tshape", "phrase"),
    [((1, 64), (1, 64), "slice 1x64 is too small"), ((32, 32), (4, 4), "target 4x4 is too small")],
)
def test_too_small_file_is_a_data_error(tmp_path: Path, kshape, tshape, phrase) -> None:
    kspace = np.ones((4, *kshape), np.complex64)
    target = np.ones((4, *tshape), np.float32)
    path = _write(tmp_path / "small.h5", kspace, target)
    message = _data_error(path)
    assert "small.h5" in message and phrase in message and ": 4)" in message
    _assert_exit_4(_run(tmp_path, path), "small.h5", phrase, "(at least 8x8)")


def test_file_without_a_valid_slice(tmp_path: Path) -> None:
    def doctor(k, t):
        k[:2] = np.nan
        k[2:] = 0

    path = _doctored(tmp_path / "dead.h5", doctor)
    expected = (
        "dead.h5: none of its 4 slices to audit is valid "
        "(NaN or Inf in the k-space: 2; all-zero k-space: 2); fix the file or remove it"
    )
    assert expected in _data_error(path)
    # In a folder with a good file the bad file still stops the audit, before any model pass.
    _write(tmp_path / "good.h5")
    _assert_exit_4(_run(tmp_path, tmp_path), expected)


def test_damaged_slice_data_is_a_data_error(tmp_path: Path) -> None:
    kspace, target = _volume()
    path = tmp_path / "damaged.h5"
    with h5py.File(path, "w") as hf:
        hf.create_dataset("kspace", data=kspace, chunks=(1, N, N), compression="gzip")
        hf.create_dataset("reconstruction_esc", data=target)
        hf.attrs["max"] = 1.0
    with h5py.File(path, "r") as hf:
        chunk = hf["kspace"].id.get_chunk_info(2)  # slice 2's compressed bytes
    raw = bytearray(path.read_bytes())
    raw[chunk.byte_offset : chunk.byte_offset + chunk.size] = b"\xab" * chunk.size
    path.write_bytes(bytes(raw))
    message = _data_error(path)  # at open time, not in the middle of the audit
    assert "damaged.h5: cannot read its slices (" in message
    assert message.endswith("re-download or re-create the file")


# ---------------------------------------------------------------------------------------------
# File attrs and the ISMRMRD header.


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0.0, "is 0;"),
        (-2.5, "is -2.5;"),
        (np.nan, "is nan;"),
        (np.inf, "is inf;"),
        ("abc", "is the string 'abc';"),
        (np.bytes_(b"1.5"), "is the string '1.5';"),
        (np.array([1.0, 2.0]), "is an array of shape (2,);"),
        (np.array([3.0]), "is an array of shape (1,);"),
        (np.bool_(True), "is a bool"),
        (np.complex64(1 + 1j), "is the complex number"),
    ],
)
def test_bad_max_attr_is_a_data_error(tmp_path: Path, value, shown: str) -> None:
    path = _write(tmp_path / "x.h5", attrs={"max": value})
    message = _data_error(path)
    assert f"x.h5: attribute 'max' {shown}" in message, message
    assert message.endswith(
        "it must be the volume's finite positive target maximum; fix it or delete it "
        "(mri-audit then computes it from the target)"
    )
    _assert_exit_4(_run(tmp_path, path), "x.h5: attribute 'max'")


def test_max_attr_checks() -> None:
    for good in (1, 2.5, np.float32(3.0), np.int64(7), np.array(4.0)):
        assert max_attr_problem(good) is None, good
    assert max_attr_problem(b"x") == "the string 'x'"


def test_good_or_missing_max(tmp_path: Path) -> None:
    ds = SliceDataset(_write(tmp_path / "int.h5", attrs={"max": np.int32(5)}))
    assert ds[0].max_value == 5.0 and isinstance(ds[0].attrs["max"], float)

    def doctor(k, t):
        t[2, 0, 0] = np.inf  # not counted in the computed maximum

    kspace, target = _volume()
    doctor(kspace, target)
    path = _write(tmp_path / "nomax.h5", kspace, target, attrs={"max": None})
    ds = SliceDataset(path)
    finite = target[np.isfinite(target)]
    assert ds[0].max_value == pytest.approx(float(finite.max()))
    assert ds.invalid_reason(2) == TARGET_NONFINITE
    zero = _write(tmp_path / "zero.h5", kspace, np.zeros_like(target), attrs={"max": None})
    assert "the target is zero or not finite in every slice" in _data_error(zero)


def test_other_attrs_are_carried_safely(tmp_path: Path) -> None:
    attrs = {"norm": np.array([np.nan, 1.0]), "acquisition": b"CORPD", "patient_id": 42}
    ds = SliceDataset(_write(tmp_path / "meta.h5", attrs=attrs))
    sample = ds[0]
    assert sample.attrs["acquisition"] == "CORPD" and sample.attrs["patient_id"] == 42
    assert sample.attrs["norm"][1] == 1.0 and ds.valid_indices() == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("recon", "encoded", "shown"),
    [
        ((-5, -5), (N, N), "reconSpace matrixSize is -5x-5x1"),
        ((0, N), (N, N), "reconSpace matrixSize is 0x32x1"),
        ((N, N), (N, 10**9), "encodedSpace matrixSize is 32x1000000000x1"),
    ],
)
def test_bad_ismrmrd_sizes_are_a_data_error(tmp_path: Path, recon, encoded, shown) -> None:
    header = ismrmrd_header(encoded, recon, 4)
    kspace, target = _volume()
    for name, tgt in (("hdr.h5", target), ("hdr_notarget.h5", None)):
        path = _write(tmp_path / name, kspace, tgt, header=header, attrs={"max": 1.0})
        message = _data_error(path)
        assert f"{name}: ismrmrd_header {shown}; each size must be between 1 and 65536" in message
        assert message.endswith("fix the header or delete the ismrmrd_header dataset")
    _assert_exit_4(_run(tmp_path, tmp_path / "hdr.h5"), "hdr.h5: ismrmrd_header")


def test_good_header_still_parsed(tmp_path: Path) -> None:
    path = _write(tmp_path / "ok.h5", header=ismrmrd_header((N, N), 16, 4))
    ds = SliceDataset(path)
    assert ds[0].attrs["recon_size"] == (16, 16, 1)


# ---------------------------------------------------------------------------------------------
# The built-in set, the probe and the reads.


def test_synthetic_dataset_is_all_valid() -> None:
    ds = SyntheticDataset(volumes=2, slices=2, size=32)
    assert [ds.invalid_reason(i) for i in range(len(ds))] == [None] * 4
    assert ds.valid_indices() == [0, 1, 2, 3] and ds.describe()["invalid_slices"] == {}
    with pytest.raises(IndexError):
        ds.invalid_reason(4)
    with pytest.raises(ValueError, match="too small"):
        SyntheticDataset(size=32, kspace_shape=(4, 32))


def test_probe_is_the_first_valid_slice(tmp_path: Path) -> None:
    def doctor(k, t):
        k[0, 0, 0] = np.inf
        k[1] = 0

    path = _doctored(tmp_path / "probe.h5", doctor)
    dataset, probe = open_data(str(path), None, None)
    assert probe.slices == [2] and probe.volumes == ["probe.h5"]
    assert probe_batch(dataset).slices == [2]


def test_each_slice_is_read_once(tmp_path: Path, monkeypatch) -> None:
    reads: list[tuple[str, int, int]] = []
    real = data_checks._read

    def counting(dataset, start, stop, dtype):
        reads.append((dataset.name, start, stop))
        return real(dataset, start, stop, dtype)

    monkeypatch.setattr(data_checks, "_read", counting)
    monkeypatch.setattr(data_checks, "CHUNK_BYTES", 1)  # one slice per chunk
    path = _write(tmp_path / "a.h5", slices=6)
    SliceDataset(path)
    assert sorted(reads) == sorted(
        [(name, s, s + 1) for name in ("/kspace", "/reconstruction_esc") for s in range(6)]
    )
    reads.clear()
    monkeypatch.setattr(data_checks, "CHUNK_BYTES", 3 * N * N * 12)  # three slices per chunk
    SliceDataset(path)
    assert sorted(reads) == sorted(
        [(n, a, a + 3) for n in ("/kspace", "/reconstruction_esc") for a in (0, 3)]
    )


# ---------------------------------------------------------------------------------------------
# End to end: the audit goes on around invalid slices.


@pytest.fixture
def half_bad(tmp_path: Path) -> Path:
    def doctor(k, t):
        k[0, 2, 2] = np.inf
        k[1] = 0

    folder = tmp_path / "data"
    folder.mkdir()
    return _doctored(folder / "half.h5", doctor)


def test_audit_runs_around_invalid_slices(tmp_path: Path, half_bad: Path) -> None:
    result = _run(tmp_path, half_bad)
    # Before the checks, the dry run on slice 0 blamed the model: exit 5 "returned NaN".
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["data"]["invalid_slices"] == {KSPACE_NONFINITE: 1, KSPACE_ZERO: 1}


def test_invalid_slices_are_skipped_records_with_their_reasons(
    tmp_path: Path, half_bad: Path
) -> None:
    result = _run(tmp_path, half_bad)
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    skipped = {
        f["slice"]: f.get("reason", f.get("error"))
        for f in results["failures"]["slices"]
        if f["kind"] == "skipped"
    }
    assert skipped == {0: KSPACE_NONFINITE, 1: KSPACE_ZERO}
    assert results["failures"]["skipped"] == 2
    attack = results["attacks"][next(iter(results["attacks"]))]["fnaf-rs"]
    assert attack["slices"] == 2  # only slices 2 and 3 were audited


def test_check_and_info_count_invalid_slices(tmp_path: Path, half_bad: Path) -> None:
    result = _cli(["data", "info", str(half_bad)])
    assert result.exit_code == 0, result.output
    expected = "invalid:  2 slices (NaN or Inf in the k-space: 1; all-zero k-space: 1)"
    assert expected in result.output, result.output
    result = _cli(["check", "--model", MEDIAN, "--data", str(half_bad)])
    assert result.exit_code == 0, result.output
    assert ": 2 slices," in result.output
    assert "skipped     2 invalid slices (NaN or Inf in the k-space: 1; all-zero k-space: 1)" in (
        result.output
    )


def test_harden_never_trains_on_invalid_slices(tmp_path: Path, half_bad: Path) -> None:
    from mri_audit.fnaf.registry import load_attack
    from mri_audit.harden.config import HardenConfig
    from mri_audit.harden.trainer import Trainer
    from mri_audit.models.estimator import Reconstructor

    ds = SliceDataset(half_bad)
    model = torch.nn.Conv2d(1, 1, 3, padding=1)
    est = Reconstructor(model, target_shape=(N, N))
    cfg = HardenConfig(epochs=1, batch_size=2, candidates=4, val_candidates=4)
    trainer = Trainer(
        est,
        ds,
        ds,
        cfg,
        attack_classes={n: load_attack(n) for n in ("fnaf-rs", "fnaf-pgd")},
        checkpoint=tmp_path / "w.pt.ckpt",
        out=tmp_path / "w.pt",
    )
    picked = {i for e in range(5) for s in range(4) for i in trainer._batch_indices(e, s)}
    assert picked == {2, 3}
    assert trainer.steps_per_epoch == 1  # 2 valid slices, batch size 2
    trainer.fit()
    assert all(np.isfinite(v) for row in trainer.history for v in row.values() if _num(v))


def _num(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
