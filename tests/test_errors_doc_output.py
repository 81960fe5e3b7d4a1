"""docs/errors.md, "Output folder and journal": every row reproduced through the CLI.

One tiny finished audit (``x/net.py:Net`` with its sibling ``helper.py``, weights ``w.pt``, one
slice, ``fnaf-rs`` with 2 candidates) is made once; each scenario copies it into its own folder
(the test's working directory, so the documented names ``out``, ``x/net.py``, ``w.pt`` are the
real ones) and breaks what its row describes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import shutil
import types
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

import mri_audit
from mri_audit.cli import cli
from mri_audit.files import to_jsonable
from tests.errors_doc import SCENARIOS, Outcome, cases, check_row, scenario
from tests.journal_util import rechain

# An image-domain model that also runs as a k-space model (``--input kspace``), so a resume
# with the other domain gets as far as the identity check; it imports a sibling module.
NET = """
import torch
from helper import scale
from mri_audit.mri.physics import ifft2c, rss
class Net(torch.nn.Module):
    def __init__(self, k=1):
        super().__init__()
        self.c = torch.nn.Conv2d(1, 1, 3, padding=1)
        torch.nn.init.zeros_(self.c.weight)
        torch.nn.init.zeros_(self.c.bias)
    def forward(self, x, mask=None):
        if mask is not None:  # k-space: (B, coils, H, W, 2) -> (B, H, W)
            x = rss(ifft2c(torch.view_as_complex(x.contiguous())), dim=1)[:, None]
            return (scale(x) + self.c(x))[:, 0]
        return scale(x) + self.c(x)
"""
HELPER = "def scale(x):\n    return x * 1.0\n"

# A k-space model that scribbles over its inputs in place (or not: mutate=False).
MUTATING = """
import torch
from mri_audit.mri.physics import ifft2c, rss
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

# mri-audit's code digest, pinned: the resume scenarios change what they mean to change, nothing
# else (an edit of mri-audit's own files between the fixture's audit and a scenario would).
CODE_DIGEST = "c0de" * 16


def _pinned_digest(attack_classes=()) -> str:
    return CODE_DIGEST


SMALL = ["--max-volumes", "1", "--max-slices", "1", "--attacks", "fnaf-rs", "--candidates", "2"]
LIBRARY_SMALL = dict(max_volumes=1, max_slices=1, attacks=["fnaf-rs"], candidates=2)


def _cli(args: list[str]):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="mri-audit")


def _run(data: Path, *extra, model: str = "x/net.py:Net", weights: str | None = "w.pt", out="out"):
    args = ["run", "--model", model, "--data", data, *SMALL, "--out", out, "--no-progress"]
    if weights:
        args += ["--weights", weights]
    return _cli([*args, *extra])


def _ok(result) -> None:
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output


def _outcome(result) -> Outcome:
    assert "Traceback" not in result.output, result.output
    return Outcome(result.exit_code, result.output)


@pytest.fixture(scope="module")
def base(tmp_path_factory, singlecoil_dir) -> Path:
    """``x/net.py``, ``x/helper.py``, weights ``w.pt`` and ``w2.pt``, the finished audit ``out``
    and ``other.jsonl``: a journal record of the same slice audited with another seed."""
    root = tmp_path_factory.mktemp("errors_doc_output")
    (root / "x").mkdir()
    (root / "x" / "net.py").write_text(NET)
    (root / "x" / "helper.py").write_text(HELPER)
    state = {"c.weight": torch.zeros(1, 1, 3, 3), "c.bias": torch.zeros(1)}
    torch.save(state, root / "w.pt")
    torch.save({**state, "c.bias": torch.full((1,), 1e-3)}, root / "w2.pt")
    with contextlib.chdir(root), pytest.MonkeyPatch.context() as mp:
        mp.setattr("mri_audit.audit.identity.code_digest", _pinned_digest)
        _ok(_run(singlecoil_dir))
        other = mri_audit.audit(
            "x/net.py:Net", weights="w.pt", data=singlecoil_dir, seed=7, **LIBRARY_SMALL
        )
    record = next(r for r in other.journal if r["kind"] == "fnaf")
    assert record["audit"] == other.fingerprint != json.loads(_journal(root / "out")[0])["audit"]
    (root / "other.jsonl").write_text(json.dumps(to_jsonable(record), sort_keys=True) + "\n")
    return root


