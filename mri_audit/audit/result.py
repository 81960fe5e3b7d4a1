"""The result of an audit: plain data computed once, then written and rendered from memory.

:func:`summarize_audit` turns an audit's records into an :class:`AuditResult` — the aggregates
and verdict (:func:`mri_audit.audit.aggregates.aggregate`), the worst cases and their image
panels (computed here, while the models are at hand), the warnings — and
:meth:`AuditResult.write` writes ``results.json``, ``records.csv``, ``audit_images.npz`` and the
report from it. The report is rendered from the result, never by re-running a model.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mri_audit.audit.aggregates import aggregate
from mri_audit.audit.cautions import audit_warnings
from mri_audit.audit.chain import chained_lines
from mri_audit.audit.panels import render_panels, worst_records
from mri_audit.errors import MriAuditError, UsageError, write_failure
from mri_audit.evidence.manifest import AUDIT_OUTPUTS, SIGNATURE_FILE, chain_of, file_digests
from mri_audit.files import SCHEMA_VERSION, atomic_write, to_jsonable, write_json
from mri_audit.fnaf.criteria import criterion_of
from mri_audit.report.failures import TRACEBACK_HINT, RenderError, describe, rendering
from mri_audit.report.records_csv import read_records_csv, records_csv_text

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["AuditResult", "summarize_audit", "build_results", "WORST_CASE_FIELDS"]

logger = logging.getLogger(__name__)

WORST_CASE_FIELDS = (
    "model",
    "attack",
    "volume",
    "slice",
    "criterion",
    "score",
    "hit",
    "r",
    "r0",
    "e",
    "loss",
    "ip",
    "rho",
    "row",
    "col",
    "feature",
    "why",
)
FILES = {
    "records": "records.csv",
    "journal": "records.jsonl",
    "images": "audit_images.npz",
    "report": "report.html",
}


@dataclass
class AuditResult:
    """A finished audit, as plain data.

    Attributes:
        results: the ``results.json`` document (aggregates, verdict, warnings, provenance).
        journal: the records, one dict per (model, attack, volume, slice), as in the journal.
        header: the journal's header (the audit's fingerprint, configuration, models, data).
        images: the worst-case panels and the mean anatomy (``audit_images.npz``).
        out: the folder the files were written to (None until :meth:`write`).
    """

    results: dict[str, Any]
    journal: list[dict] = field(default_factory=list)
    header: dict[str, Any] = field(default_factory=dict)
    images: dict[str, np.ndarray] = field(default_factory=dict)
    out: Path | None = None

    @property
    def records(self) -> pd.DataFrame:
        """One row per record with the columns of ``records.csv`` (read as the report reads it)."""
        rows = [{k: v for k, v in r.items() if k != "audit"} for r in self.journal]
        return read_records_csv(io.StringIO(records_csv_text(rows)))

    @property
    def verdict(self) -> dict[str, Any]:
        """The gate's status (``pass``/``fail``/``inconclusive``/``none``) with its reason."""
        return self.results["verdict"]

    @property
    def attacks(self) -> dict[str, Any]:
        """Per model and attack: rates with clustered intervals, quantiles of each quantity."""
        return self.results["attacks"]

    @property
    def warnings(self) -> list[str]:
        """What a reader must see beside the numbers (DESIGN §6)."""
        return list(self.results.get("warnings") or [])

    @property
    def exit_code(self) -> int:
        """The CLI's exit status for this result: 3 when the gate fails or is inconclusive."""
        return 3 if self.verdict.get("status") in ("fail", "inconclusive") else 0

    @property
    def fingerprint(self) -> str | None:
        """The audit's fingerprint (``header["audit"]``, stored in ``results.json``)."""
        return self.header.get("audit") or self.results.get("audit")

    def write(
        self, out: str | Path, *, force: bool = False, sign: str | Path | None = None
    ) -> Path:
        """Write every final file into ``out`` (each atomically) and return ``out``.

        ``out`` may hold this audit already (``audit(out=...)`` wrote it there, or ``write``
        ran before): its files are replaced. A folder holding another audit (another
        fingerprint, a map, or result files of no known audit) is refused unless ``force``,
        which first removes every file of the old audit, re-reads included, as
        ``mri-audit run --force`` does.

        ``results.json`` is written first with ``complete: false``, then the images,
        ``records.csv`` and the report, then ``results.json`` again with ``complete: true``: a
        kill in between leaves a folder that ``report`` and ``--resume`` know to be unfinished.
        The journal is written too when ``out`` does not hold it already (a re-read under
        another criterion needs it). A failure after the journal loses no record: it is one
        line saying how to finish the files (see :meth:`_failure`).

        ``results.json`` records the journal's chain head (``chain``) and the SHA-256 of every
        other file written (``manifest``); with ``sign`` (an Ed25519 private key file) they are
        signed into ``signature.json`` (:mod:`mri_audit.evidence.attest`).

        Raises:
            UsageError: ``out`` is a file, or holds another audit and ``force`` is false.
            OutputError: a file cannot be written (disk full, read-only; exit 7).
            RenderError: mri-audit failed to write a file or render the report (exit 1).
        """
        from mri_audit.audit.outdir import claim_folder

        out = Path(out)
        if out.exists() and not out.is_dir():
            raise UsageError(f"{out} is a file; write() needs a folder")
        claim_folder(out, self.fingerprint, force=force, caller="write()")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise write_failure(out, err) from None
        if self.header and not _holds_journal(out, self.header.get("audit")):
            data, _ = chained_lines([self.header, *self.journal])
            atomic_write(out / FILES["journal"], data)
        if (out / SIGNATURE_FILE).is_file() and sign is None:
            logger.warning("removing %s: the files it signed change now", out / SIGNATURE_FILE)
        (out / SIGNATURE_FILE).unlink(missing_ok=True)  # the files it signed change now
        results = {k: v for k, v in self.results.items() if k not in ("failed", "manifest")}
        results["complete"] = False
        step, started = "results.json", False
        if self.header:
            results["chain"] = dict(chain_of(out / FILES["journal"]), folder=out.resolve().name)
        try:
            write_json(out / "results.json", results)
            started, step = True, FILES["images"]
            buf = io.BytesIO()
            np.savez_compressed(buf, **self.images)
            atomic_write(out / FILES["images"], buf.getvalue())
            step = FILES["records"]
            # The fingerprint is the audit's (results.json holds it), not a per-row value.
            rows = [{k: v for k, v in r.items() if k != "audit"} for r in self.journal]
            atomic_write(out / FILES["records"], records_csv_text(rows).encode("utf-8"))
            step = FILES["report"]
            self._render(out / FILES["report"], results)
            step = "results.json"
            results["manifest"] = file_digests(out, AUDIT_OUTPUTS)
            results["complete"] = True
            write_json(out / "results.json", results)
        except Exception as err:
            raise self._failure(out, results, step, err, started) from None
        self.results, self.out = results, out
        if sign is not None:
            from mri_audit.evidence.attest import sign_folder

            sign_folder(out, sign)
        return out

    def _failure(
        self, out: Path, results: dict, step: str, err: Exception, started: bool
    ) -> MriAuditError:
        """The one line for ``err`` while writing ``step`` in ``out`` (after the journal);
        ``started``: ``results.json`` says ``complete: false`` already.

        ``results.json`` is left saying ``complete: false`` with ``failed`` naming the file
        (where it can be written): ``mri-audit report`` finishes an audit whose report failed
        (:func:`mri_audit.report.failures.finish_audit`), ``--resume`` any audit.
        """
        if not isinstance(err, MriAuditError):
            logger.debug("writing %s failed", out / step, exc_info=err)
        error = str(err) if isinstance(err, MriAuditError) else describe(err)
        failed = {"file": step, "error": error}
        try:
            write_json(out / "results.json", dict(results, complete=False, failed=failed))
            marked = True
        except Exception:  # the disk may still be full: results.json keeps what it held
            marked = started
        if isinstance(err, MriAuditError):
            kind, head, hint = type(err), str(err), ""
        else:
            verb = "rendering" if step == FILES["report"] else "writing"
            kind, head = RenderError, f"{verb} {out / step} failed ({describe(err)})"
            hint = f"; {TRACEBACK_HINT}"
        if not self.header:
            return kind(f"{head}; the result in memory is unchanged: call write() again{hint}")
        kept = f"the journal {out / FILES['journal']} keeps every record"
        if marked:
            kept += " and results.json says complete: false"
        if marked and step == FILES["report"]:
            fix = (
                f"once the cause is fixed, mri-audit report {out} finishes the files (or run "
                "the same command again with --resume)"
            )
        else:
            fix = "once the cause is fixed, run the same command again with --resume"
        return kind(f"{head}; {kept}; {fix}{hint}")

    def report(self, path: str | Path, *, force: bool = False) -> Path:
        """Render the self-contained HTML report to ``path`` from this result (no model runs).

        The folder of ``path`` may hold this audit or no audit; one holding another audit is
        refused unless ``force``, which first removes every file of that audit (as
        :meth:`write`).

        Raises:
            UsageError: the folder holds another audit and ``force`` is false (exit 2).
            OutputError: ``path`` cannot be written (exit 7).
            RenderError: mri-audit failed to render the report (exit 1).
        """
        from mri_audit.audit.outdir import claim_folder

        path = Path(path)
        claim_folder(path.parent, self.fingerprint, force=force, caller="report()")
        with rendering(f"rendering {path}", "no file was changed"):
            self._render(path)
        return path

    def _render(self, path: Path, results: dict | None = None) -> None:
        """Render the report of ``results`` (default: this result's) to ``path`` (atomically);
        any failure propagates."""
        from mri_audit.report.html import AuditInputs, build_context, render_html

        results = json.loads(json.dumps(to_jsonable(results or self.results)))  # as read
        results.pop("failed", None)
        inputs = AuditInputs(path.parent / "results.json", results, records=self.records)
        inputs.criterion = criterion_of(results["config"])
        inputs.images = {k: np.asarray(v, dtype=np.float32) for k, v in self.images.items()}
        atomic_write(path, render_html(build_context(inputs)).encode("utf-8"))


