"""docs/errors.md, section "Keys and signatures": ``mri-audit keygen`` through the CLI, and the key
files ``--sign`` and ``--key`` read through :mod:`mri_audit.evidence.signing` (their messages are
the commands' own: the same functions raise them, naming the option).

Each scenario runs inside its own folder with relative paths, so the output is exactly what the
document shows (see :mod:`tests.errors_doc`).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from mri_audit.cli import cli
from mri_audit.errors import MriAuditError
from tests.errors_doc import SCENARIOS, Outcome, cases, check_row, scenario


def _keygen(folder: Path, *args: str) -> Outcome:
    """``mri-audit keygen ARGS`` with ``folder`` as the working directory."""
    with contextlib.chdir(folder):
        result = CliRunner().invoke(cli, ["keygen", *args], prog_name="mri-audit")
    assert "Traceback" not in result.output, result.output
    return Outcome(result.exit_code, result.output)


def _load(folder: Path, load: Callable[[Path], object], name: str) -> Outcome:
    """What a command prints when ``load`` refuses the key file ``name`` (relative to
    ``folder``): ``Error: <message>`` and the error's exit status."""
    with contextlib.chdir(folder):
        try:
            load(Path(name))
        except MriAuditError as err:
            return Outcome(err.exit_code, f"Error: {err}")
    raise AssertionError(f"{name} was accepted")


def _pair(folder: Path) -> None:
    """``k.pem`` and ``k.pem.pub`` in ``folder``."""
    assert _keygen(folder, "k.pem").status == 0


@scenario("keygen target exists")
def _exists(tmp_path: Path) -> list[Outcome]:
    pytest.importorskip("cryptography")
    _pair(tmp_path)
    before = (tmp_path / "k.pem").read_bytes()
    outcomes = [_keygen(tmp_path, "k.pem")]
    assert (tmp_path / "k.pem").read_bytes() == before  # nothing was overwritten
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "k.pem.pub").write_text("a reviewer's copy")
    outcomes.append(_keygen(tmp_path / "only", "k.pem"))
    assert "k.pem.pub already exists" in outcomes[-1].output
    assert not (tmp_path / "only" / "k.pem").exists()
    assert _keygen(tmp_path, "k.pem", "--force").status == 0
    assert (tmp_path / "k.pem").read_bytes() != before
    return outcomes


@scenario("private key missing")
def _missing(tmp_path: Path) -> list[Outcome]:
    pytest.importorskip("cryptography")
    from mri_audit.evidence.signing import load_private_key, load_public_key

    return [
        _load(tmp_path, load_private_key, "k.pem"),
        _load(tmp_path, load_public_key, "k.pem.pub"),
    ]


@scenario("not a PEM key")
def _not_pem(tmp_path: Path) -> list[Outcome]:
    pytest.importorskip("cryptography")
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from mri_audit.evidence.signing import load_private_key, load_public_key

    (tmp_path / "notes.txt").write_text("not a key\n")
    pkcs8, password = ser.PrivateFormat.PKCS8, ser.BestAvailableEncryption(b"secret")
    encrypted = Ed25519PrivateKey.generate().private_bytes(ser.Encoding.PEM, pkcs8, password)
    (tmp_path / "enc.pem").write_bytes(encrypted)
    return [
        _load(tmp_path, load_private_key, "notes.txt"),
        _load(tmp_path, load_public_key, "notes.txt"),
        _load(tmp_path, load_private_key, "enc.pem"),
    ]


@scenario("wrong key type")
def _wrong_type(tmp_path: Path) -> list[Outcome]:
    pytest.importorskip("cryptography")
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import rsa

    from mri_audit.evidence.signing import load_private_key, load_public_key

    _pair(tmp_path)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pkcs8 = ser.PrivateFormat.PKCS8
    (tmp_path / "rsa.pem").write_bytes(
        key.private_bytes(ser.Encoding.PEM, pkcs8, ser.NoEncryption())
    )
    return [
        _load(tmp_path, load_private_key, "rsa.pem"),
        _load(tmp_path, load_private_key, "k.pem.pub"),
        _load(tmp_path, load_public_key, "k.pem"),
    ]


@scenario("cryptography missing")
def _no_cryptography(tmp_path: Path) -> list[Outcome]:
    from mri_audit.evidence.signing import load_private_key, load_public_key

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "cryptography", None)  # `import cryptography` fails
        outcomes = [
            _keygen(tmp_path, "k.pem"),
            _load(tmp_path, load_private_key, "k.pem"),
            _load(tmp_path, load_public_key, "k.pem.pub"),
        ]
    assert not (tmp_path / "k.pem").exists()
    for outcome in outcomes:
        assert len(outcome.output.strip().splitlines()) == 1
    return outcomes


@pytest.mark.parametrize("case", cases(__name__))
def test_documented(case: str, tmp_path: Path) -> None:
    check_row(case, SCENARIOS[case](tmp_path))
