"""The files of a ``harden`` run beside its kept weights ``<out>``, and the checks that protect
them.

``<out>`` holds the kept weights (a state dict), ``<out>.json`` the card, ``<out>.ckpt`` the
resumable checkpoint (removed once the run has succeeded, unless ``keep_checkpoint``),
``<out>.start.pt`` the starting weights of a model given without ``weights``, and
``<out>.audit/`` (or ``report_out``) the before/after audit. A lock file
``.<out name>.mri-audit.lock`` beside them lets one run at a time use ``<out>``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mri_audit.errors import UsageError

__all__ = [
    "add_audit_to_card",
    "card_path",
    "check_out",
    "check_outputs",
    "checkpoint_path",
    "finish",
    "hold_out_lock",
    "report_folder",
    "start_path",
]

logger = logging.getLogger(__name__)


def checkpoint_path(out: Path) -> Path:
    """``<out>.ckpt``: the resumable checkpoint."""
    return out.with_suffix(out.suffix + ".ckpt")


def card_path(out: Path) -> Path:
    """``<out>.json``: the card (settings, validation history, before/after audit)."""
    return out.with_suffix(out.suffix + ".json")


def start_path(out: Path) -> Path:
    """``<out>.start.pt``: the starting weights of a model given without ``weights``."""
    return out.with_suffix(out.suffix + ".start.pt")


def report_folder(out: str | Path, report_out: str | Path | None) -> Path:
    """The before/after audit's folder: ``report_out``, by default ``<out>.audit``."""
    return Path(report_out or str(out) + ".audit")


def check_out(out: Path, *, resume: bool) -> None:
    """Refuse an ``--out`` that a run would overwrite, or a ``--resume`` with nothing to resume.

    A successful run removes its checkpoint ``<out>.ckpt`` (unless ``--keep-checkpoint``), so
    kept weights without a checkpoint are a finished run: neither a new run nor ``--resume``
    may write over them.

    Args:
        out: the ``--out`` weights file.
        resume: whether ``--resume`` was given.

    Raises:
        UsageError: ``out`` exists and the run would overwrite it, or cannot resume it (exit 2).
    """
    checkpoint = checkpoint_path(out)
    if not out.exists() or (resume and checkpoint.exists()):
        return
    if checkpoint.exists():
        raise UsageError(
            f"{out} and its checkpoint exist; use --resume to continue, or another --out"
        )
    card = card_path(out)
    finished = f"{out} holds the kept weights of a finished harden run (card {card.name})"
    if resume and card.exists():
        raise UsageError(
            f"nothing to resume: {finished}, whose checkpoint was removed when it succeeded "
            "(--keep-checkpoint keeps it); use another --out to train again"
        )
    if resume:
        raise UsageError(
            f"nothing to resume: {out} exists but its checkpoint {checkpoint.name} does not; "
            f"use another --out to train again (or remove {out})"
        )
    if card.exists():
        raise UsageError(f"{finished}; use another --out to train again")
    raise UsageError(f"{out} exists; harden does not overwrite it: use another --out, or remove it")


def check_outputs(c: Mapping[str, Any]) -> None:
    """Every check of the output paths before any work: ``out`` (:func:`check_out`), ``out``
    against the starting ``weights``, and the before/after audit's folder.

    Args:
        c: the checked settings (``out``, ``weights``, ``resume``, ``report_out``,
            ``no_report``).

    Raises:
        UsageError: one line naming the option to change (exit 2).
    """
    out = Path(c["out"])
    check_out(out, resume=c["resume"])
    if c["weights"] and Path(c["weights"]).resolve() == out.resolve():
        raise UsageError("--out must differ from --weights (the original is kept)")
    report_out = report_folder(out, c["report_out"])
    if not c["no_report"] and report_out.resolve() == out.parent.resolve():
        raise UsageError(
            f"--report-out {report_out} is the folder --out is written in; the before/after "
            "audit needs a folder of its own (default: <out>.audit)"
        )


def hold_out_lock(out: Path):
    """The exclusive lock of the weights file ``out`` (a lock file beside it), a context manager.

    Raises:
        UsageError: another process holds it (exit 2), naming its pid and host.
    """
    from mri_audit.audit.outlock import hold_lock

    folder = out.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass  # hold_lock says in one line why the folder cannot be used
    return hold_lock(folder, "mri-audit harden", name=f".{out.name}.mri-audit.lock", label=str(out))


def add_audit_to_card(out: Path, report_out: Path) -> None:
    """Add the weights' sha256 and the before/after audit's figures to ``<out>.json``."""
    from mri_audit.files import write_json
    from mri_audit.hashing import sha256_file

    card = card_path(out)
    results_path = Path(report_out) / "results.json"
    if not (card.exists() and results_path.exists()):
        return
    document = json.loads(card.read_text())
    results = json.loads(results_path.read_text())
    document["sha256"] = sha256_file(out)
    document["before_after_audit"] = {"clean": results["clean"], "attacks": results["attacks"]}
    write_json(card, document)


def finish(out: Path, *, keep: bool, note: Callable[[str], None]) -> Path | None:
    """After a successful run: remove the checkpoint unless ``keep`` (an interrupted or failed
    run never gets here, so its checkpoint stays for ``resume``).

    Returns:
        the checkpoint when it is kept, else None.
    """
    checkpoint = checkpoint_path(out)
    note(f"the run has finished: the kept weights are in {out}, the card in {card_path(out)}")
    if keep:
        return checkpoint if checkpoint.exists() else None
    with contextlib.suppress(FileNotFoundError):
        checkpoint.unlink()
    logger.info("removed %s: the run has finished (--keep-checkpoint keeps it)", checkpoint)
    return None
