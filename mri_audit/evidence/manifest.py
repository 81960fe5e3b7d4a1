"""The head and the manifest ``results.json`` records at the end of an audit (and a map).

``chain``: the journal's head (its line count and the SHA-256 of its last line,
:mod:`mri_audit.audit.chain`), so the last line is authenticated too and nothing can be appended
unseen. ``manifest``: the SHA-256 of every file the audit wrote besides ``results.json`` itself
(``records.csv``, ``report.html``, ``audit_images.npz``; a map's ``map.csv`` and
``report.html``), beside the inputs ``results.json`` already hashes (weights, model sources,
data, code). ``mri-audit verify`` checks both (:mod:`mri_audit.evidence.verify`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from mri_audit.hashing import sha256_file

logger = logging.getLogger(__name__)

__all__ = [
    "AUDIT_OUTPUTS",
    "MAP_OUTPUTS",
    "SIGNATURE_FILE",
    "chain_of",
    "file_digests",
    "update_manifest",
]

AUDIT_OUTPUTS = ("records.csv", "audit_images.npz", "report.html")
"""The files an audit's manifest covers (``records.jsonl`` is covered by the chain head)."""
MAP_OUTPUTS = ("map.csv", "report.html")
"""The files a map's manifest covers."""
SIGNATURE_FILE = "signature.json"
"""The DSSE envelope ``--sign`` writes beside ``results.json``."""


def file_digests(folder: Path, names: Iterable[str]) -> dict[str, str]:
    """``{name: sha256}`` of each file of ``names`` in ``folder`` (in the order given)."""
    return {name: sha256_file(Path(folder) / name) for name in names}


def chain_of(journal: Path) -> dict:
    """The head of the validated journal ``journal``: ``{"file", "lines", "head"}``.

    Raises:
        JournalError: the journal's chain is broken (exit 4).
    """
    from mri_audit.audit.journal import read_journal

    head = read_journal(journal, hint="the journal was edited while the audit was written").head
    if head is None:
        from mri_audit.errors import DataError

        raise DataError(f"the journal {journal} is empty")
    return head.to_dict(journal.name)


def update_manifest(results_path: Path, names: Iterable[str]) -> dict:
    """Re-hash ``names`` (files beside ``results_path``) into its ``manifest`` (a report
    rendered again in place); returns the new results. Results without a manifest (written
    before manifests existed, or unfinished) are left as they are."""
    import json

    from mri_audit.files import write_json

    results = json.loads(Path(results_path).read_text(encoding="utf-8"))
    manifest = results.get("manifest")
    if not isinstance(manifest, dict) or results.get("complete") is not True:
        return results
    fresh = file_digests(Path(results_path).parent, names)
    if all(manifest.get(k) == v for k, v in fresh.items()):
        return results
    results["manifest"] = {**manifest, **fresh}
    write_json(results_path, results)
    if (Path(results_path).parent / SIGNATURE_FILE).is_file():
        logger.warning(
            "%s changed, so %s no longer matches it: sign the audit again to keep a valid "
            "signature",
            ", ".join(fresh),
            SIGNATURE_FILE,
        )
    return results
