"""docs/errors.md, section "Verify": every row reproduced through ``mri-audit verify``.

One tiny finished audit (``net.py:Net`` with weights ``w.pt``, one volume of the session's
single-coil data copied to ``data``, two slices, ``fnaf-rs`` with 3 candidates) is made once; each
scenario copies it into its own folder (the test's working directory, so the documented names
``out``, ``data``, ``w.pt`` are the real ones) and breaks what its row describes.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mri_audit.cli import cli
from tests.errors_doc import SCENARIOS, Outcome, cases, check_row, scenario
from tests.journal_util import rechain

NET = """
import torch
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c = torch.nn.Conv2d(1, 1, 3, padding=1)
    def forward(self, x):
        return x + self.c(x)
"""

RUN = ["run", "--model", "net.py:Net", "--weights", "w.pt", "--data", "data", "--out", "out"]
RUN += ["--max-volumes", "1", "--max-slices", "2", "--attacks", "fnaf-rs", "--candidates", "3"]
RUN += ["--no-progress"]

# mri-audit's code digest, pinned: the scenario that resumes the audit changes what it means to
# change, nothing else (an edit of mri-audit's own files between the fixture and it would).
CODE_DIGEST = "c0de" * 16


def _pinned_digest(attack_classes=()) -> str:
    return CODE_DIGEST


def _cli(*args: str) -> Outcome:
    result = CliRunner().invoke(cli, [str(a) for a in args], prog_name="mri-audit")
    assert "Traceback" not in result.output, result.output
    return Outcome(result.exit_code, result.output)


def _verify(*extra: str) -> Outcome:
    return _cli("verify", "out", *extra)


@pytest.fixture(scope="module")
def base(tmp_path_factory, singlecoil_dir) -> Path:
    """``net.py``, weights ``w.pt`` (the identity) and ``w2.pt`` (another bias), ``data`` and
    the finished audit ``out``."""
    root = tmp_path_factory.mktemp("errors_doc_verify")
    (root / "net.py").write_text(NET)
    state = {"c.weight": torch.zeros(1, 1, 3, 3), "c.bias": torch.zeros(1)}
    torch.save(state, root / "w.pt")
    torch.save({**state, "c.bias": torch.full((1,), 1e-3)}, root / "w2.pt")
    shutil.copytree(singlecoil_dir, root / "data")
    with contextlib.chdir(root), pytest.MonkeyPatch.context() as mp:
        mp.setattr("mri_audit.audit.identity.code_digest", _pinned_digest)
        done = _cli(*RUN)
    assert done.status == 0, done.output
    return root


def _copy(base: Path) -> Path:
    """The model, weights, data and audit in the working directory; returns ``out``."""
    for name in ("net.py", "w.pt", "w2.pt"):
        shutil.copy(base / name, name)
    for name in ("data", "out"):
        shutil.copytree(base / name, name)
    return Path("out")


def _journal(out: Path) -> list[str]:
    return (out / "records.jsonl").read_text().splitlines(keepends=True)


def _edit_results(out: Path, edit) -> None:
    results = json.loads((out / "results.json").read_text())
    edit(results)
    (out / "results.json").write_text(json.dumps(results, indent=2))


def _rehash(out: Path, name: str) -> None:
    """Record ``name``'s new SHA-256 in results.json's manifest, as a forger would."""
    from mri_audit.evidence.manifest import file_digests

    _edit_results(out, lambda r: r["manifest"].update(file_digests(out, [name])))


@scenario("an untouched audit")
def _untouched(base: Path):
    _copy(base)
    plain, replayed = _verify(), _verify("--replay", "2", "--nonce", "x")
    assert plain.status == 0 and replayed.status == 0, plain.output + replayed.output
    assert plain.output.strip().splitlines()[-1] == "VERIFIED"
    return [plain, replayed]


@scenario(
    "a broken journal (a line edited, dropped, duplicated or reordered, or added after the head)"  # noqa: E501
)
def _broken_journal(base: Path):
    out = _copy(base)
    lines = _journal(out)
    record = json.loads(lines[1])
    assert record["kind"] == "fnaf"
    record["r"] = 0.01  # one number of a record, its link fields kept (a hand edit)
    (out / "records.jsonl").write_text("".join([lines[0], json.dumps(record) + "\n", *lines[2:]]))
    edited = _verify()
    (out / "records.jsonl").write_text("".join([*lines, lines[1]]))
    duplicated = _verify()
    assert "has sequence number 2, expected" in duplicated.output
    later = {"kind": "time", "audit": record["audit"], "segment": 9, "elapsed": 1.0}
    (out / "records.jsonl").write_text(rechain([*lines, json.dumps(later) + "\n"]))  # linked
    appended = _verify()
    return [edited, duplicated, appended]


@scenario("a file that does not match the manifest (edited or missing)")
def _file_not_in_manifest(base: Path):
    out = _copy(base)
    report = out / "report.html"
    report.write_text(report.read_text().replace("</h1>", " (reviewed)</h1>", 1))
    edited = _verify()
    (out / "audit_images.npz").unlink()
    missing = _verify()
    return [edited, missing]


@scenario("records.csv that does not hold the journal's records (its manifest entry updated)")
def _records_csv_edited(base: Path):
    out = _copy(base)
    csv = out / "records.csv"
    rows = csv.read_text().splitlines(keepends=True)
    csv.write_text("".join([rows[0], rows[1].replace(",False,", ",True,", 1), *rows[2:]]))
    _rehash(out, "records.csv")
    return [_verify()]


@scenario("results.json that its records do not give (an attack rate edited)")
def _results_edited(base: Path):
    out = _copy(base)

    def raise_rate(results: dict) -> None:
        rate = results["attacks"]["net.py:Net"]["fnaf-rs"]["attack_rate"]
        assert rate["value"] == 0.0
        rate["value"] = 0.5

    _edit_results(out, raise_rate)
    return [_verify()]


@scenario("report.html that results.json does not render to (its manifest entry updated)")
def _report_edited(base: Path):
    out = _copy(base)
    report = out / "report.html"
    report.write_text(report.read_text().replace("</h1>", " (reviewed)</h1>", 1))
    _rehash(out, "report.html")
    return [_verify()]


@scenario(
    "a replay beyond the tolerance (the journal re-written consistently: its chain recomputed, the final files written again)"  # noqa: E501
)
def _replay_forged(base: Path):
    out = _copy(base)
    forged = []
    for line in _journal(out):
        rec = json.loads(line)
        if rec["kind"] == "fnaf":  # r halved, e raised to match, for the criterion too
            for where in (rec, rec["criteria"][rec["criterion"]]):
                where["r"] = where["r0"] / 2
                where["e"] = where["r0"] - where["r"]
        forged.append(json.dumps(rec) + "\n")
    (out / "records.jsonl").write_text(rechain(forged))
    (out / "results.json").unlink()  # --resume writes every final file again from the journal
    resumed = _cli(*RUN, "--resume")
    assert resumed.status == 0, resumed.output
    plain = _verify()
    assert plain.status == 0, plain.output  # only the model can tell
    return [_verify("--replay", "2", "--nonce", "x")]


@scenario("a replay with other weights or data than the audit's")
def _replay_other_inputs(base: Path):
    import h5py

    _copy(base)
    shutil.copytree("data", "data2")
    with h5py.File("data2/file_sc_0000.h5", "r+") as f:
        f["kspace"][0, 0, 0] = f["kspace"][0, 0, 0] * 2
    replay = ("--replay", "1", "--nonce", "x")
    return [_verify(*replay, "--weights", "w2.pt"), _verify(*replay, "--data", "data2")]


@scenario("a signature made with another key")
def _signature_other_key(base: Path):
    pytest.importorskip("cryptography")
    from mri_audit.evidence.attest import sign_folder

    out = _copy(base)
    for key in ("k.pem", "other.pem"):
        assert _cli("keygen", key).status == 0
    sign_folder(out, "k.pem")
    assert _verify("--key", "k.pem.pub").status == 0
    return [_verify("--key", "other.pem.pub")]


@scenario("`--key` for an audit that was not signed")
def _key_without_signature(base: Path):
    pytest.importorskip("cryptography")
    _copy(base)
    assert _cli("keygen", "k.pem").status == 0
    return [_verify("--key", "k.pem.pub")]


@scenario("`--nonce` without `--replay`")
def _nonce_without_replay(base: Path):
    _copy(base)
    return [_verify("--nonce", "x")]


@pytest.mark.parametrize("case", cases(__name__))
def test_documented(case, tmp_path, monkeypatch, base):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("mri_audit.audit.identity.code_digest", _pinned_digest)
    check_row(case, SCENARIOS[case](base))
