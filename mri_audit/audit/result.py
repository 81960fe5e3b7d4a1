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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mri_audit.audit.aggregates import aggregate
from mri_audit.audit.cautions import audit_warnings
from mri_audit.audit.panels import render_panels, worst_records
from mri_audit.files import SCHEMA_VERSION, atomic_write, to_jsonable, write_json
from mri_audit.fnaf.criteria import criterion_of
from mri_audit.report.records_csv import read_records_csv, records_csv_text

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["AuditResult", "summarize_audit", "build_results", "WORST_CASE_FIELDS"]

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

    def write(self, out: str | Path) -> Path:
        """Write every final file into ``out`` (each atomically) and return ``out``.

        ``results.json`` is written first with ``complete: false``, then the report, then
        ``results.json`` again with ``complete: true``: a kill in between leaves a folder that
        ``report`` and ``--resume`` know to be unfinished. The journal is written too when
        ``out`` does not hold it already (a re-read under another criterion needs it).
        """
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        if self.header and not _holds_journal(out, self.header.get("audit")):
            lines = [
                json.dumps(to_jsonable(r), sort_keys=True) for r in [self.header, *self.journal]
            ]
            atomic_write(out / FILES["journal"], ("\n".join(lines) + "\n").encode("utf-8"))
        buf = io.BytesIO()
        np.savez_compressed(buf, **self.images)
        atomic_write(out / FILES["images"], buf.getvalue())
        # The fingerprint is the audit's (results.json holds it), not a per-row value.
        rows = [{k: v for k, v in r.items() if k != "audit"} for r in self.journal]
        atomic_write(out / FILES["records"], records_csv_text(rows).encode("utf-8"))
        results = dict(self.results, complete=False)
        write_json(out / "results.json", results)
        self.report(out / FILES["report"])
        results["complete"] = True
        write_json(out / "results.json", results)
        self.results, self.out = results, out
        return out

    def report(self, path: str | Path) -> Path:
        """Render the self-contained HTML report to ``path`` from this result (no model runs)."""
        from mri_audit.report.html import AuditInputs, build_context, render_html

        path = Path(path)
        results = json.loads(json.dumps(to_jsonable(self.results)))  # as results.json reads
        inputs = AuditInputs(path.parent / "results.json", results, records=self.records)
        inputs.criterion = criterion_of(results["config"])
        inputs.images = {k: np.asarray(v, dtype=np.float32) for k, v in self.images.items()}
        atomic_write(path, render_html(build_context(inputs)).encode("utf-8"))
        return path


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
