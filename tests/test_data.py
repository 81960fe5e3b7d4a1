"""Tests for mri_audit.data.datasets (datasets, batching), mri_audit.data.fastmri_io and
``mri-audit data``.
"""

from __future__ import annotations

import logging
import shutil
import xml.etree.ElementTree as etree
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mri_audit.cli import cli
from mri_audit.data.datasets import (
    BUILTIN_TRAIN,
    BUILTIN_VAL,
    SliceBatch,
    SliceDataset,
    SyntheticDataset,
    central_slices,
    collate,
    iter_batches,
    open_dataset,
)
from mri_audit.data.fastmri_io import parse_ismrmrd_header
from mri_audit.data.phantoms import make_volume, synth_dataset, write_volume
from mri_audit.errors import DataError
from mri_audit.mri.physics import center_crop, ifft2c, rss
from tests.conftest import MULTI, SINGLE


def et_query(root, qlist, namespace="http://www.ismrm.org/ISMRMRD"):
    """fastMRI's own header query (fastmri/data/mri_data.py)."""
    s, prefix = ".", "ismrmrd_namespace"
    for el in qlist:
        s = s + f"//{prefix}:{el}"
    return root.find(s, {prefix: namespace}).text


def rss_target(kspace: np.ndarray, shape) -> np.ndarray:
    images = ifft2c(torch.from_numpy(kspace).to(torch.complex128))
    return center_crop(rss(images, dim=0), shape).float().numpy()


# ---------------------------------------------------------------------------------------------
# Round trips through SliceDataset.


@pytest.mark.parametrize(("which", "spec"), [("single", SINGLE), ("multi", MULTI)])
def test_round_trip(fastmri_dirs, which: str, spec: dict) -> None:
    folder = getattr(fastmri_dirs, which)
    ds = SliceDataset(folder)
    coils, (kh, kw), size = spec["coils"], spec["kspace_shape"], spec["size"]
    prefix = "file_sc" if which == "single" else "file_mc"
    assert ds.volumes == [f"{prefix}_0000.h5", f"{prefix}_0001.h5"]
    assert len(ds) == spec["volumes"] * spec["slices"]
    sample = ds[spec["slices"] + 1]  # second volume, second slice
    assert sample.volume == f"{prefix}_0001.h5" and sample.slice == 1
    assert sample.kspace.shape == (coils, kh, kw) and sample.kspace.dtype == torch.complex64
    assert sample.target.shape == (size, size) and sample.target.dtype == torch.float32
    with h5py.File(folder / sample.volume) as hf:
        key = "reconstruction_esc" if coils == 1 else "reconstruction_rss"
        kspace = hf["kspace"][1].reshape(coils, kh, kw)
        np.testing.assert_array_equal(sample.kspace.numpy(), kspace)
        np.testing.assert_array_equal(sample.target.numpy(), hf[key][1])
        assert sample.max_value == pytest.approx(float(hf[key][()].max()))
    attrs = sample.attrs
    assert attrs["acquisition"] == "CORPD_FBK" and isinstance(attrs["patient_id"], str)
    assert attrs["max"] == sample.max_value and attrs["norm"] > 0
    assert attrs["encoding_size"] == (kh, kw, 1) and attrs["recon_size"] == (size, size, 1)
    assert (attrs["padding_left"], attrs["padding_right"]) == (0, kw)
    # The target is what DESIGN says: the centre-cropped RSS of the fully-sampled image.
    np.testing.assert_allclose(
        sample.target.numpy(), rss_target(kspace, (size, size)), atol=1e-5 * sample.max_value
    )
    desc = ds.describe()
    assert desc["volumes"] == 2 and desc["slices"] == len(ds) and desc["coils"] == [coils]
    assert desc["kspace_shapes"] == [[kh, kw]] and desc["target_shapes"] == [[size, size]]


