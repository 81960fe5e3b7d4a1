"""The output folder of an audit: checked before any work, cleared whole by ``--force``.

Checks run before a model is loaded, so a read-only folder, a full disk or a folder holding
another audit costs the user no time and leaves nothing behind.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from mri_audit.errors import OutputError, UsageError

__all__ = [
    "AUDIT_FILES",
    "MIN_FREE_BYTES",
    "audit_files",
    "check_existing",
    "check_out",
    "claim_folder",
    "foreign_files",
    "precheck_out",
    "prepare_folder",
    "remove_audit",
]

logger = logging.getLogger(__name__)

AUDIT_FILES = (
    "records.jsonl",
    "records.csv",
    "results.json",
    "report.html",
    "audit_images.npz",
    "map.csv",  # a map's table (`mri-audit map`): replaced with the map's results.json
    "signature.json",  # `--sign`: the signed head and manifest
)
MIN_FREE_BYTES = 64 << 20
"""Free space an audit needs before it starts (the journal, the images and the report)."""


def audit_files(out: Path) -> list[Path]:
    """Every file an audit in ``out`` wrote: the final files, per-rank journal shards,
    re-reads (``results.<criterion>.json``, ``report.<criterion>.html``) and temporary files
    an interrupted write left."""
    if not out.is_dir():
        return []
    found = [out / f for f in AUDIT_FILES if (out / f).exists()]
    for pattern in (
        "records.rank*.jsonl",
        "results.*.json",
        "report.*.html",
        ".records.jsonl.*.tmp",
        ".results.json.*.tmp",
        ".report.html.*.tmp",
        ".records.csv.*.tmp",
        ".audit_images.npz.*.tmp",
        ".map.csv.*.tmp",
        ".signature.json.*.tmp",
    ):
        found += sorted(out.glob(pattern))
    return found


def _empty_journal(out: Path) -> bool:
    path = out / "records.jsonl"
    return path.is_file() and path.stat().st_size == 0


def check_out(out: Path, *, resume: bool, force: bool) -> None:
    """Check ``--out`` before any work: a folder we can write, with free space (see
    :func:`prepare_folder`), that holds no other audit unless ``--resume`` or ``--force`` says
    what to do with it (see :func:`check_existing`)."""
    prepare_folder(out)
    check_existing(out, resume=resume, force=force)


def precheck_out(out: Path, *, resume: bool, force: bool) -> None:
    """The checks of :func:`check_out` that create nothing: run before the data is read, so a
    bad ``--out`` is refused at once and bad data leaves no empty ``--out`` behind.

    An existing ``out`` gets every check; a missing one, only its nearest existing parent's
    (a folder, writable, with free space). :func:`check_out` (under the lock) decides.
    """
    if out.exists():
        check_out(out, resume=resume, force=force)
        return
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out} cannot be created in {parent}; choose another folder")
    _check_free(out, parent)


def prepare_folder(out: Path) -> None:
    """Create ``--out`` if needed and check that it can be written and has free space.

    Raises:
        UsageError: ``out`` is a file, or cannot be created or written (exit 2).
        OutputError: less than :data:`MIN_FREE_BYTES` free (exit 7).
    """
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".mri-audit-probe.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        why = "read-only" if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM) else None
        raise UsageError(
            f"--out {out} is not writable ({why or err.strerror or err}); choose another folder"
        ) from None
    _check_free(out, out)


def _check_free(out: Path, where: Path) -> None:
    free = shutil.disk_usage(where).free
    if free < MIN_FREE_BYTES:
        raise OutputError(
            f"--out {out} has {free / 2**20:.0f} MiB free; an audit needs at least "
            f"{MIN_FREE_BYTES / 2**20:.0f} MiB: free space or choose another folder"
        )


def check_existing(out: Path, *, resume: bool, force: bool) -> None:
    """Refuse a folder holding an audit unless ``--resume`` or ``--force`` is given, and a
    ``--resume`` of a folder whose audit has no journal to resume from.

    Raises:
        UsageError: (exit 2).
    """
    if _empty_journal(out):  # an empty journal holds nothing (an older version could leave one)
        (out / "records.jsonl").unlink()
    existing = audit_files(out)
    if existing and not (resume or force):
        names = ", ".join(sorted({p.name for p in existing})[:6])
        raise UsageError(
            f"{out} already holds an audit ({names}); use --resume to continue it or --force "
            "to replace it"
        )
    if resume and not force and existing and not (out / "records.jsonl").exists():
        names = ", ".join(sorted({p.name for p in existing})[:6])
        raise UsageError(
            f"nothing to resume in {out}: it holds {names} but no journal records.jsonl; use "
            "--force to replace that audit"
        )


def _owner(path: Path) -> str | None:
    """The audit fingerprint a results file or a journal names (None: none, or unreadable).

    A map's ``results.json`` belongs to no audit: ``"map"`` is never a fingerprint.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            first = json.loads(fh.readline() if path.suffix == ".jsonl" else fh.read())
    except (OSError, ValueError):
        return None
    if not isinstance(first, dict):
        return None
    if first.get("kind") == "map":
        return "map"
    audit = first.get("audit")
    return audit if isinstance(audit, str) else None


def foreign_files(out: Path, audit: str | None) -> list[Path]:
    """The files in ``out`` of an audit other than ``audit`` (or of a map).

    ``out`` holds ``audit`` itself when every results file and journal there names its
    fingerprint (``results.json``, re-reads ``results.<criterion>.json``, ``records.jsonl`` and
    its shards); then nothing is foreign, and neither is a folder holding only temporary files
    or an empty journal. Files that name no audit (``records.csv``, reports, images) belong to
    whichever audit the others name, and to another one when none does.
    """
    found = [f for f in audit_files(out) if not f.name.startswith(".")]
    found = [f for f in found if not (f.name == "records.jsonl" and f.stat().st_size == 0)]
    if not found:
        return []
    owners = [
        _owner(f) for f in found if f.suffix in (".json", ".jsonl") and f.name != "signature.json"
    ]
    if audit is not None and owners and all(o == audit for o in owners):
        return []
    return found


def claim_folder(out: Path, audit: str | None, *, force: bool, caller: str) -> None:
    """Let ``caller`` write the files of ``audit`` into ``out``: refuse a folder holding another
    audit (or a map) unless ``force``, which first removes every file of it, as ``--force``
    does (:func:`remove_audit`: final files, re-reads, shards, temporary files).

    Raises:
        UsageError: ``out`` holds another audit and ``force`` is false (exit 2).
    """
    foreign = foreign_files(out, audit)
    if not foreign:
        return
    if not force:
        names = ", ".join(sorted({p.name for p in foreign})[:6])
        raise UsageError(
            f"{out} already holds another audit ({names}); {caller} does not overwrite it: "
            "pass force=True to replace it (every file of that audit, re-reads included), or "
            "choose another folder"
        )
    remove_audit(out)


def remove_audit(out: Path) -> list[Path]:
    """Remove every file of the audit in ``out`` (``--force``); returns what was removed."""
    removed = audit_files(out)
    for f in removed:
        f.unlink(missing_ok=True)
    if removed:
        logger.info("removed %d files of the earlier audit in %s", len(removed), out)
    return removed
