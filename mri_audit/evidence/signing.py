"""Optional Ed25519 signatures of an audit's in-toto statement, in a DSSE envelope.

The ``cryptography`` package (``pip install 'mri-audit[sign]'``) is imported only when needed.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from mri_audit.errors import DataError, MriAuditError, UsageError
from mri_audit.files import atomic_write

logger = logging.getLogger(__name__)

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://mri-audit.dev/audit/v1"  # an audit's chain head and manifest


class SignatureError(MriAuditError):
    """A signature that does not verify with the given public key (exit 8)."""

    exit_code = 8


def require_cryptography(option: str) -> None:
    """Raise a one-line UsageError naming ``option`` (``--sign``, ``mri-audit keygen``, ...)
    when the optional ``cryptography`` package is missing."""
    try:
        import cryptography  # noqa: F401
    except ImportError:
        msg = f"{option} needs the optional 'cryptography' package: pip install 'mri-audit[sign]'"
        raise UsageError(msg) from None


def keygen(path: Path, *, force: bool = False) -> tuple[Path, Path]:
    """Write a new Ed25519 private key to ``path`` (PKCS8 PEM, unencrypted, mode 0600) and its
    public key to ``path`` + ``.pub`` (SubjectPublicKeyInfo PEM); return both paths.

    Raises:
        UsageError: ``cryptography`` is missing, or a key file exists and ``force`` is false.
        OutputError: a file cannot be written.
    """
    require_cryptography("mri-audit keygen")
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path, pub = Path(path), Path(f"{path}.pub")
    for target in (path, pub):
        if target.exists() and not force:
            raise UsageError(
                f"{target} already exists; mri-audit keygen does not overwrite a key: pass "
                "--force to replace it (the old key can no longer sign), or choose another path"
            )
    key = Ed25519PrivateKey.generate()
    pkcs8, spki = ser.PrivateFormat.PKCS8, ser.PublicFormat.SubjectPublicKeyInfo
    umask = os.umask(0o077)  # atomic_write gives its file mode 0o666 & ~umask: 0600
    try:
        atomic_write(path, key.private_bytes(ser.Encoding.PEM, pkcs8, ser.NoEncryption()))
    finally:
        os.umask(umask)
    atomic_write(pub, key.public_key().public_bytes(ser.Encoding.PEM, spki))
    logger.info("wrote key %s to %s and %s", key_id(key.public_key())[:16], path, pub)
    return path, pub


def _read_key(path: Path, option: str, what: str) -> Any:
    """The Ed25519 ``what`` ("private" or "public") key in ``path``, or a one-line UsageError."""
    require_cryptography(option)
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ed25519

    path, other = Path(path), "public" if what == "private" else "private"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        make = f"; mri-audit keygen {path} makes a key pair" if what == "private" else ""
        raise UsageError(f"{option}: the {what} key {path} does not exist{make}") from None
    except OSError as err:
        raise UsageError(f"{option}: cannot read {path}: {err.strerror or err}") from None
    if f"{other.upper()} KEY-----".encode() in data:  # PEM armour names the kind of key
        hint = "the file without .pub" if what == "private" else f"{path}.pub; keep {path} secret"
        msg = f"{path} is a {other} key; {option} needs the {what} key ({hint})"
        raise UsageError(f"{option}: {msg}")
    try:
        private = what == "private"
        key = ser.load_pem_private_key(data, None) if private else ser.load_pem_public_key(data)
    except (TypeError, ValueError, UnsupportedAlgorithm):  # TypeError: encrypted, no password
        enc = b"ENCRYPTED" in data
        why = "an encrypted private key" if enc else f"not a PEM {what} key"
        msg = f"{path} is {why}; mri-audit keygen makes {'an unencrypted' if enc else 'a'} key pair"
        raise UsageError(f"{option}: {msg}") from None
    if not isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        algorithm = type(key).__name__.replace("PrivateKey", "").replace("PublicKey", "")
        msg = f"{path} holds a {what} key of type {algorithm}; mri-audit signs with Ed25519 keys"
        raise UsageError(f"{option}: {msg} (mri-audit keygen makes a key pair)")
    return key


def load_private_key(path: Path, *, option: str = "--sign") -> Any:
    """The Ed25519 private key in the PEM file ``path`` (``option`` names it in errors).

    Raises:
        UsageError: no ``cryptography``, or a missing, unreadable, encrypted, public, non-PEM or
            non-Ed25519 key: a bad option value (exit 2)."""
    return _read_key(path, option, "private")


def load_public_key(path: Path, *, option: str = "--key") -> Any:
    """The Ed25519 public key in the PEM file ``path`` (``option`` names it in errors); errors
    as :func:`load_private_key` (a private key is refused)."""
    return _read_key(path, option, "public")


def key_id(public_key: Any) -> str:
    """The SHA-256 (hex) of the raw 32-byte public key; its first 16 digits are shown."""
    from cryptography.hazmat.primitives import serialization as ser

    raw = public_key.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding of a payload: the bytes a signature covers."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def sign_statement(statement: dict, key_path: Path) -> dict:
    """A DSSE envelope of ``statement`` (canonical JSON) signed with the private key at
    ``key_path``: ``{"payloadType", "payload": base64, "signatures": [{"keyid", "sig"}]}``;
    errors as :func:`load_private_key`."""
    key = load_private_key(key_path)
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
    sig = base64.b64encode(key.sign(pae(PAYLOAD_TYPE, payload))).decode("ascii")
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": [{"keyid": key_id(key.public_key()), "sig": sig}],
    }


def _b64(text: Any, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (TypeError, ValueError):  # binascii.Error is a ValueError
        raise DataError(f"the signature envelope's {what} is not base64") from None


def open_envelope(envelope: dict, public_key_path: Path) -> dict:
    """The statement a DSSE envelope signs, once a signature (whose keyid is the key's, or
    empty) verifies with the public key at ``public_key_path``.

    Raises:
        UsageError: as :func:`load_public_key`.
        DataError: a malformed envelope, or a payload that is not a JSON object (exit 4).
        SignatureError: no signature verifies with this key (exit 8)."""
    key = load_public_key(public_key_path)
    from cryptography.exceptions import InvalidSignature

    sigs = envelope.get("signatures") if isinstance(envelope, dict) else None
    if not isinstance(sigs, list) or not all(isinstance(s, dict) and "sig" in s for s in sigs):
        raise DataError("the signature envelope is malformed: it needs a list of signatures")
    if envelope.get("payloadType") != PAYLOAD_TYPE:
        raise DataError(f"the signature envelope's payloadType is not {PAYLOAD_TYPE}")
    payload, kid = _b64(envelope.get("payload"), "payload"), key_id(key)
    for sig in (s for s in sigs if s.get("keyid") in (kid, "", None)):
        with contextlib.suppress(InvalidSignature):
            key.verify(_b64(sig["sig"], "signature"), pae(PAYLOAD_TYPE, payload))
            break
    else:
        why = "it was made with another key, or the signed statement changed after signing"
        raise SignatureError(f"the signature does not verify with key {kid[:16]}: {why}")
    try:
        found = json.loads(payload)
    except ValueError:  # UnicodeDecodeError included
        found = None
    if not isinstance(found, dict):
        raise DataError("the signed payload is not a JSON object")
    logger.info("signature by key %s verified", kid[:16])
    return found


def statement(subjects: dict[str, str], predicate: dict) -> dict:
    """An in-toto Statement v1: each subject's name and SHA-256 (hex), sorted by name."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": n, "digest": {"sha256": subjects[n]}} for n in sorted(subjects)],
        "predicateType": PREDICATE_TYPE,
        "predicate": predicate,
    }
