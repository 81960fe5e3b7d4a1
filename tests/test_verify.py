"""``mri-audit verify``: the chained journal, the head and manifest, the recomputed results, the
re-rendered report, replay through the model, and signatures (issue 26)."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from mri_audit.cli import cli
from tests.journal_util import line_hash, rechain

EX = Path(__file__).resolve().parent.parent / "examples"
UNET = ["--model", f"{EX}/unet.py:UNet", "--weights", f"{EX}/weights/unet_4x.pt"]
VARNET = ["--compare", f"{EX}/varnet.py:VarNet={EX}/weights/varnet_4x.pt"]
SMALL = ["--max-volumes", "2", "--max-slices", "2", "--candidates", "5", "--no-progress"]
ZERO = ["--model", f"{EX}/zero_filled.py:ZeroFilled"]


def _invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _run(out: Path, *extra: str, models=(*UNET, *VARNET)):
    result = _invoke("run", *models, *SMALL, "--attacks", "fnaf-rs", "--out", out, *extra)
    assert result.exit_code == 0, result.output
    return result


def _verify(folder: Path, *extra: str, code: int = 0):
    result = _invoke("verify", folder, *extra)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result.output


@pytest.fixture(scope="module")
def audit_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("verify") / "audit"
    _run(out)
    return out


def _copy(audit_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "audit"
    shutil.copytree(audit_dir, out)
    return out


def _lines(folder: Path) -> list[str]:
    return (folder / "records.jsonl").read_text().splitlines(keepends=True)


def test_an_untouched_audit_verifies(audit_dir):
    out = _verify(audit_dir)
    lines = out.strip().splitlines()
    assert lines[-1] == "VERIFIED"
    names = [ln.split()[1] for ln in lines[:-1]]
    assert names == ["journal", "files", "coverage", "records", "results", "report"]
    assert all(ln.startswith("ok") for ln in lines[:-1])
    results = json.loads((audit_dir / "results.json").read_text())
    assert results["chain"]["lines"] == len(_lines(audit_dir))
    assert set(results["manifest"]) == {"records.csv", "audit_images.npz", "report.html"}
    # The report shows the head, and how to verify it.
    html = (audit_dir / "report.html").read_text()
    assert results["chain"]["head"] in html and "mri-audit verify" in html


def test_every_journal_line_is_linked(audit_dir):
    import hashlib

    lines = [ln.rstrip("\n").encode() for ln in _lines(audit_dir)]
    objs = [json.loads(x) for x in lines]
    assert [o["seq"] for o in objs] == list(range(1, len(objs) + 1))
    assert objs[0]["prev"] == "0" * 64
    for before, o in zip(lines, objs[1:], strict=False):
        assert o["prev"] == hashlib.sha256(before).hexdigest()
    head = json.loads((audit_dir / "results.json").read_text())["chain"]["head"]
    assert head == hashlib.sha256(lines[-1]).hexdigest()


def _edit_number(lines: list[str], rng: random.Random) -> tuple[list[str], int]:
    """One record line with its ``e`` changed, the link fields kept (a hand edit)."""
    rows = [i for i, ln in enumerate(lines) if json.loads(ln).get("kind") == "fnaf"]
    i = rng.choice(rows)
    obj = json.loads(lines[i])
    obj["e"] = 0.01
    lines = list(lines)
    lines[i] = json.dumps(obj, sort_keys=True) + "\n"
    return lines, i + 1


def _doctor(lines: list[str], op: str, rng: random.Random) -> list[str]:
    lines = list(lines)
    i = rng.randrange(1, len(lines))
    if op == "edit":
        return _edit_number(lines, rng)[0]
    if op == "drop":
        del lines[i]
    elif op == "duplicate":
        lines.insert(rng.randrange(1, len(lines) + 1), lines[i])
    else:  # swap
        j = rng.choice([k for k in range(1, len(lines)) if k != i])
        lines[i], lines[j] = lines[j], lines[i]
    return lines


@pytest.mark.parametrize("op", ["edit", "drop", "duplicate", "swap"])
def test_a_doctored_journal_fails_verify_and_report_refuses_it(audit_dir, tmp_path, op):
    out = _copy(audit_dir, tmp_path)
    (out / "records.jsonl").write_text("".join(_doctor(_lines(out), op, random.Random(3))))
    text = _verify(out, code=4)
    assert re.search(r"FAIL\s+journal\s+records.jsonl (line \d+|has|line)", text), text
    assert text.strip().splitlines()[-1].startswith("NOT VERIFIED: journal")
    reread = _invoke("report", out, "--margin", "0.2")
    assert reread.exit_code == 4 and "records.jsonl" in reread.output, reread.output
    assert len(reread.output.strip().splitlines()) == 1


def test_random_damage_is_always_caught(audit_dir, tmp_path):
    """Property (seeded): any edit, drop, duplicate or swap of journal lines fails verify
    naming the journal, and the re-read refuses it."""
    rng = random.Random(26)
    pristine = _lines(audit_dir)
    for trial in range(12):
        op = rng.choice(["edit", "drop", "duplicate", "swap"])
        doctored = _doctor(pristine, op, rng)
        if doctored == pristine:
            continue
        out = tmp_path / f"t{trial}"
        shutil.copytree(audit_dir, out)
        (out / "records.jsonl").write_text("".join(doctored))
        text = _verify(out, code=4)
        assert "FAIL  journal" in text, (op, text)
        assert _invoke("report", out, "--margin", "0.2").exit_code == 4, op


def test_an_edited_number_is_named_by_its_line_and_resume_refuses_it(audit_dir, tmp_path):
    out = _copy(audit_dir, tmp_path)
    lines = _lines(out)
    rows = [i for i, ln in enumerate(lines) if json.loads(ln).get("kind") == "fnaf"]
    obj = json.loads(lines[rows[0]])
    obj["e"] = 0.01
    lines[rows[0]] = json.dumps(obj, sort_keys=True) + "\n"
    (out / "records.jsonl").write_text("".join(lines))
    (out / "results.json").unlink()  # the scenario: results.json deleted too
    result = _invoke(
        "run", *UNET, *VARNET, *SMALL, "--attacks", "fnaf-rs", "--out", out, "--resume"
    )
    assert result.exit_code == 4, result.output
    n = rows[0] + 1
    assert (
        f"records.jsonl line {n + 1}: does not link to the line before it: line {n} was edited"
        in (result.output)
    )


def _edit_json(path: Path, change) -> None:
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj, indent=2))


def test_an_edited_attack_rate_is_a_mismatch(audit_dir, tmp_path):
    out = _copy(audit_dir, tmp_path)
    model = next(iter(json.loads((out / "results.json").read_text())["attacks"]))

    def lower(r):
        r["attacks"][model]["fnaf-rs"]["attack_rate"]["value"] = 0.0

    _edit_json(out / "results.json", lower)
    text = _verify(out, code=8)
    assert f"FAIL  results    results.json differs from its records at attacks.{model}" in text
    assert "NOT VERIFIED: results" in text


@pytest.mark.parametrize("name", ["records.csv", "report.html", "audit_images.npz"])
def test_an_edited_file_fails_the_manifest(audit_dir, tmp_path, name):
    out = _copy(audit_dir, tmp_path)
    data = (out / name).read_bytes()
    (out / name).write_bytes(
        data.replace(b"0.", b"0.9", 1) if name != "audit_images.npz" else data + b"\0"
    )
    text = _verify(out, code=4)
    assert f"FAIL  files      {name} does not match the manifest" in text


def test_a_consistently_edited_report_is_caught_by_rendering(audit_dir, tmp_path):
    """Whoever also updates the manifest meets the re-render: the report is not what the
    results render to."""
    from mri_audit.hashing import sha256_file

    out = _copy(audit_dir, tmp_path)
    html = (out / "report.html").read_text().replace("100.0%", "0.0%")
    (out / "report.html").write_text(html)
    _edit_json(
        out / "results.json",
        lambda r: r["manifest"].update({"report.html": sha256_file(out / "report.html")}),
    )
    text = _verify(out, code=8)
    assert "FAIL  report     report.html is not what results.json renders to" in text


def test_records_csv_must_hold_the_journals_records(audit_dir, tmp_path):
    from mri_audit.hashing import sha256_file

    out = _copy(audit_dir, tmp_path)
    rows = (out / "records.csv").read_text().splitlines(keepends=True)
    (out / "records.csv").write_text("".join(rows[:-1]))
    _edit_json(
        out / "results.json",
        lambda r: r["manifest"].update({"records.csv": sha256_file(out / "records.csv")}),
    )
    text = _verify(out, code=4)
    assert "FAIL  records    records.csv does not hold exactly the journal's records" in text


def test_a_resumed_audit_verifies(tmp_path):
    out = tmp_path / "audit"
    _run(out, models=ZERO)
    lines = _lines(out)
    (out / "records.jsonl").write_text("".join(lines[: len(lines) // 2]))
    (out / "results.json").unlink()
    result = _invoke("run", *ZERO, *SMALL, "--attacks", "fnaf-rs", "--out", out, "--resume")
    assert result.exit_code == 0, result.output
    assert "VERIFIED" in _verify(out)


def test_a_map_verifies_and_its_edited_table_fails(tmp_path):
    out = tmp_path / "map"
    args = ["--max-volumes", "1", "--max-slices", "1", "--shapes", "disk", "--sizes", "disk=2"]
    args += ["--contrasts", "0.5", "--draws", "1", "--no-progress"]
    result = _invoke("map", *ZERO, *args, "--out", out)
    assert result.exit_code == 0, result.output
    text = _verify(out)
    assert "a map keeps no journal" in text and text.strip().endswith("VERIFIED")
    (out / "map.csv").write_text((out / "map.csv").read_text() + "x\r\n")
    assert "FAIL  files      map.csv does not match the manifest" in _verify(out, code=4)


def test_replay_passes_an_honest_audit(audit_dir):
    text = _verify(audit_dir, "--replay", "5", "--nonce", "reviewer-1")
    assert "ok    replay     replayed 5/5 within tolerance" in text
    assert text.strip().endswith("VERIFIED")


def test_the_replayed_records_depend_on_the_nonce(audit_dir):
    from mri_audit.audit.reread import read_journal
    from mri_audit.evidence.replay import pick_records

    results = json.loads((audit_dir / "results.json").read_text())
    records = read_journal(audit_dir / "results.json", results)
    head = results["chain"]["head"]
    a = pick_records(records, head, "one", 3)
    assert a == pick_records(records, head, "one", 3)
    picks = {
        tuple((r["model"], r["volume"], r["slice"]) for r in pick_records(records, head, n, 3))
        for n in "abcdefgh"
    }
    assert len(picks) > 1


def _lower_erasure(line: str) -> str:
    obj = json.loads(line)
    if obj.get("kind") != "fnaf" or not obj.get("found"):
        return line
    obj.update(e=0.0, score=0.0, hit=False)
    er = obj["criteria"]["erasure"]
    er.update(e=0.0, score=0.0)
    return json.dumps(obj, sort_keys=True) + "\n"


def test_a_consistently_rewritten_audit_is_caught_by_replay_not_the_chain(audit_dir, tmp_path):
    """Every e lowered, the chain recomputed, every file rebuilt by mri-audit itself (resume
    from the journal): the files verify, the replay does not."""
    out = _copy(audit_dir, tmp_path)
    forged = [_lower_erasure(ln) for ln in _lines(out)]
    (out / "records.jsonl").write_text(rechain(forged))
    for name in ("results.json", "records.csv", "report.html", "audit_images.npz"):
        (out / name).unlink()
    result = _invoke(
        "run", *UNET, *VARNET, *SMALL, "--attacks", "fnaf-rs", "--out", out, "--resume"
    )
    assert result.exit_code == 0, result.output
    assert "  0.0% [" in result.output  # the forged table: no hit
    assert _verify(out).strip().endswith("VERIFIED")  # the chain cannot tell
    text = _verify(out, "--replay", "5", "--nonce", "reviewer-2", code=8)
    assert re.search(r"FAIL  replay     \d of 5 records differ beyond tolerance", text), text
    assert "e recorded 0, replayed" in text


def test_replay_refuses_other_weights(audit_dir, tmp_path):
    text = _verify(
        audit_dir,
        "--replay",
        "1",
        "--nonce",
        "x",
        "--weights",
        f"{EX}/weights/unet_8x.pt",
        code=2,
    )
    assert "weights differ from the audit's" in text


def test_options_of_replay_need_replay(audit_dir):
    result = _invoke("verify", audit_dir, "--nonce", "x")
    assert result.exit_code == 2 and "--nonce" in result.output and "--replay" in result.output


def test_signed_audits_verify_with_their_key_only(tmp_path):
    pytest.importorskip("cryptography")
    key, other = tmp_path / "k.pem", tmp_path / "o.pem"
    assert _invoke("keygen", key).exit_code == 0 and _invoke("keygen", other).exit_code == 0
    out = tmp_path / "audit"
    result = _run(out, "--sign", str(key), models=ZERO)
    assert "signature.json" in result.output
    text = _verify(out, "--key", f"{key}.pub")
    assert re.search(r"ok    signature  signed by key [0-9a-f]{16}: \d+ files unchanged", text)
    text = _verify(out, "--key", f"{other}.pub", code=8)
    assert "FAIL  signature  the signature does not verify with key" in text
    # Unsigned checks still pass without the key; the signature is reported, not checked.
    assert "signature.json present, not checked" in _verify(out)
    # A file changed after signing fails the signature (results.json is signed as a whole).
    _edit_json(out / "results.json", lambda r: r.update(created="2000-01-01T00:00:00+00:00"))
    text = _verify(out, "--key", f"{key}.pub", code=4)
    assert "results.json changed after it was signed" in text


def test_sign_without_the_extra_is_one_line(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cryptography", None)
    key = tmp_path / "k.pem"
    key.write_text("x")
    result = _invoke(
        "run", *ZERO, *SMALL, "--attacks", "fnaf-rs", "--out", tmp_path / "a", "--sign", key
    )
    assert result.exit_code == 2
    assert result.output.strip() == (
        "Error: --sign needs the optional 'cryptography' package: pip install 'mri-audit[sign]'"
    )
    assert not (tmp_path / "a").exists()


def test_replay_checks_the_selection_the_aggregates_count(tmp_path):
    """Only the criterion's sub-record edited (what the attack table counts), the chain
    recomputed and the files rebuilt: zero-filling would read 100% hit; the replay refuses."""
    out = tmp_path / "audit"
    _run(out, models=ZERO)

    def inflate(line: str) -> str:
        obj = json.loads(line)
        if obj.get("kind") == "fnaf" and obj.get("found"):
            obj["criteria"]["erasure"].update(e=0.5, r=0.0, score=0.5)
            obj["hit"] = True
        return json.dumps(obj, sort_keys=True) + "\n"

    (out / "records.jsonl").write_text(rechain([inflate(ln) for ln in _lines(out)]))
    for name in ("results.json", "records.csv", "report.html", "audit_images.npz"):
        (out / name).unlink()
    result = _invoke("run", *ZERO, *SMALL, "--attacks", "fnaf-rs", "--out", out, "--resume")
    assert result.exit_code == 0 and "100.0% [" in result.output, result.output
    assert _verify(out).strip().endswith("VERIFIED")
    text = _verify(out, "--replay", "2", "--nonce", "n", code=8)
    assert "criteria.erasure.e is 0.5, the record's e" in text


def test_another_mri_audit_does_not_compare_the_report_byte_for_byte(audit_dir, monkeypatch):
    import mri_audit.audit.identity as identity

    monkeypatch.setattr(identity, "code_digest", lambda attacks=(): "f" * 64)
    text = _verify(audit_dir)
    assert "--    report     not compared: the audit was written by mri-audit" in text
    assert text.strip().endswith("VERIFIED")


def test_the_header_must_hash_to_its_fingerprint(audit_dir, tmp_path):
    out = _copy(audit_dir, tmp_path)
    lines = _lines(out)
    header = json.loads(lines[0])
    header["config"]["margin"] = 0.5  # a stricter-looking audit, chain re-linked
    forged = rechain([json.dumps(header) + "\n", *lines[1:]])
    (out / "records.jsonl").write_text(forged)
    head = line_hash(forged.splitlines()[-1].encode())
    _edit_json(out / "results.json", lambda r: r["chain"].update(head=head))
    text = _verify(out, code=4)
    assert "records.jsonl's header does not hash to its fingerprint" in text