class Env(NamedTuple):
    tmp: Path  # the working directory
    base: Path
    data: Path  # the session's single-coil folder (read-only)
    monkeypatch: pytest.MonkeyPatch
    caplog: pytest.LogCaptureFixture


def _copy(env: Env, *, audit: bool = True) -> Path:
    """The model files and weights (and the finished audit ``out``) in the working directory."""
    shutil.copytree(env.base / "x", env.tmp / "x")
    for w in ("w.pt", "w2.pt"):
        shutil.copy(env.base / w, env.tmp / w)
    if audit:
        shutil.copytree(env.base / "out", env.tmp / "out")
    return env.tmp / "out"


def _journal(out: Path) -> list[str]:
    return (out / "records.jsonl").read_text().splitlines(keepends=True)


def _records(lines: list[str]) -> list[int]:
    """Indices of the journal's record lines (not the header, not time lines)."""
    return [i for i, x in enumerate(lines) if json.loads(x)["kind"] not in ("header", "time")]


def _resume_with_journal(env: Env, lines: list[str], *, results: bool = True) -> Outcome:
    """``--resume`` of the finished audit with its journal replaced by ``lines`` (and without
    its ``results.json``, which holds the journal's chain head, unless ``results``)."""
    out = _copy(env)
    (out / "records.jsonl").write_text("".join(lines))
    if not results:
        (out / "results.json").unlink()  # a crash before the results were written
    return _outcome(_run(env.data, "--resume"))


# ------------------------------------------------------------------------------ the folder


@scenario("output folder holds another audit")
def _holds_an_audit(env: Env):
    _copy(env)
    return [_outcome(_run(env.data))]


@scenario("`--out` is a file")
def _out_is_a_file(env: Env):
    _copy(env, audit=False)
    (env.tmp / "out").write_text("not a folder")
    return [_outcome(_run(env.data))]


@scenario("`--out` read-only or not creatable")
def _out_read_only(env: Env):
    _copy(env, audit=False)
    marker = env.tmp / "loaded"
    source = (env.tmp / "x" / "net.py").read_text()
    (env.tmp / "x" / "net.py").write_text(f"open({str(marker)!r}, 'w').close()\n{source}")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    (env.tmp / "afile").write_text("")
    not_creatable = _run(env.data, out="afile/out")
    assert "--out afile/out cannot be created in afile" in not_creatable.output
    env.monkeypatch.setattr("mri_audit.audit.outdir.tempfile.mkstemp", read_only)
    result = _run(env.data)
    assert not marker.exists(), "the model was loaded before --out was checked"
    return [_outcome(result), _outcome(not_creatable)]


@scenario("less than 64 MiB free in `--out`")
def _too_little_space(env: Env):
    _copy(env, audit=False)
    env.monkeypatch.setattr(
        "mri_audit.audit.outdir.shutil.disk_usage",
        lambda p: shutil._ntuple_diskusage(1 << 40, (1 << 40) - (1 << 20), 1 << 20),
    )
    result = _run(env.data)
    assert not (env.tmp / "out").exists() or not any((env.tmp / "out").iterdir())
    return [_outcome(result)]


@scenario("a second `run` (or `harden` on the same weights file) while one is running")
def _second_run(env: Env):
    from mri_audit.audit.outlock import hold_lock

    out = _copy(env, audit=False)
    out.mkdir()
    with hold_lock(out, "mri-audit run"):  # held as a running `run` holds it
        result = _run(env.data)
    assert not (out / "records.jsonl").exists()
    return [_outcome(result)]


# ------------------------------------------------------------------------------ resume: identity


@scenario("`--resume` with other settings")
def _resume_other_settings(env: Env):
    _copy(env)
    return [_outcome(_run(env.data, "--resume", "--seed", "7"))]


@scenario("`--resume` after editing the model file or any module it imported from its folder")
def _resume_edited_source(env: Env):
    _copy(env)
    (env.tmp / "x" / "helper.py").write_text(HELPER + "# edited\n")
    return [_outcome(_run(env.data, "--resume"))]


