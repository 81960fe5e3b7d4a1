"""Failures after the work: writing an audit's files or rendering its report.

The attacks are the expensive part of an audit, and they are safe in the journal by the time
the final files are written. A failure from then on (a figure that cannot be drawn, a template
error, a full disk) must cost none of that work: it is one line naming what failed and how to
finish the files once the cause is fixed, never a traceback. An ``OSError`` is mri-audit's
:class:`~mri_audit.errors.OutputError` (exit 7, raised by :func:`mri_audit.files.atomic_write`);
anything else is a bug of mri-audit, a :class:`RenderError` (exit 1) whose traceback is logged
at DEBUG (``mri-audit -vv``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mri_audit.errors import MriAuditError

__all__ = ["RenderError", "TRACEBACK_HINT", "describe", "finish_audit", "rendering"]

logger = logging.getLogger(__name__)

TRACEBACK_HINT = "mri-audit -vv shows the traceback"
"""How a user sees the traceback of a :class:`RenderError` (it is logged at DEBUG)."""

_DETAIL = 200  # characters of the underlying error kept in the one line


class RenderError(MriAuditError):
    """mri-audit failed while writing an audit's files or rendering its report (exit 1, an
    internal error: the message says what failed and how to finish the files)."""

    exit_code = 1


def describe(err: BaseException) -> str:
    """``Type: message`` of an exception, shortened for one line."""
    text = " ".join(str(err).split())
    if len(text) > _DETAIL:
        text = text[: _DETAIL - 3] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


@contextmanager
def rendering(what: str, then: str) -> Iterator[None]:
    """Turn an unexpected exception of the block into one :class:`RenderError` line.

    :class:`~mri_audit.errors.MriAuditError` (e.g. an ``OutputError``) and ``KeyboardInterrupt``
    pass through unchanged; any other exception is logged with its traceback at DEBUG.

    Args:
        what: what the block does, e.g. ``"rendering out/report.html"``.
        then: what the failure leaves and how to finish, e.g. ``"no file was changed"``.

    Raises:
        RenderError: ``"<what> failed (<Type>: <message>); <then>; mri-audit -vv shows the
            traceback"``.
    """
    try:
        yield
    except MriAuditError:
        raise
    except Exception as err:
        logger.debug("%s failed", what, exc_info=True)
        raise RenderError(f"{what} failed ({describe(err)}); {then}; {TRACEBACK_HINT}") from None


def finish_audit(results_path: str | Path) -> Path | None:
    """Finish an audit whose report failed to render: render it and mark the audit complete.

    :meth:`mri_audit.audit.result.AuditResult.write` leaves ``results.json`` saying
    ``complete: false`` with ``failed`` naming ``report.html`` when only the report is
    missing: every other file was written, so ``mri-audit report AUDIT`` renders the report
    from them (nothing is recomputed) and writes ``results.json`` with ``complete: true``.
    Any other audit is left as it is (None).

    Raises:
        RenderError: the report failed again (``results.json`` still says ``complete: false``).
        OutputError: a file cannot be written (exit 7).
    """
    from mri_audit.files import write_json
    from mri_audit.report.html import load_results, render_report, resolve_results

    path = resolve_results(results_path)
    if not path.is_file():
        return None
    results = load_results(path)
    failed = results.get("failed")
    name = Path((results.get("files") or {}).get("report") or "report.html").name
    if (
        results.get("complete") is not False
        or results.get("reread_from") is not None
        or not isinstance(failed, dict)
        or failed.get("file") != name
    ):
        return None
    report = path.parent / name
    then = (
        f"{path.name} still says complete: false; once the cause is fixed, run mri-audit "
        f"report {path.parent} again (or the audit's command with --resume)"
    )
    with rendering(f"rendering {report}", then):
        render_report(path, report)
    from mri_audit.evidence.manifest import AUDIT_OUTPUTS, file_digests

    names = [n for n in AUDIT_OUTPUTS if (path.parent / n).is_file()]
    done = {k: v for k, v in results.items() if k != "failed"}
    done |= {"manifest": file_digests(path.parent, names), "complete": True}
    write_json(path, done)
    logger.info("finished the audit in %s: rendered %s", path.parent, report)
    return report
