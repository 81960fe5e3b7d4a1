"""Integrity of an audit: the journal is validated, a resume is the same audit, one writer at a
time, the final files are complete, and a failed write is one line with nothing half-written."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from mri_audit.cli import cli
from tests.journal_util import line_hash, rechain

NET = """
import torch
from helper import scale
class Net(torch.nn.Module):
    def __init__(self, delay=0.0):
        super().__init__()
        self.c = torch.nn.Conv2d(1, 1, 3, padding=1)
        torch.nn.init.zeros_(self.c.weight)
        torch.nn.init.zeros_(self.c.bias)
        self.delay = delay
    def forward(self, x):
        import time
        time.sleep(self.delay)
        return scale(x) + self.c(x)
"""
HELPER = "def scale(x):\n    return x * 1.0\n"

# A k-space model that scribbles over its inputs in place.
MUTATING = """
import torch
from mri_audit.mri.physics import ifft2c, rss, center_crop
class Net(torch.nn.Module):
    mri_audit_input = "kspace"
    def __init__(self, mutate=True):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.mutate = mutate
    def forward(self, masked_kspace, mask):
        image = rss(ifft2c(torch.view_as_complex(masked_kspace.contiguous())), dim=1)
        if self.mutate:
            masked_kspace.mul_(3.0)
            mask.fill_(True)
        return image * self.w