def _holds_journal(out: Path, audit: str | None) -> bool:
    """Whether ``out/records.jsonl`` is this audit's journal (its header names ``audit``)."""
    try:
        with open(out / FILES["journal"], encoding="utf-8") as fh:
            first = json.loads(fh.readline() or "{}")
    except (OSError, ValueError):
        return False
    return isinstance(first, dict) and first.get("audit") == audit


def build_results(
    *,
    header: dict,
    aggregates: dict,
    worst_cases: list[dict],
    command_line: list[str],
    versions: dict,
    device: str,
    elapsed: float,
    started: str,
) -> dict:
    """The ``results.json`` document (plain data) of an audit."""
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": "mri-audit",
        "complete": False,
        "audit": header.get("audit"),
        "created": started,
        "command_line": command_line,
        "config": header["config"],
        "versions": versions,
        "device": device,
        "elapsed_seconds": elapsed,
        "data": header["data"],
        "models": header["models"],
        "code": header.get("code"),
        "window_fraction": header["config"]["window"],
        **aggregates,
        "warnings": audit_warnings(
            models=header["models"],
            clean=aggregates["clean"],
            zero_filled=aggregates.get("zero_filled"),
            attacks=aggregates["attacks"],
            config=header["config"],
            data=header["data"],
            max_attack_rate=aggregates["verdict"].get("max_attack_rate"),
        ),
        "worst_cases": [{k: c.get(k) for k in WORST_CASE_FIELDS} for c in worst_cases],
        "files": dict(FILES),
    }


