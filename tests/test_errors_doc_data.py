"""docs/errors.md, section "Data": every example reproduced for real (see tests/errors_doc.py).

Bad files are written with h5py into ``x/`` (so messages name ``x/a.h5`` as the document does) and
given to ``check`` or ``data info``; the audits that the skipped-slice and ``report`` rows read are
run once per module (a tiny model, one cheap attack) and copied where a row edits them.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mri_audit.data.checks import rss_target
from mri_audit.data.phantoms import synth_dataset
from tests.errors_doc import (
    SCENARIOS,
    Outcome,
    SharedFiles,
    cases,
    check_row,
    cli_outcome,
    scenario,
)

NET = """
import torch
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
    def forward(self, x):
        return x + self.conv(x)
"""
N = 32  # side of the small hand-written volumes


def check(data: str = "x", *extra: str) -> Outcome:
    """``check`` of the tiny model on ``data`` (the model file is written here first)."""
    if not Path("net.py").exists():
        Path("net.py").write_text(textwrap.dedent(NET))
    return cli_outcome("check", "--model", "net.py:Net", "--data", data, "--max-volumes", "1",
                       *extra)  # fmt: skip


def volume(slices: int = 4, shape: tuple[int, int] = (N, N), seed: int = 0):
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


def h5(path: str | Path = "x/a.h5", *, attrs: dict | None = None, **datasets) -> Path:
    """A file holding exactly ``datasets`` and ``attrs``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as hf:
        for name, value in datasets.items():
            hf.create_dataset(name, data=value)
        for key, value in (attrs or {}).items():
            hf.attrs[key] = value
    return path


def fastmri_file(path: str | Path = "x/a.h5", doctor=None, *, slices: int = 4, max_attr=True,
                 **datasets) -> Path:  # fmt: skip
    """A valid single-coil file (k-space, ``reconstruction_esc``, ``max``) whose arrays
    ``doctor(kspace, target)`` may edit first; ``datasets`` are added (an ISMRMRD header)."""
    kspace, target = volume(slices)
    if doctor is not None:
        doctor(kspace, target)
    attrs = {"max": float(np.max(np.where(np.isfinite(target), target, 0)))} if max_attr else {}
    return h5(path, kspace=kspace, reconstruction_esc=target, attrs=attrs, **datasets)


class Assets(SharedFiles):
    """What several rows share, made on first use in a module-scoped folder (copy, don't edit)."""

    def knee(self) -> Path:
        """Two slices of two-coil k-space 640x368 with a 320x320 ``reconstruction_rss``: fastMRI
        knee geometry, kept small."""

        def make(path: Path) -> Path:
            (made,) = synth_dataset(path, prefix="knee", volumes=1, slices=2, size=320, coils=2,
                                    kspace_shape=(640, 368), seed=5)  # fmt: skip
            return made

        return self._once("knee", make)

    def audit(self, seed: int = 0) -> Path:
        """A finished audit (``run``) of ``x/a.h5``: 5 slices of which slice 1 has a NaN in its
        k-space, slice 2 an all-zero k-space and slice 3 a NaN in its target."""

        def make(path: Path) -> Path:
            def doctor(k, t):
                k[1, 3, 4] = np.nan
                k[2] = 0
                t[3, 5, 5] = np.nan

            work = path.parent / f"work{seed}"
            fastmri_file(work / "x" / "a.h5", doctor, slices=5)
            (work / "net.py").write_text(textwrap.dedent(NET))
            args = ["run", "--model", f"{work}/net.py:Net", "--data", str(work / "x"), "--attacks"]
            args += ["fnaf-rs", "--candidates", "2", "--seed", str(seed), "--out", str(path)]
            out = cli_outcome(*args, "--no-progress")
            assert out.status == 0, out.output
            return path

        return self._once(f"audit{seed}", make)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    return Assets(tmp_path_factory.mktemp("errors_doc_data"))


def copy_audit(assets: Assets, dest: str = "out", seed: int = 0) -> Path:
    return Path(shutil.copytree(assets.audit(seed), dest))


# ---------------------------------------------------------------------------- files and folders


@scenario("path missing")
def _path_missing(tmp_path, assets):
    return [check("x")]


@scenario("empty folder")
def _empty_folder(tmp_path, assets):
    Path("x").mkdir()
    Path("x/notes.txt").write_text("not data")
    return [check("x")]