def test_ismrmrd_header_parses_like_fastmri(singlecoil_dir: Path) -> None:
    with h5py.File(next(singlecoil_dir.glob("*.h5"))) as hf:
        header = hf["ismrmrd_header"][()]
        kh, kw = hf["kspace"].shape[1:]
    root = etree.fromstring(header)
    enc = ["encoding", "encodedSpace", "matrixSize"]
    rec = ["encoding", "reconSpace", "matrixSize"]
    lims = ["encoding", "encodingLimits", "kspace_encoding_step_1"]
    assert [int(et_query(root, enc + [a])) for a in "xyz"] == [kh, kw, 1]
    assert [int(et_query(root, rec + [a])) for a in "xyz"] == [64, 64, 1]
    assert int(et_query(root, lims + ["center"])) == kw // 2
    assert int(et_query(root, lims + ["maximum"])) + 1 == kw
    assert float(et_query(root, ["encoding", "encodedSpace", "fieldOfView_mm", "x"])) > 0
    assert parse_ismrmrd_header(header)["encoding_size"] == (kh, kw, 1)
    assert parse_ismrmrd_header(b"<not xml") == {}


def test_sources_and_limits(singlecoil_dir: Path) -> None:
    files = sorted(singlecoil_dir.glob("*.h5"))
    assert len(SliceDataset(files[1])) == 4
    assert SliceDataset(files[::-1]).volumes == [f.name for f in files[::-1]]
    ds = SliceDataset(singlecoil_dir, max_volumes=1, max_slices=2)
    assert ds.volumes == [files[0].name]
    assert [ds[i].slice for i in range(len(ds))] == [1, 2]  # central slices of 4
    assert SliceDataset(singlecoil_dir, max_slices=10).describe()["slices"] == 8
    with pytest.raises(ValueError):
        SliceDataset(singlecoil_dir, max_slices=0)


@pytest.mark.parametrize(
    ("n", "m", "expected"),
    [(4, 2, [1, 2]), (5, 1, [2]), (5, 3, [1, 2, 3]), (8, 3, [2, 3, 4]), (3, None, [0, 1, 2])],
)
def test_central_slices(n: int, m: int | None, expected: list[int]) -> None:
    assert central_slices(n, m) == expected
    middle = (n - 1) / 2
    others = set(range(n)) - set(expected)
    assert all(abs(i - middle) <= abs(j - middle) for i in expected for j in others)


# ---------------------------------------------------------------------------------------------
# Batching.


def test_iter_batches_groups_by_shape(tmp_path: Path, singlecoil_dir: Path) -> None:
    small = tmp_path / "small.h5"
    write_volume(small, make_volume(0, slices=3, size=32), patient_id="s")
    first = sorted(singlecoil_dir.glob("*.h5"))[0]
    ds = SliceDataset([first, small, first])
    batches = list(iter_batches(ds, 3))
    assert [b.batch_size for b in batches] == [3, 1, 3, 3, 1]
    assert [tuple(b.kspace.shape[-2:]) for b in batches] == [(128, 72)] * 2 + [(32, 32)] + [
        (128, 72)
    ] * 2
    b = batches[0]
    assert isinstance(b, SliceBatch) and b.kspace.shape == (3, 1, 128, 72)
    assert b.target.shape == (3, 64, 64) and b.slices == [0, 1, 2]
    assert b.volumes == [first.name] * 3
    assert b.max_values.dtype == torch.float32 and b.max_values.shape == (3,)
    moved = b.to("cpu")
    assert isinstance(moved, SliceBatch) and moved.volumes == b.volumes
    with pytest.raises(ValueError, match="different shapes"):
        collate([ds[0], ds[4]])
    with pytest.raises(ValueError):
        list(iter_batches(ds, 0))


def test_works_with_a_dataloader(multicoil_dir: Path) -> None:
    loader = torch.utils.data.DataLoader(
        SliceDataset(multicoil_dir), batch_size=2, collate_fn=collate
    )
    batches = list(loader)
    assert [b.batch_size for b in batches] == [2, 2, 2]
    assert batches[0].kspace.shape == (2, 4, 96, 80)


# ---------------------------------------------------------------------------------------------
# Bad data: one-line DataErrors naming the file.


def _write(path: Path, **datasets) -> Path:
    with h5py.File(path, "w") as hf:
        for key, value in datasets.items():
            hf.create_dataset(key, data=value)
    return path