"""

# The chain head hashes the journal's time lines; the report shows the head.
VOLATILE = ("created", "elapsed_seconds", "command_line", "chain", "manifest")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("integrity_models")
    (root / "net.py").write_text(NET)
    (root / "helper.py").write_text(HELPER)
    (root / "kspace_net.py").write_text(MUTATING)
    return root


def _args(data, models, out, *extra, spec="net.py:Net"):
    return [
        "run",
        "--model",
        f"{models}/{spec}",
        "--data",
        str(data),
        "--max-slices",
        "2",
        "--candidates",
        "3",
        "--attacks",
        "fnaf-rs",
        "--batch-size",
        "3",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def _run(data, models, out, *extra, code=0):
    result = CliRunner().invoke(cli, _args(data, models, out, *extra))
    if code is not None:
        assert result.exit_code == code, result.output
    return result


def _one_line_error(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def _stable(folder: Path) -> tuple[dict, pd.DataFrame]:
    results = json.loads((folder / "results.json").read_text())
    for k in VOLATILE:
        results.pop(k)
    return results, pd.read_csv(folder / "records.csv")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, singlecoil_dir, models):
    tmp = tmp_path_factory.mktemp("finished")
    _run(singlecoil_dir, models, tmp / "audit")
    _run(singlecoil_dir, models, tmp / "seed7", "--seed", "7")
    return tmp


def _journal(folder: Path) -> list[str]:
    return (folder / "records.jsonl").read_text().splitlines(keepends=True)


def _copy(finished: Path, tmp_path: Path) -> Path:
    out = tmp_path / "audit"
    shutil.copytree(finished / "audit", out)
    return out


def test_every_record_carries_the_audit_fingerprint(finished):
    lines = [json.loads(x) for x in _journal(finished / "audit")]
    header = lines[0]
    assert header["kind"] == "header" and len(header["audit"]) == 16
    assert all(x["audit"] == header["audit"] for x in lines[1:])
    assert {x["kind"] for x in lines[1:]} == {"fnaf", "time"}
    assert set(header["models"][0]["sources"]) == {"net.py", "helper.py"}
    results = json.loads((finished / "audit" / "results.json").read_text())
    assert results["complete"] is True and results["audit"] == header["audit"]
    other = json.loads(_journal(finished / "seed7")[0])
    assert other["audit"] != header["audit"]


def test_duplicated_line_is_refused_with_its_number(finished, tmp_path, singlecoil_dir, models):
    out = _copy(finished, tmp_path)
    lines = _journal(out)
    (out / "records.jsonl").write_text("".join([*lines, lines[1]]))
    line = _one_line_error(_run(singlecoil_dir, models, out, "--resume", code=4))
    n = len(lines) + 1
    assert f"records.jsonl line {n}: has sequence number 2, expected {n}: a line was dup" in line
    assert "--force" in line
    # A forger who re-links the chain (and removes results.json, which holds its head) meets
    # the check behind it.
    (out / "records.jsonl").write_text(rechain([*lines, lines[1]]))
    (out / "results.json").unlink()
    line = _one_line_error(_run(singlecoil_dir, models, out, "--resume", code=4))
    assert f"records.jsonl line {n}: repeats the record of records.jsonl line 2" in line


def test_line_of_another_audit_is_refused(finished, tmp_path, singlecoil_dir, models):
    out = _copy(finished, tmp_path)
    lines = _journal(out)
    foreign = _journal(finished / "seed7")[1]
    (out / "records.jsonl").write_text("".join([*lines[:2], foreign, *lines[3:]]))
    line = _one_line_error(_run(singlecoil_dir, models, out, "--resume", code=4))
    assert "line 3: has sequence number 2, expected 3" in line
    # The re-read of a finished audit refuses it too, with the same line number.
    result = CliRunner().invoke(cli, ["report", str(out), "--margin", "0.2"])
    assert result.exit_code == 4 and "line 3: has sequence number 2, expected 3" in result.output
    # Re-linked by a forger: the line still belongs to another audit.
    (out / "records.jsonl").write_text(rechain([*lines[:2], foreign, *lines[3:]]))
    result = CliRunner().invoke(cli, ["report", str(out), "--margin", "0.2"])
    assert result.exit_code == 4 and "line 3: belongs to another audit" in result.output


def test_forged_record_of_another_model_is_refused(finished, tmp_path, singlecoil_dir, models):
    out = _copy(finished, tmp_path)
    lines = _journal(out)
    rec = json.loads(lines[1])
    rec["model"] = "intruder.py:Net"
    (out / "records.jsonl").write_text(rechain([*lines, json.dumps(rec) + "\n"]))
    line = _one_line_error(_run(singlecoil_dir, models, out, "--resume", code=4))
    assert "a record of model 'intruder.py:Net', not in this audit" in line


@pytest.mark.parametrize(
    "bad, phrase",
    [
        ("{}\n", "has no hash-chain link (seq, prev)"),
        ("42\n", "is not a JSON object (int)"),
        ('{"kind": "fnaf", "mod\n', "is not valid JSON"),
    ],
)
def test_corrupt_middle_lines_are_refused(finished, tmp_path, singlecoil_dir, models, bad, phrase):
    out = _copy(finished, tmp_path)
    lines = _journal(out)
    (out / "records.jsonl").write_text("".join([*lines[:2], bad, *lines[2:]]))
    line = _one_line_error(_run(singlecoil_dir, models, out, "--resume", code=4))
    assert f"records.jsonl line 3: {phrase}" in line


def _doctor(lines: list[str], foreign: str, rng: random.Random) -> tuple[str, list[str]]:
    """One random damage to a journal: drop, duplicate, reorder, tear or a foreign line."""
    lines = list(lines)
    op = rng.choice(["drop", "duplicate", "reorder", "tear", "foreign"])
    i = rng.randrange(len(lines))
    if op == "drop":
        del lines[i]
    elif op == "duplicate":
        lines.insert(rng.randrange(len(lines) + 1), lines[i])
    elif op == "reorder":
        j = rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    elif op == "tear":
        lines[i] = lines[i][: rng.randrange(1, len(lines[i]) - 1)]
        if i < len(lines) - 1:
            lines[i] += "\n"
        else:
            lines = lines[: i + 1]
    else:
        lines.insert(rng.randrange(1, len(lines) + 1), foreign)
    return op, lines


@pytest.mark.slow  # end to end, > 15 s on 2 cores
def test_doctored_journals_are_refused_or_resume_identically(
    finished, tmp_path, singlecoil_dir, models
):
    """Property: whatever is done to a finished journal, a resume either refuses with one line
    or yields exactly the untouched audit's results."""
    reference, ref_records = _stable(finished / "audit")
    pristine = _journal(finished / "audit")
    foreign = _journal(finished / "seed7")[1]
    rng = random.Random(14)
    outcomes = []
    for trial in range(10):
        op, lines = _doctor(pristine, foreign, rng)
        if trial == 0:  # a crash's torn last line: the one damage a resume mends
            op, lines = "tear", [*pristine[:-1], pristine[-1][: len(pristine[-1]) // 2]]
        out = tmp_path / f"t{trial}"
        shutil.copytree(finished / "audit", out)
        (out / "records.jsonl").write_text("".join(lines))
        # Without results.json (and its chain head) a cut end is a crash's torn line, resumed.
        (out / "results.json").unlink()
        result = _run(singlecoil_dir, models, out, "--resume", code=None)
        if result.exit_code == 0:
            results, records = _stable(out)
            assert results == reference, (op, trial)
            pd.testing.assert_frame_equal(records, ref_records)
            outcomes.append((op, "same"))
        else:
            assert result.exit_code in (2, 4), (op, result.output)
            _one_line_error(result)
            outcomes.append((op, "refused"))
    assert {"same", "refused"} <= {o for _, o in outcomes}, outcomes


def test_resume_refuses_a_changed_sibling_module(tmp_path, singlecoil_dir, models):
    own = tmp_path / "models"
    shutil.copytree(models, own)
    out = tmp_path / "audit"
    _run(singlecoil_dir, own, out)
    (own / "helper.py").write_text(HELPER + "# edited\n")
    line = _one_line_error(_run(singlecoil_dir, own, out, "--resume", code=2))
    assert "source of net.py:Net (helper.py) changed" in line


def test_resume_refuses_changed_data_contents(tmp_path, singlecoil_dir, models):
    data = tmp_path / "data"
    shutil.copytree(singlecoil_dir, data)
    out = tmp_path / "audit"
    _run(data, models, out)
    import h5py

    victim = sorted(data.glob("*.h5"))[0]
    with h5py.File(victim, "r+") as f:
        f["kspace"][0, 0, 0] = f["kspace"][0, 0, 0] * 2
    line = _one_line_error(_run(data, models, out, "--resume", code=2))
    assert f"data (files {victim.name}) changed" in line


def test_resume_refuses_other_code(tmp_path, singlecoil_dir, models, monkeypatch):
    out = tmp_path / "audit"
    _run(singlecoil_dir, models, out)
    monkeypatch.setattr("mri_audit.audit.identity.code_digest", lambda classes=(): "0" * 64)
    line = _one_line_error(_run(singlecoil_dir, models, out, "--resume", code=2))
    assert "mri-audit's code or an attack's code changed" in line


def test_force_removes_every_file_of_the_old_audit(finished, tmp_path, singlecoil_dir, models):
    out = _copy(finished, tmp_path)
    shard = out / "records.rank1.jsonl"
    shard.write_text(_journal(finished / "seed7")[1])
    (out / "results.paper.json").write_text("{}")
    _run(singlecoil_dir, models, out, "--force")
    assert not shard.exists() and not (out / "results.paper.json").exists()
    assert _stable(out)[0] == _stable(finished / "audit")[0]


def test_kspace_model_mutating_its_inputs_cannot_change_the_numbers(
    tmp_path, singlecoil_dir, models
):
    frames = []
    for mutate in ("True", "False"):
        out = tmp_path / mutate
        args = ["--model-arg", f"mutate={mutate}", "--input", "kspace"]
        result = CliRunner().invoke(
            cli, _args(singlecoil_dir, models, out, *args, spec="kspace_net.py:Net")
        )
        assert result.exit_code == 0, result.output
        frames.append(pd.read_csv(out / "records.csv"))
    cols = ["ip", "r", "r0", "e", "loss", "clean_ssim", "hit"]
    pd.testing.assert_frame_equal(frames[0][cols], frames[1][cols])


def test_kill_during_final_writes_leaves_an_incomplete_audit(
    tmp_path, singlecoil_dir, models, monkeypatch
):
    out = tmp_path / "audit"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("mri_audit.report.html.render_html", killed)
    result = _run(singlecoil_dir, models, out, code=None)
    assert result.exit_code != 0
    assert json.loads((out / "results.json").read_text())["complete"] is False
    assert not (out / "report.html").exists()
    monkeypatch.undo()
    line = _one_line_error(CliRunner().invoke(cli, ["report", str(out)]))
    assert "incomplete" in line and "--resume" in line
    _run(singlecoil_dir, models, out, "--resume")
    assert json.loads((out / "results.json").read_text())["complete"] is True
    assert (out / "report.html").exists()


def test_elapsed_time_sums_every_segment(finished, tmp_path, singlecoil_dir, models):
    out = _copy(finished, tmp_path)
    lines = _journal(out)
    audit = json.loads(lines[0])["audit"]
    keep = [x for x in lines if json.loads(x)["kind"] != "time"]
    earlier = {"kind": "time", "audit": audit, "segment": 0, "elapsed": 1000.0}
    (out / "records.jsonl").write_text(rechain([*keep[:-1], json.dumps(earlier) + "\n"]))
    (out / "results.json").unlink()  # it holds the head of the journal before the edit
    _run(singlecoil_dir, models, out, "--resume")
    assert json.loads((out / "results.json").read_text())["elapsed_seconds"] > 1000.0


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_appending_keeps_the_journal_whole(
    tmp_path, singlecoil_dir, models, monkeypatch
):
    out = tmp_path / "audit"
    # Only the journal's appends fail (the header is written by another path).
    monkeypatch.setattr("mri_audit.audit.journal.os", types.SimpleNamespace(fsync=_no_space))
    line = _one_line_error(_run(singlecoil_dir, models, out, code=7))
    assert "the disk is full" in line and "--resume" in line
    lines = _journal(out)
    assert len(lines) == 1 and json.loads(lines[0])["kind"] == "header"
    assert not (out / "results.json").exists()
    monkeypatch.undo()
    _run(singlecoil_dir, models, out, "--resume")


def test_disk_full_writing_the_header_leaves_no_journal(
    tmp_path, singlecoil_dir, models, monkeypatch
):
    out = tmp_path / "audit"
    monkeypatch.setattr("mri_audit.files.os.fsync", _no_space)
    line = _one_line_error(_run(singlecoil_dir, models, out, code=7))
    assert "records.jsonl" in line and "the disk is full" in line
    assert sorted(p.name for p in out.iterdir()) == [".mri-audit.lock"]
    monkeypatch.undo()
    _run(singlecoil_dir, models, out)  # nothing blocks the next run


def test_read_only_out_is_refused_before_the_model_loads(
    tmp_path, singlecoil_dir, models, monkeypatch
):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    marker = tmp_path / "loaded"
    spy = tmp_path / "spy"
    spy.mkdir()
    (spy / "net.py").write_text(f"open({str(marker)!r}, 'w').close()\n" + NET)
    (spy / "helper.py").write_text(HELPER)
    monkeypatch.setattr("mri_audit.audit.outdir.tempfile.mkstemp", read_only)
    line = _one_line_error(_run(singlecoil_dir, spy, tmp_path / "audit", code=2))
    assert "is not writable (read-only)" in line
    assert not marker.exists()


def test_too_little_free_space_is_refused_before_work(
    tmp_path, singlecoil_dir, models, monkeypatch
):
    monkeypatch.setattr(
        "mri_audit.audit.outdir.shutil.disk_usage",
        lambda p: shutil._ntuple_diskusage(1, 1, 1 << 20),
    )
    line = _one_line_error(_run(singlecoil_dir, models, tmp_path / "audit", code=7))
    assert "1 MiB free" in line


def test_an_empty_journal_does_not_block_the_next_run(tmp_path, singlecoil_dir, models):
    out = tmp_path / "audit"
    out.mkdir()
    (out / "records.jsonl").write_bytes(b"")
    _run(singlecoil_dir, models, out)


@pytest.mark.slow  # end to end, > 15 s on 2 cores
def test_two_resumes_at_once_one_is_refused(tmp_path, singlecoil_dir, models):
    out = tmp_path / "audit"
    cmd = [sys.executable, "-m", "mri_audit", *_args(singlecoil_dir, models, out)]
    cmd += ["--model-arg", "delay=0.3", "--resume"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = out / ".mri-audit.lock"
    deadline = time.time() + 120
    while time.time() < deadline and not (lock.exists() and lock.read_text().strip()):
        time.sleep(0.05)
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert second.returncode == 2, second.stderr
    assert f"is in use by process {first.pid} on" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1


def test_file_hashes_are_cached_by_path_size_and_mtime(tmp_path, monkeypatch):
    import hashlib
    import os

    from mri_audit import hashing

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    f = tmp_path / "a.h5"
    f.write_bytes(b"abc")
    calls = []
    real = hashing.sha256_file
    monkeypatch.setattr(hashing, "sha256_file", lambda p: calls.append(p) or real(p))
    assert hashing.cached_sha256(f) == hashlib.sha256(b"abc").hexdigest()
    assert hashing.cached_sha256(f) == hashlib.sha256(b"abc").hexdigest()
    assert len(calls) == 1  # the second call read the cache
    f.write_bytes(b"abd")  # same size: the new mtime invalidates the entry
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert hashing.cached_sha256(f) == hashlib.sha256(b"abd").hexdigest()
    assert len(calls) == 2


def test_resume_of_an_audit_without_fingerprint_is_refused(
    finished, tmp_path, singlecoil_dir, models
):
    out = _copy(finished, tmp_path)
    lines = [json.loads(x) for x in _journal(out)]
    for x in lines:
        x.pop("audit")
    (out / "records.jsonl").write_text(rechain([json.dumps(x) + "\n" for x in lines]))
    (out / "results.json").unlink()
    line = _one_line_error(_run(singlecoil_dir, models, out, "--resume", code=2))
    assert "made by an older mri-audit, without an audit fingerprint; use --force" in line


def test_data_synth_into_an_unwritable_place_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("")
    result = CliRunner().invoke(cli, ["data", "synth", "--out", str(tmp_path / "afile" / "x")])
    assert result.exit_code == 7
    assert "cannot write" in _one_line_error(result)


def test_a_last_line_without_its_newline_is_mended(finished, tmp_path, singlecoil_dir, models):
    from mri_audit.audit.journal import read_journal

    out = _copy(finished, tmp_path)
    journal = out / "records.jsonl"
    lines = _journal(out)
    # Drop the last batch, then cut only the newline of what is now the last line.
    keep = "".join(lines[: len(lines) // 2])
    journal.write_text(keep[:-1])
    (out / "results.json").unlink()  # a crash: no results were written yet
    _run(singlecoil_dir, models, out, "--resume")
    assert _same(out, finished / "audit")
    read_journal(journal)  # every line whole: a later resume reads it
    _run(singlecoil_dir, models, out, "--resume")


def _same(a: Path, b: Path) -> bool:
    ra, ca = _stable(a)
    rb, cb = _stable(b)
    pd.testing.assert_frame_equal(ca, cb)
    return ra == rb


def test_shards_of_an_unfinished_distributed_run_are_merged(
    finished, tmp_path, singlecoil_dir, models
):
    """A single-process resume of a distributed audit merges its shards into records.jsonl;
    a shard record the main journal already holds identically (a kill between writing the merged
    journal and removing the shards) counts once."""
    out = _copy(finished, tmp_path)
    lines = _journal(out)
    records = [x for x in lines[1:] if json.loads(x)["kind"] != "time"]
    moved, kept = records[-2:], [x for x in lines if x not in records[-2:]]
    (out / "records.jsonl").write_text(rechain(kept))
    shard = rechain([*moved, records[0]], anchor=line_hash(lines[0].encode()))  # and one copy
    (out / "records.rank1.jsonl").write_text(shard)
    (out / "results.json").unlink()
    _run(singlecoil_dir, models, out, "--resume")
    assert not list(out.glob("records.rank*.jsonl"))
    assert _same(out, finished / "audit")
    merged = [json.loads(x) for x in _journal(out)]
    assert sum(x["kind"] == "fnaf" for x in merged) == len(records)
    reread = CliRunner().invoke(cli, ["report", str(out), "--margin", "0.2"])
    assert reread.exit_code == 0, reread.output


def test_resume_without_a_journal_keeps_the_old_files(finished, tmp_path, singlecoil_dir, models):
    out = _copy(finished, tmp_path)
    (out / "records.jsonl").unlink()
    line = _one_line_error(_run(singlecoil_dir, models, out, "--resume", code=2))
    assert "nothing to resume" in line and "--force" in line
    assert (out / "results.json").exists() and (out / "report.html").exists()


def test_what_does_not_change_the_numbers_does_not_block_a_resume(
    finished, tmp_path, singlecoil_dir, models, monkeypatch
):
    out = _copy(finished, tmp_path)
    lines = _journal(out)
    (out / "records.jsonl").write_text("".join(lines[: len(lines) // 2]))
    (out / "results.json").unlink()
    monkeypatch.chdir(singlecoil_dir.parent)
    # The data folder spelled another way, and another batch size.
    _run(f"./{singlecoil_dir.name}/", models, out, "--resume", "--batch-size", "5")
    (resumed, records), (reference, ref_records) = _stable(out), _stable(finished / "audit")
    pd.testing.assert_frame_equal(records, ref_records)
    # results.json says how this segment was run: the folder as typed, the batch size.
    assert resumed["data"].pop("source") != reference["data"].pop("source")
    assert (resumed["config"].pop("batch_size"), reference["config"].pop("batch_size")) == (5, 3)
    assert resumed == reference


def test_a_file_system_without_locks_warns_and_goes_on(tmp_path, monkeypatch, caplog):
    import fcntl

    from mri_audit.audit.outlock import hold_lock

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with hold_lock(tmp_path, "mri-audit run") as path:
        assert path.read_text().startswith(f"{os.getpid()} on ")
    assert "does not support locks" in caplog.text


def test_identity_changes_are_named():
    from mri_audit.audit.identity import describe_changes

    old = {
        "config": {"seed": 0},
        "code": {"mri_audit": "0.1.0", "sha256": "a", "torch": "2.13.0"},
        "models": [{"name": "m", "target": "net.py:A", "packages": {"fastmri": "0.3.0"}}],
        "data": {"files": [{"name": "a.h5", "sha256": "1"}]},
    }
    new = {
        **old,
        "models": [{"name": "m", "target": "net.py:B", "packages": {"fastmri": "0.4.0"}}],
    }
    assert describe_changes(old, new) == [
        "model m (net.py:A -> net.py:B)",
        "packages of m (fastmri)",
    ]


def test_code_digest_covers_the_classes_an_attack_extends(tmp_path, monkeypatch):
    import importlib

    from mri_audit.audit.identity import code_digest

    (tmp_path / "base_attack.py").write_text("class Base:\n    pass\n")
    (tmp_path / "child_attack.py").write_text(
        "from base_attack import Base\nclass Child(Base):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    child = importlib.import_module("child_attack").Child
    before = code_digest([child])
    (tmp_path / "base_attack.py").write_text("class Base:\n    x = 1\n")
    assert code_digest([child]) != before
