"""Optional Ed25519 signatures (:mod:`mri_audit.evidence.signing`, ``mri-audit keygen``).

The tests that need ``cryptography`` (the ``sign`` extra) are skipped without it; the rest show
what a user without the extra gets: one line saying how to install it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import stat
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mri_audit.cli import cli
from mri_audit.errors import DataError, MriAuditError, UsageError
from mri_audit.evidence import signing
from mri_audit.evidence.signing import SignatureError

INSTALL = "needs the optional 'cryptography' package: pip install 'mri-audit[sign]'"


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """A fresh key pair ``k.pem``, ``k.pem.pub``."""
    pytest.importorskip("cryptography")
    return signing.keygen(tmp_path / "k.pem")


def _statement() -> dict:
    subjects = {"results.json": "ab" * 32, "records.jsonl": "cd" * 32}
    return signing.statement(subjects, {"chain": {"lines": 4, "head": "ef" * 32}})


def test_pae_is_dsse_pre_authentication_encoding():
    # The example of the DSSE protocol document.
    got = signing.pae("http://example.com/HelloWorld", b"hello world")
    assert got == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    assert signing.pae("t", b"") == b"DSSEv1 1 t 0 "
    assert signing.pae("\u00e9", b"x y") == b"DSSEv1 2 \xc3\xa9 3 x y"  # lengths in bytes


def test_statement_lists_subjects_sorted_by_name():
    stmt = signing.statement({"b.csv": "22", "a.json": "11", "c.html": "33"}, {"k": 1})
    assert stmt["_type"] == "https://in-toto.io/Statement/v1"
    assert [s["name"] for s in stmt["subject"]] == ["a.json", "b.csv", "c.html"]
    assert stmt["subject"][0] == {"name": "a.json", "digest": {"sha256": "11"}}
    assert stmt["predicateType"] == signing.PREDICATE_TYPE
    assert stmt["predicate"] == {"k": 1}


def test_keygen_writes_a_private_key_only_its_owner_reads(pair):
    private, public = pair
    assert public == private.with_name("k.pem.pub")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert not [p.name for p in private.parent.iterdir() if p.name.startswith(".")]  # no temp
    with pytest.raises(UsageError, match="k.pem already exists"):
        signing.keygen(private)
    old = private.read_bytes()
    signing.keygen(private, force=True)
    assert private.read_bytes() != old
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_key_id_is_the_sha256_of_the_raw_public_key(pair):
    from cryptography.hazmat.primitives import serialization as ser

    key = signing.load_public_key(pair[1])
    raw = key.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    assert len(raw) == 32
    assert signing.key_id(key) == hashlib.sha256(raw).hexdigest()


def test_sign_and_open_round_trip(pair):
    private, public = pair
    stmt = _statement()
    envelope = signing.sign_statement(stmt, private)
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    payload = base64.b64decode(envelope["payload"])
    assert payload == json.dumps(stmt, sort_keys=True, separators=(",", ":")).encode()
    [sig] = envelope["signatures"]
    assert sig["keyid"] == signing.key_id(signing.load_public_key(public))
    assert len(base64.b64decode(sig["sig"])) == 64  # an Ed25519 signature
    # The envelope survives JSON (as signature.json holds it).
    assert signing.open_envelope(json.loads(json.dumps(envelope)), public) == stmt


def test_a_changed_payload_byte_fails(pair):
    private, public = pair
    envelope = signing.sign_statement(_statement(), private)
    payload = bytearray(base64.b64decode(envelope["payload"]))
    at = payload.index(b'"lines":4') + len(b'"lines":')
    payload[at] = ord("5")  # still valid JSON: only the signature can tell
    forged = {**envelope, "payload": base64.b64encode(bytes(payload)).decode()}
    with pytest.raises(SignatureError) as info:
        signing.open_envelope(forged, public)
    assert info.value.exit_code == 8
    kid = signing.key_id(signing.load_public_key(public))
    assert str(info.value) == (
        f"the signature does not verify with key {kid[:16]}: it was made with another key, or "
        "the signed statement changed after signing"
    )


def test_another_key_fails(pair, tmp_path):
    private, _ = pair
    _, other = signing.keygen(tmp_path / "other.pem")
    envelope = signing.sign_statement(_statement(), private)
    with pytest.raises(SignatureError):
        signing.open_envelope(envelope, other)
    # Naming no key id does not help: the other key is tried and fails.
    anonymous = {**envelope, "signatures": [{"sig": envelope["signatures"][0]["sig"]}]}
    with pytest.raises(SignatureError):
        signing.open_envelope(anonymous, other)
    assert signing.open_envelope(anonymous, pair[1]) == _statement()


@pytest.mark.parametrize(
    "envelope",
    [[], {}, {"signatures": "x"}, {"signatures": [{}]}, {"signatures": [], "payloadType": "x"}],
)
def test_a_malformed_envelope_is_a_data_error(pair, envelope):
    with pytest.raises(DataError):
        signing.open_envelope(envelope, pair[1])


def test_a_payload_that_is_not_base64_or_an_object_is_a_data_error(pair):
    envelope = signing.sign_statement(_statement(), pair[0])
    with pytest.raises(DataError, match="payload is not base64"):
        signing.open_envelope({**envelope, "payload": "***"}, pair[1])
    with pytest.raises(DataError, match="signature is not base64"):
        signing.open_envelope({**envelope, "signatures": [{"sig": "***"}]}, pair[1])


def test_keygen_command(tmp_path):
    pytest.importorskip("cryptography")
    path = tmp_path / "keys" / "vendor.pem"
    result = CliRunner().invoke(cli, ["keygen", str(path)])
    assert result.exit_code == 0, result.output
    assert f"keep {path} secret; give {path}.pub to reviewers " in result.output
    assert f"(mri-audit verify AUDIT --key {path}.pub)" in result.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = CliRunner().invoke(cli, ["keygen", str(path)])
    assert again.exit_code == 2
    assert again.output.count("\n") == 1 and "already exists" in again.output
    assert CliRunner().invoke(cli, ["keygen", str(path), "--force"]).exit_code == 0


def test_keygen_help_says_what_a_signature_proves():
    text = " ".join(CliRunner().invoke(cli, ["keygen", "--help"]).output.split())
    assert "did not change after signing" in text
    assert "does not prove that the audit was honest" in text
    assert "--replay" in text


def test_without_the_extra_one_line_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "cryptography", None)
    for option in ("--sign", "mri-audit keygen"):
        with pytest.raises(UsageError) as info:
            signing.require_cryptography(option)
        assert str(info.value) == f"{option} {INSTALL}"
        assert info.value.exit_code == 2
    with pytest.raises(MriAuditError, match="^" + re.escape(f"--sign {INSTALL}")):
        signing.sign_statement(_statement(), tmp_path / "k.pem")
    with pytest.raises(MriAuditError, match="^" + re.escape(f"--key {INSTALL}")):
        signing.open_envelope({}, tmp_path / "k.pem.pub")
    result = CliRunner().invoke(cli, ["keygen", str(tmp_path / "k.pem")])
    assert result.exit_code == 2
    assert result.output == f"Error: mri-audit keygen {INSTALL}\n"
    assert not list(tmp_path.iterdir())