def _data_error(source) -> str:
    with pytest.raises(DataError) as info:
        SliceDataset(source)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    assert "no such file or folder" in _data_error(tmp_path / "nope")
    assert "nope" in _data_error(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("hi")
    message = _data_error(tmp_path)
    assert str(tmp_path) in message and "no .h5 files" in message
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.h5").write_bytes(b"")
    assert "not recursive" in _data_error(tmp_path)
    assert "no data files" in _data_error([])


def test_not_hdf5_and_truncated(tmp_path: Path, singlecoil_dir: Path) -> None:
    bad = tmp_path / "bad.h5"
    bad.write_text("this is not HDF5")
    message = _data_error(bad)
    assert "bad.h5" in message and "not a readable HDF5 file" in message
    cut = tmp_path / "cut.h5"
    shutil.copy(next(singlecoil_dir.glob("*.h5")), cut)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    message = _data_error(cut)
    assert "cut.h5" in message and "re-create" in message


def test_malformed_kspace(tmp_path: Path) -> None:
    k = np.zeros((2, 16, 16), np.complex64)
    message = _data_error(_write(tmp_path / "nok.h5", reconstruction_esc=np.zeros((2, 8, 8))))
    assert "nok.h5" in message and "no 'kspace'" in message
    message = _data_error(_write(tmp_path / "ndim.h5", kspace=k[0]))
    assert "ndim.h5" in message and "(slices, H, W)" in message
    message = _data_error(_write(tmp_path / "real.h5", kspace=k.real.astype(np.float32)))
    assert "real.h5" in message and "not complex" in message
    big = _write(tmp_path / "big.h5", kspace=k, reconstruction_esc=np.zeros((2, 32, 32)))
    assert "larger than the k-space grid" in _data_error(big)
    odd = _write(tmp_path / "odd.h5", kspace=k, reconstruction_esc=np.zeros((3, 8, 8)))
    assert "odd.h5" in _data_error(odd)


def test_missing_target_falls_back_to_rss(tmp_path: Path, caplog) -> None:
    vol = make_volume(3, slices=2, size=32, coils=3, kspace_shape=(64, 40))
    with_header = tmp_path / "hdr.h5"
    write_volume(with_header, vol, patient_id="p")
    with h5py.File(with_header, "a") as hf:
        del hf["reconstruction_rss"]
        del hf.attrs["max"]
    bare = _write(tmp_path / "bare.h5", kspace=vol.kspace[:, 0])
    with caplog.at_level(logging.WARNING, logger="mri_audit"):
        ds = SliceDataset([with_header, bare])
    warnings = [r for r in caplog.records if "no reconstruction_esc" in r.getMessage()]
    assert len(warnings) == 2 and "hdr.h5" in warnings[0].getMessage()
    sample = ds[1]
    expected = rss_target(vol.kspace[1], (32, 32))  # reconSpace size from the header
    np.testing.assert_allclose(sample.target.numpy(), expected, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(sample.target.numpy(), vol.target[1], atol=1e-5 * vol.target.max())
    assert sample.max_value == pytest.approx(float(vol.target.max()), rel=1e-5)
    bare_sample = ds[2]  # no header: a min(H, W) square
    assert bare_sample.target.shape == (40, 40) and bare_sample.kspace.shape == (1, 64, 40)
    np.testing.assert_allclose(
        bare_sample.target.numpy(), rss_target(vol.kspace[0, :1], (40, 40)), rtol=1e-6
    )
    caplog.clear()
    ds[0], ds[3]
    assert not caplog.records  # warned once per file, at validation


# ---------------------------------------------------------------------------------------------
# The built-in synthetic set.


def test_synthetic_dataset() -> None:
    assert BUILTIN_VAL == dict(volumes=6, slices=4, size=160, coils=1)
    assert BUILTIN_TRAIN == dict(volumes=48, slices=8, size=160, coils=1)
    val = SyntheticDataset(volumes=2, slices=3, size=32)
    again = SyntheticDataset(volumes=2, slices=3, size=32)
    train = SyntheticDataset(split="train", volumes=2, slices=3, size=32)
    assert len(val) == 6 and val.volumes == ["synth_val_0000.h5", "synth_val_0001.h5"]
    sample = val[4]
    assert sample.volume == "synth_val_0001.h5" and sample.slice == 1
    assert sample.kspace.shape == (1, 32, 32) and sample.kspace.dtype == torch.complex64
    assert sample.target.shape == (32, 32) and sample.target.dtype == torch.float32
    assert sample.max_value == pytest.approx(float(max(val[i].target.max() for i in (3, 4, 5))))
    assert torch.equal(sample.kspace, again[4].kspace)
    assert not torch.allclose(sample.target, train[4].target)  # disjoint splits
    assert val.volume_seed(0) != train.volume_seed(0)
    limited = SyntheticDataset(volumes=3, slices=5, size=32, max_volumes=2, max_slices=1)
    assert len(limited) == 2 and [limited[i].slice for i in range(2)] == [2, 2]
    multi = SyntheticDataset(volumes=1, slices=1, size=32, coils=2, kspace_shape=(48, 40))
    assert multi[0].kspace.shape == (2, 48, 40) and multi.describe()["coils"] == [2]
    desc = val.describe()
    assert desc["kind"] == "synthetic" and desc["volumes"] == 2 and desc["slices"] == 6
    with pytest.raises(ValueError):
        SyntheticDataset(split="test")


def test_open_dataset(singlecoil_dir: Path) -> None:
    builtin = open_dataset(None, max_volumes=2, max_slices=1)
    assert isinstance(builtin, SyntheticDataset) and len(builtin) == 2
    assert builtin[0].target.shape == (160, 160)
    assert isinstance(open_dataset(singlecoil_dir, max_slices=1), SliceDataset)
    assert isinstance(
        open_dataset(None, split="train", volumes=1, slices=1, size=32), SyntheticDataset
    )


# ---------------------------------------------------------------------------------------------
# CLI.


def test_cli_synth_and_info(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "phantoms"
    result = runner.invoke(
        cli, ["data", "synth", "--out", str(out), "--volumes", "2", "--slices", "3", "--size", "64"]
    )
    assert result.exit_code == 0, result.output
    assert "Wrote 2" in result.output and str(out) in result.output
    ds = SliceDataset(out)
    assert len(ds) == 6 and ds[0].kspace.shape == (1, 64, 64)
    args = "--volumes 1 --slices 2 --size 64 --coils 4 --kspace-shape 128x72".split()
    result = runner.invoke(cli, ["data", "synth", "--out", str(tmp_path / "mc"), *args])
    assert result.exit_code == 0, result.output
    assert SliceDataset(tmp_path / "mc")[0].kspace.shape == (4, 128, 72)
    result = runner.invoke(cli, ["data", "info", str(tmp_path / "mc")])
    assert result.exit_code == 0, result.output
    assert "128x72" in result.output and "64x64" in result.output and "coils:    4" in result.output


def test_cli_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["data", "info", str(tmp_path / "missing")])
    assert result.exit_code == DataError.exit_code
    assert isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and "missing" in lines[0]
    assert "Traceback" not in result.output
    for bad in ("12", "axb", "32x64"):  # unparsable, or smaller than --size 64
        args = ["--out", str(tmp_path / "x"), "--size", "64", "--kspace-shape", bad]
        result = runner.invoke(cli, ["data", "synth", *args])
        assert result.exit_code == 2, (bad, result.output)
        assert "--kspace-shape" in result.output
    result = runner.invoke(cli, ["data", "synth", "--out", str(tmp_path / "x"), "--volumes", "0"])
    assert result.exit_code == 2 and "--volumes" in result.output
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------
# `data info`: every file reported, good or bad.


def _info_folder(root: Path) -> Path:
    """Two good single-coil files (``good_0000.h5``, ``good_0001.h5``: 3 slices, k-space 64x40,
    target 32x32 in ``reconstruction_esc``), one without a target, and four bad files: truncated,
    no ``kspace``, ``max`` = -1, every slice's k-space zero."""
    folder = root / "mixed"
    spec = {"volumes": 2, "slices": 3, "size": 32, "coils": 1, "kspace_shape": (64, 40)}
    synth_dataset(folder, prefix="good", seed=1, **spec)
    good = folder / "good_0000.h5"
    cut = folder / "cut.h5"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    _write(folder / "nok.h5", reconstruction_esc=np.zeros((2, 8, 8), np.float32))
    for name in ("max.h5", "rss.h5", "zero.h5"):
        shutil.copy(good, folder / name)
    with h5py.File(folder / "max.h5", "a") as hf:
        hf.attrs["max"] = -1.0
    with h5py.File(folder / "rss.h5", "a") as hf:
        del hf["reconstruction_esc"]
    with h5py.File(folder / "zero.h5", "a") as hf:
        hf["kspace"][...] = 0
    return folder


def test_info_reports_every_file_good_or_bad(tmp_path: Path, caplog) -> None:
    folder = _info_folder(tmp_path)
    with caplog.at_level(logging.WARNING, logger="mri_audit"):
        result = CliRunner().invoke(cli, ["data", "info", str(folder)])
    assert result.exit_code == DataError.exit_code, result.output
    lines = result.output.strip().splitlines()
    by_file = {line[5:].split(":", 1)[0]: line for line in lines[:7]}
    assert sorted(by_file) == [
        "cut.h5",
        "good_0000.h5",
        "good_0001.h5",
        "max.h5",
        "nok.h5",
        "rss.h5",
        "zero.h5",
    ]
    good = "3 slices, k-space 64x40 (1 coil), target reconstruction_esc 32x32"
    assert by_file["good_0000.h5"] == f"ok   good_0000.h5: {good}, invalid slices: 0"
    assert by_file["rss.h5"] == (
        "ok   rss.h5: 3 slices, k-space 64x40 (1 coil), target computed RSS 32x32, "
        "invalid slices: 0"
    )
    assert by_file["cut.h5"].startswith("bad  cut.h5: not a readable HDF5 file (")
    assert by_file["cut.h5"].endswith("re-download or re-create the file")
    assert by_file["nok.h5"].startswith("bad  nok.h5: no 'kspace' dataset; ")
    assert by_file["max.h5"].startswith("bad  max.h5: attribute 'max' is -1; ")
    assert by_file["zero.h5"] == (
        "bad  zero.h5: none of its 3 slices to audit is valid (all-zero k-space: 3); fix the "
        f"file or remove it from the data [{good}]"
    )
    summary = "\n".join(lines[7:])
    assert "files:    7 (3 ok, 4 bad)" in summary and "volumes:  3" in summary
    assert (
        "slices:   9" in summary and "targets:  reconstruction_esc: 2, computed RSS: 1" in summary
    )
    assert lines[-1] == (
        "Error: 4 of 7 files cannot be used (cut.h5, max.h5, nok.h5, zero.h5); fix them or "
        "remove them from the data"
    )
    assert "Traceback" not in result.output and "WARNING" not in result.output
    assert not [r for r in caplog.records if "no reconstruction_esc" in r.getMessage()]


def test_info_of_good_files_exits_0_and_names_the_target_keys(tmp_path: Path) -> None:
    folder = _info_folder(tmp_path)
    for name in ("cut.h5", "nok.h5", "max.h5", "zero.h5"):
        (folder / name).unlink()
    result = CliRunner().invoke(cli, ["data", "info", str(folder), "--max-slices", "2"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == [
        "ok   good_0000.h5",
        "ok   good_0001.h5",
        "ok   rss.h5",
    ]
    assert "2 of 3 slices" in lines[0] and "target computed RSS 32x32" in lines[2]
    assert "files:    3 (3 ok, 0 bad)" in result.output and "slices:   6" in result.output
    multi = tmp_path / "multi"
    synth_dataset(multi, prefix="mc", volumes=1, slices=2, size=32, coils=4, seed=2)
    result = CliRunner().invoke(cli, ["data", "info", str(multi / "mc_0000.h5")])
    assert result.exit_code == 0, result.output
    assert "(4 coils), target reconstruction_rss 32x32" in result.output


def test_inspect_files_matches_what_an_audit_opens(tmp_path: Path) -> None:
    from mri_audit.data.info import COMPUTED_RSS, inspect_files

    folder = _info_folder(tmp_path)
    reports = {r.path.name: r for r in inspect_files(folder)}
    for name, report in reports.items():
        if report.ok:
            assert len(SliceDataset(folder / name)) == report.slices
        else:
            with pytest.raises(DataError) as info:
                SliceDataset(folder / name)
            assert str(info.value) == f"{folder / name}: {report.problem}"
    assert reports["rss.h5"].target == COMPUTED_RSS and reports["cut.h5"].target is None
    assert reports["zero.h5"].invalid == {"all-zero k-space": 3}