@scenario("not HDF5 / truncated")
def _not_hdf5_or_truncated(tmp_path, assets):
    Path("x").mkdir()
    Path("x/a.h5").write_bytes(b"this is not HDF5\n" * 20)
    not_hdf5 = check("x")
    whole = fastmri_file("x/a.h5").read_bytes()
    Path("x/a.h5").write_bytes(whole[: len(whole) // 2])
    return [not_hdf5, check("x")]


@scenario("no `kspace`")
def _no_kspace(tmp_path, assets):
    h5(reconstruction_esc=np.zeros((2, 8, 8), np.float32))
    return [check("x")]


@scenario("wrong k-space ndim")
def _wrong_kspace_ndim(tmp_path, assets):
    h5(kspace=np.ones((8, 8), np.complex64))
    return [check("x")]


@scenario("real-valued k-space")
def _real_kspace(tmp_path, assets):
    kspace, target = volume()
    h5(kspace=np.abs(kspace).astype(np.float32), reconstruction_esc=target)
    return [check("x")]


@scenario("slice data unreadable (a file damaged past its metadata)")
def _slice_data_unreadable(tmp_path, assets):
    kspace, target = volume()
    path = Path("x/a.h5")
    path.parent.mkdir()
    with h5py.File(path, "w") as hf:
        hf.create_dataset("kspace", data=kspace, chunks=(1, N, N), compression="gzip")
        hf.create_dataset("reconstruction_esc", data=target)
        hf.attrs["max"] = float(target.max())
    with h5py.File(path, "r") as hf:
        chunk = hf["kspace"].id.get_chunk_info(2)  # slice 2's compressed bytes
    raw = bytearray(path.read_bytes())
    raw[chunk.byte_offset : chunk.byte_offset + chunk.size] = b"\xab" * chunk.size
    path.write_bytes(bytes(raw))
    return [check("x")]


# ---------------------------------------------------------------------------- targets and attrs


@scenario("target missing")
def _target_missing(tmp_path, assets):
    Path("x").mkdir()
    with h5py.File(shutil.copy(assets.knee(), "x/a.h5"), "a") as hf:
        del hf["reconstruction_rss"]
        del hf.attrs["max"]
    checked = check("x", "--max-slices", "1")
    assert checked.status == 0 and "WARNING" in checked.output, checked.output
    info = cli_outcome("data", "info", "x")
    assert info.status == 0, info.output
    return [Outcome(None, checked.output), Outcome(None, info.output)]


@scenario("other attrs (`norm`, `acquisition`, `patient_id`, ...) of any type")
def _other_attrs(tmp_path, assets):
    from mri_audit.data.datasets import SliceDataset

    path = fastmri_file()
    with h5py.File(path, "a") as hf:
        hf.attrs["norm"] = np.array([np.nan, 1.0])
        hf.attrs["acquisition"] = np.bytes_(b"CORPD_FBK")
        hf.attrs["patient_id"] = 42
        hf.attrs["flip_angle"] = np.complex64(1 + 2j)
    out = check("x")
    assert out.status == 0, out.output
    sample = SliceDataset(path)[0]
    assert sample.attrs["acquisition"] == "CORPD_FBK" and sample.attrs["patient_id"] == 42
    return [Outcome(None, out.output)]


@scenario("attribute `max` 0, negative, NaN, inf, a string, bytes, a boolean, complex or an array")
def _bad_max(tmp_path, assets):
    outcomes = []
    for value in (0.0, -2.5, np.nan, np.inf, "abc", np.bytes_(b"1.5"), np.bool_(True),
                  np.complex64(1 + 1j), np.array([1.0, 2.0])):  # fmt: skip
        path = fastmri_file()
        with h5py.File(path, "a") as hf:
            hf.attrs["max"] = value
        outcomes.append(check("x"))
    return outcomes


@scenario("no `max` attribute and a target that is zero or not finite everywhere")
def _no_max_and_no_target_range(tmp_path, assets):
    def zero(k, t):
        t[...] = 0

    def zero_or_not_finite(k, t):
        t[:2] = 0
        t[2] = np.nan
        t[3] = np.inf  # these two slices are invalid, and the other two have no range

    outcomes = []
    for doctor in (zero, zero_or_not_finite):
        fastmri_file(doctor=doctor, max_attr=False)
        outcomes.append(check("x"))
    return outcomes


@scenario("ISMRMRD header encoding or recon size below 1 or above 65536")
def _bad_ismrmrd_sizes(tmp_path, assets):
    from mri_audit.data.datasets import SliceDataset
    from mri_audit.data.fastmri_io import ismrmrd_header

    outcomes = []
    for encoded, recon in (((N, N), (-5, -5)), ((N, 10**9), (N, N))):
        fastmri_file(ismrmrd_header=ismrmrd_header(encoded, recon, 4))
        outcomes.append(check("x"))
    assert "encodedSpace matrixSize is 32x1000000000x1" in outcomes[1].output
    # An unparsable header is ignored.
    SliceDataset(fastmri_file("y/a.h5", ismrmrd_header=np.bytes_(b"<ismrmrdHeader><oops")))
    return outcomes


# ---------------------------------------------------------------------------- slices


def _reason_of_skipped_slice(assets: Assets, slice_index: int, reason: str) -> list[Outcome]:
    """The shared audit: the slice is a ``skipped`` record with its reason, counted in
    results.json and listed in the report; the model never saw it (its NaN would have failed
    the dry run, exit 5) and the other slices were audited."""
    out = copy_audit(assets)
    results = json.loads((out / "results.json").read_text())
    assert results["data"]["invalid_slices"] == {
        "NaN or Inf in the k-space": 1,
        "all-zero k-space": 1,
        "NaN or Inf in the target": 1,
    }
    (skipped,) = [f for f in results["failures"]["slices"] if f["slice"] == slice_index]
    assert skipped["kind"] == "skipped" and skipped["reason"] == reason, skipped
    assert results["attacks"]["net.py:Net"]["fnaf-rs"]["slices"] == 2  # slices 0 and 4
    report = (out / "report.html").read_text()
    assert "Slices not audited" in report and reason in report
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    mine = [r for r in records if r.get("slice") == slice_index]
    assert mine and all(r.get("kind") == "skipped" for r in mine), mine
    return [Outcome(None, "\n".join(json.dumps(r) for r in mine))]


@scenario("NaN/Inf in a slice's k-space")
def _nan_kspace_slice(tmp_path, assets):
    return _reason_of_skipped_slice(assets, 1, "NaN or Inf in the k-space")


@scenario("all-zero k-space in a slice")
def _zero_kspace_slice(tmp_path, assets):
    return _reason_of_skipped_slice(assets, 2, "all-zero k-space")


@scenario("NaN/Inf in a slice's target")
def _nan_target_slice(tmp_path, assets):
    return _reason_of_skipped_slice(assets, 3, "NaN or Inf in the target")


@scenario("a file's slices smaller than 8x8 (k-space grid or target; SSIM's window is 7x7)")
def _slices_too_small(tmp_path, assets):
    h5(kspace=np.ones((4, 1, 64), np.complex64), reconstruction_esc=np.ones((4, 1, 64)),
       attrs={"max": 1.0})  # fmt: skip
    return [check("x")]


@scenario("a file with no valid slice (among the `--max-slices` kept)")
def _no_valid_slice(tmp_path, assets):
    def dead(k, t):
        k[:2] = np.nan
        k[2:] = 0

    def half(k, t):
        k[0, 2, 2] = np.inf
        k[1] = 0

    fastmri_file("x/a.h5", dead)
    alone = check("x")
    # A file with some valid slices only warns; here the bad b.h5 beside it stops the audit.
    shutil.rmtree("x")
    fastmri_file("x/a.h5", half)
    fastmri_file("x/b.h5", dead)
    beside = check("x", "--max-volumes", "2")
    assert "x/b.h5: none of its 4 slices to audit is valid" in beside.output
    return [alone, beside]


@scenario("`data info` on a folder with bad files")
def _data_info_with_bad_files(tmp_path, assets):
    knee = assets.knee()
    Path("x").mkdir()
    shutil.copy(knee, "x/a.h5")
    shutil.copy(knee, "x/a2.h5")
    shutil.copy(knee, "x/a3.h5")
    with h5py.File("x/a3.h5", "a") as hf:  # computed RSS
        del hf["reconstruction_rss"]
    Path("x/b.h5").write_bytes(b"this is not HDF5\n" * 20)
    shutil.copy(knee, "x/c.h5")
    with h5py.File("x/c.h5", "a") as hf:
        hf["kspace"][...] = 0
    bad = cli_outcome("data", "info", "x")
    for name in ("b.h5", "c.h5"):
        Path("x", name).unlink()
    good = cli_outcome("data", "info", "x")
    assert good.status == 0 and "files:    3 (3 ok, 0 bad)" in good.output, good.output
    return [bad]


# ---------------------------------------------------------------------------- report


@scenario("`results.json` missing, not JSON, unknown schema (`report`)")
def _report_results_json(tmp_path, assets):
    results = copy_audit(assets) / "results.json"
    outcomes = []
    results.write_text("{not json")
    outcomes.append(cli_outcome("report", "out/results.json"))
    results.write_text(json.dumps({"schema": "someone-else/9", "models": []}))
    outcomes.append(cli_outcome("report", "out/results.json"))
    results.write_text(json.dumps({"schema_version": 99, "models": []}))
    outcomes.append(cli_outcome("report", "out/results.json"))
    results.unlink()
    outcomes.append(cli_outcome("report", "out/results.json"))
    return outcomes


@scenario("`report --criterion`: journal `records.jsonl` missing")
def _journal_missing(tmp_path, assets):
    out = copy_audit(assets)
    (out / "records.jsonl").unlink()
    return [cli_outcome("report", "out/results.json", "--criterion", "recovery")]


@scenario("`report --criterion`: journal corrupt, empty, or of another audit")
def _journal_corrupt_empty_or_foreign(tmp_path, assets):
    out = copy_audit(assets)
    journal = out / "records.jsonl"
    original = journal.read_text()
    lines = original.splitlines(keepends=True)
    assert len(lines) > 3
    outcomes = []
    journal.write_text("".join([*lines[:2], lines[2][: len(lines[2]) // 2] + "\n", *lines[3:]]))
    outcomes.append(cli_outcome("report", "out/results.json", "--criterion", "recovery"))
    journal.write_text("")
    outcomes.append(cli_outcome("report", "out/results.json", "--criterion", "recovery"))
    shutil.copy(assets.audit(seed=1) / "records.jsonl", journal)
    outcomes.append(cli_outcome("report", "out/results.json", "--criterion", "recovery"))
    return outcomes


@pytest.mark.parametrize("case", cases(__name__))
def test_documented(case, tmp_path, monkeypatch, assets):
    monkeypatch.chdir(tmp_path)
    check_row(case, SCENARIOS[case](tmp_path, assets))