@scenario("`--resume` with other weights, `--model-arg`, `--input`, `--normalize`")
def _resume_other_model_settings(env: Env):
    _copy(env)
    outcomes = []
    for extra, weights in (
        ((), "w2.pt"),
        (("--model-arg", "k=2"), "w.pt"),
        (("--input", "kspace"), "w.pt"),
        (("--normalize", "none"), "w.pt"),
    ):
        outcomes.append(_outcome(_run(env.data, "--resume", *extra, weights=weights)))
    assert "normalize of net.py:Net (instance -> none)" in outcomes[-1].output
    return outcomes


@scenario("`--resume` after the data files' contents changed")
def _resume_changed_data(env: Env):
    import h5py

    _copy(env)
    data = env.tmp / "data"
    shutil.copytree(env.data, data)
    with h5py.File(data / "file_sc_0000.h5", "r+") as f:
        f["kspace"][0, 0, 0] = f["kspace"][0, 0, 0] * 2
    return [_outcome(_run(data, "--resume"))]


@scenario("`--resume` with another mri-audit (version or code, an attack's code included) or torch")
def _resume_other_code(env: Env):
    mp = env.monkeypatch
    outcomes = []
    for target, value in (
        ("mri_audit.audit.identity.__version__", "0.2.0"),
        ("mri_audit.audit.identity.code_digest", lambda classes=(): "0" * 64),
        ("torch.__version__", "9.9.9"),
    ):
        shutil.rmtree(env.tmp / "x", ignore_errors=True)
        shutil.rmtree(env.tmp / "out", ignore_errors=True)
        _copy(env)
        with mp.context() as m:
            m.setattr(target, value)
            outcomes.append(_outcome(_run(env.data, "--resume")))
    return outcomes


@scenario("`--resume` of an audit made before fingerprints existed")
def _resume_without_fingerprint(env: Env):
    lines = [json.loads(x) for x in _journal(env.base / "out")]
    for x in lines:
        x.pop("audit")
    # Re-linked as a forger would (an older mri-audit's journal has no hash chain, refused
    # first: see "journal line without a hash-chain link"); its results.json had no head.
    journal = rechain([json.dumps(x) + "\n" for x in lines])
    return [_resume_with_journal(env, [journal], results=False)]


# ------------------------------------------------------------------------------ resume: journal


def _resume_each(env: Env, journals: list[list[str]]) -> list[Outcome]:
    """``--resume`` with each journal in turn (each time on a fresh copy of the audit)."""
    outcomes = []
    for journal in journals:
        shutil.rmtree(env.tmp / "x", ignore_errors=True)
        shutil.rmtree(env.tmp / "out", ignore_errors=True)
        outcomes.append(_resume_with_journal(env, journal))
    return outcomes


@scenario("journal line edited (its hash chain broken)")
def _journal_line_edited(env: Env):
    lines = _journal(env.base / "out")
    assert len(lines) == 3  # the header, the slice's record, the run's time line
    edited = [json.loads(x) for x in lines]
    edited[1]["r"] = 0.01  # one number of a record, its link fields kept (a hand edit)
    edited[2]["elapsed"] = 1.0  # the last line, which no later line links to
    first = [lines[0], json.dumps(edited[1], sort_keys=True) + "\n", lines[2]]
    last = [*lines[:2], json.dumps(edited[2], sort_keys=True) + "\n"]
    return _resume_each(env, [first, last])


@scenario("journal line dropped")
def _journal_line_dropped(env: Env):
    lines = _journal(env.base / "out")
    return _resume_each(env, [[lines[0], lines[2]]])


@scenario("journal line duplicated, or lines reordered")
def _journal_line_duplicated(env: Env):
    lines = _journal(env.base / "out")
    assert _records(lines) == [1]
    return _resume_each(env, [[*lines, lines[1]], [lines[0], lines[2], lines[1]]])


@scenario(
    "journal line without a hash-chain link (added by hand, or written by an mri-audit before chained journals)"  # noqa: E501
)
def _journal_line_unlinked(env: Env):
    lines = _journal(env.base / "out")
    unlinked = {k: v for k, v in json.loads(lines[1]).items() if k not in ("seq", "prev")}
    return _resume_each(
        env, [[*lines, json.dumps(unlinked) + "\n"], [*lines[:2], "{}\n", *lines[2:]]]
    )


