"""``--sign KEY``: an audit folder's head and manifest signed into ``signature.json``.

The signed statement (in-toto Statement v1 in a DSSE envelope,
:mod:`mri_audit.evidence.signing`) lists every file of the audit with its SHA-256 —
``results.json`` (which holds the chain head and the manifest), the journal and the files of the
manifest — and carries the audit's fingerprint, head and manifest as its predicate. A valid
signature proves the files did not change after signing, signed by the key's holder; it does
not prove the audit was honest (``mri-audit verify --replay`` checks that).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mri_audit.errors import DataError
from mri_audit.evidence.manifest import SIGNATURE_FILE, file_digests

__all__ = ["signed_files", "sign_folder", "check_signature"]

logger = logging.getLogger(__name__)


def signed_files(results: dict) -> list[str]:
    """The files a signature of ``results``' folder covers: results.json, the journal (an
    audit's) and every file of the manifest."""
    names = ["results.json"]
    chain = results.get("chain")
    if isinstance(chain, dict) and isinstance(chain.get("file"), str):
        names.append(chain["file"])
    return names + sorted((results.get("manifest") or {}).keys())


def sign_folder(folder: Path, key: str | Path) -> Path:
    """Sign the finished audit (or map) in ``folder`` with the Ed25519 private key ``key``;
    writes ``signature.json`` (atomically) and returns its path.

    Raises:
        UsageError: the key cannot be read, or the extra is missing (exit 2).
    """
    from mri_audit.evidence.signing import sign_statement, statement
    from mri_audit.files import atomic_write

    folder = Path(folder)
    results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    predicate = {
        "audit": results.get("audit"),
        "kind": results.get("kind", "audit"),
        "chain": results.get("chain"),
        "manifest": results.get("manifest"),
    }
    envelope = sign_statement(
        statement(file_digests(folder, signed_files(results)), predicate), Path(key)
    )
    out = folder / SIGNATURE_FILE
    atomic_write(out, (json.dumps(envelope, indent=2) + "\n").encode("utf-8"))
    logger.info("signed %s with %s", folder, key)
    return out


def check_signature(
    folder: Path, public_key: str | Path, results_name: str = "results.json"
) -> str:
    """Check ``signature.json`` in ``folder`` with ``public_key`` and every signed file's
    SHA-256; returns a one-line summary.

    Raises:
        SignatureError: the signature does not verify with this key (exit 8).
        DataError: no or a malformed ``signature.json``, or a signed file that changed or is
            missing (exit 4).
    """
    from mri_audit.evidence.signing import key_id, load_public_key, open_envelope

    folder = Path(folder)
    path = folder / SIGNATURE_FILE
    if not path.is_file():
        raise DataError(f"{folder} holds no {SIGNATURE_FILE}: the audit was not signed")
    try:
        envelope = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{path} cannot be read as JSON ({err})") from None
    signed = open_envelope(envelope, Path(public_key))
    subjects = signed.get("subject")
    if not isinstance(subjects, list) or not subjects:
        raise DataError(f"{path}: the signed statement lists no files")
    for subject in subjects:
        name = subject.get("name") if isinstance(subject, dict) else None
        digest = (subject.get("digest") or {}).get("sha256") if name else None
        if not isinstance(name, str) or not isinstance(digest, str) or "/" in name:
            raise DataError(f"{path}: a malformed subject in the signed statement")
        if not (folder / name).is_file():
            raise DataError(f"{name} is signed but missing from {folder}")
        if file_digests(folder, [name])[name] != digest:
            raise DataError(f"{name} changed after it was signed (its SHA-256 differs)")
    names = {s.get("name") for s in subjects if isinstance(s, dict)}
    if results_name not in names:
        raise DataError(f"{results_name} is not among the signed files (it was written after)")
    kid = key_id(load_public_key(Path(public_key)))[:16]
    return f"signed by key {kid}: {len(subjects)} files unchanged since signing"