def summarize_audit(
    *,
    records: list[dict],
    header: dict,
    auditor,
    dataset,
    max_attack_rate: float | None,
    command_line: list[str],
    versions: dict,
    device: str,
    elapsed: float,
    started: str,
    recovery_map: dict | None = None,
) -> AuditResult:
    """The :class:`AuditResult` of an audit's records: aggregates, verdict, warnings, and the
    worst cases' image panels, drawn with the auditor's models (the only model passes after
    the attacks).

    ``recovery_map`` (``run --map``) is stored under ``map`` and rendered in the report.
    """
    records = to_jsonable(records)
    config = header["config"]
    primary = header["models"][0]["name"]
    agg = aggregate(
        records,
        criterion=criterion_of(config),
        max_attack_rate=max_attack_rate,
        primary=primary,
    )
    cases = worst_records(records, primary)
    images = render_panels(auditor, dataset, cases)
    mean_target = auditor.mean_target()
    if mean_target is not None:
        images["mean_target"] = mean_target.numpy().astype(np.float16)
    results = build_results(
        header=header,
        aggregates=agg,
        worst_cases=cases,
        command_line=command_line,
        versions=versions,
        device=device,
        elapsed=elapsed,
        started=started,
    )
    if recovery_map is not None:
        results["map"] = recovery_map
    return AuditResult(results, records, header, images)