@scenario("journal cut short of the head results.json recorded (`--resume`)")
def _journal_cut_short(env: Env):
    lines = _journal(env.base / "out")
    return [_resume_with_journal(env, lines[:2])]  # whole lines: not a torn last line


@scenario("journal lines after the head results.json recorded (`report --criterion`)")
def _journal_lines_after_head(env: Env):
    out = _copy(env)
    lines = _journal(out)
    audit = json.loads(lines[0])["audit"]
    later = {"kind": "time", "audit": audit, "segment": 9, "elapsed": 1.0}
    (out / "records.jsonl").write_text(rechain([*lines, json.dumps(later) + "\n"]))  # linked
    return [_outcome(_cli(["report", "out", "--criterion", "paper"]))]


# The checks behind the chain: each journal below is re-linked as a forger would (rechain), so
# that the chain holds and the record's own check answers.


@scenario("journal record repeated (its chain re-linked)")
def _journal_line_repeated(env: Env):
    lines = _journal(env.base / "out")
    assert _records(lines) == [1]
    return [_resume_with_journal(env, [rechain([*lines, lines[1]])])]


@scenario("journal line from another audit (another seed, model, data, ...)")
def _journal_line_of_another_audit(env: Env):
    lines = _journal(env.base / "out")
    foreign = (env.base / "other.jsonl").read_text()  # the same slice, audited with seed 7
    return [_resume_with_journal(env, [rechain([*lines[:2], foreign, *lines[2:]])])]


@scenario("journal record of a model or attack the audit does not have")
def _journal_record_of_another_model(env: Env):
    lines = _journal(env.base / "out")
    forged = {**json.loads(lines[1]), "model": "intruder.py:Net"}
    return [_resume_with_journal(env, [rechain([*lines, json.dumps(forged) + "\n"])])]


@scenario("journal line torn in the middle, `{}`, `42`, a second header, no header first")
def _journal_line_broken(env: Env):
    lines = _journal(env.base / "out")
    journals = [
        [*lines[:2], '{"kind": "fnaf", "mod\n', *lines[2:]],
        [*lines[:2], "{}\n", *lines[2:]],
        [*lines[:2], "42\n", *lines[2:]],
        [*lines, lines[0]],
        lines[1:],
    ]
    return _resume_each(env, [[rechain(journal)] for journal in journals])


@scenario("journal record of a slice not in the data")
def _journal_record_of_another_slice(env: Env):
    lines = _journal(env.base / "out")
    stray = {**json.loads(lines[1]), "volume": "vol", "slice": 9}
    return [_resume_with_journal(env, [rechain([*lines, json.dumps(stray) + "\n"])])]


@scenario("torn last journal line (a crash mid-write)")
def _torn_last_line(env: Env):
    lines = _journal(env.base / "out")
    torn = lines[1][: len(lines[1]) // 2]  # the batch's record, cut mid-write
    out = _copy(env)
    (out / "records.jsonl").write_text(lines[0] + torn)
    (out / "results.json").unlink()
    env.caplog.set_level(logging.WARNING, logger="mri_audit")
    _ok(_run(env.data, "--resume"))
    # The batch was recomputed: the same record as the uncut audit's.
    cols = ["volume", "slice", "r", "r0", "hit"]
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "records.csv")[cols], pd.read_csv(env.base / "out" / "records.csv")[cols]
    )
    logged = "\n".join(f"{r.levelname} {r.name}: {r.getMessage()}" for r in env.caplog.records)
    return [Outcome(None, logged)]


@scenario("an empty (0-byte) journal")
def _empty_journal(env: Env):
    out = _copy(env, audit=False)
    out.mkdir()
    (out / "records.jsonl").write_bytes(b"")
    result = _run(env.data)
    _ok(result)
    assert json.loads(_journal(out)[0])["kind"] == "header"
    return [Outcome(None, result.output)]


@scenario("`--force`")
def _force(env: Env):
    out = _copy(env)
    # A re-read (results.paper.json, report.paper.html), a distributed run's shard, a temporary
    # file an interrupted write left.
    _ok(_cli(["report", "out", "--criterion", "paper"]))
    (out / "records.rank1.jsonl").write_text(_journal(out)[1])
    (out / ".results.json.x1y2.tmp").write_text("{")
    old = {p.name for p in out.iterdir()}
    assert {"results.paper.json", "report.paper.html"} <= old
    result = _run(env.data, "--force")
    _ok(result)
    left = {p.name for p in out.iterdir()}
    assert not {"results.paper.json", "report.paper.html", "records.rank1.jsonl"} & left
    assert ".results.json.x1y2.tmp" not in left
    return [Outcome(None, result.output)]


# ------------------------------------------------------------------------------ writing


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@scenario("disk full while appending to the journal")
def _disk_full_appending(env: Env):
    out = _copy(env, audit=False)
    # Only the journal's appends fail (its header is written by atomic_write).
    env.monkeypatch.setattr("mri_audit.audit.journal.os", types.SimpleNamespace(fsync=_no_space))
    result = _run(env.data)
    lines = _journal(out)
    assert len(lines) == 1 and json.loads(lines[0])["kind"] == "header"  # the partial write cut
    return [_outcome(result)]


@scenario("disk full writing the journal's header or a final file")
def _disk_full_header(env: Env):
    out = _copy(env, audit=False)
    env.monkeypatch.setattr("mri_audit.files.os.fsync", _no_space)
    result = _run(env.data)
    assert sorted(p.name for p in out.iterdir()) == [".mri-audit.lock"]  # no 0-byte journal
    return [_outcome(result)]


@scenario("killed while writing the final files")
def _killed_writing_final_files(env: Env):
    out = _copy(env, audit=False)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with env.monkeypatch.context() as m:
        m.setattr("mri_audit.report.html.render_html", killed)
        assert _run(env.data).exit_code != 0
    results = (out / "results.json").read_text()
    assert json.loads(results)["complete"] is False
    report = _cli(["report", "out"])
    assert report.exit_code == 4, report.output
    _ok(_run(env.data, "--resume"))
    assert json.loads((out / "results.json").read_text())["complete"] is True
    assert (out / "report.html").exists()
    return [Outcome(None, results), Outcome(None, report.output)]


@scenario("elapsed time after a resume")
def _elapsed_after_resume(env: Env):
    out = _copy(env)
    lines = _journal(out)
    audit = json.loads(lines[0])["audit"]
    earlier = {"kind": "time", "audit": audit, "segment": 0, "elapsed": 1000.0}
    # An earlier segment that worked 1000 s and was stopped before its batch was kept.
    (out / "records.jsonl").write_text(rechain([lines[0], json.dumps(earlier) + "\n"]))
    (out / "results.json").unlink()
    _ok(_run(env.data, "--resume"))
    results = (out / "results.json").read_text()
    assert 1000.0 < json.loads(results)["elapsed_seconds"] < 1100.0
    journal = "".join(_journal(out))
    assert sum(json.loads(x)["kind"] == "time" for x in _journal(out)) == 2
    return [Outcome(None, results), Outcome(None, journal)]


@scenario("a model that edits its inputs in place")
def _model_edits_inputs(env: Env):
    # The library runs the same engine as `run`, without rendering a report.
    (env.tmp / "x").mkdir()
    (env.tmp / "x" / "kspace_net.py").write_text(MUTATING)
    frames = [
        mri_audit.audit(
            "x/kspace_net.py:Net", model_args={"mutate": mutate}, data=env.data, **LIBRARY_SMALL
        ).records
        for mutate in (True, False)
    ]
    cols = ["ip", "r", "r0", "e", "loss", "clean_ssim", "hit"]
    assert frames[0]["kind"].tolist() == ["fnaf"]
    pd.testing.assert_frame_equal(frames[0][cols], frames[1][cols])
    return [Outcome(None, "")]


@pytest.mark.parametrize("case", cases(__name__))
def test_documented(case, tmp_path, monkeypatch, caplog, base, singlecoil_dir):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("mri_audit.audit.identity.code_digest", _pinned_digest)
    env = Env(tmp_path, base, singlecoil_dir, monkeypatch, caplog)
    check_row(case, SCENARIOS[case](env))
