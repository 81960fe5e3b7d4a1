"""Finishing an audit: aggregates, ``results.json``, ``records.csv``, images and the report."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np

from mri_audit.audit.aggregates import aggregate
from mri_audit.audit.cautions import audit_warnings
from mri_audit.audit.panels import render_panels, worst_records
from mri_audit.files import SCHEMA_VERSION, atomic_write, to_jsonable, write_json
from mri_audit.fnaf.criteria import criterion_of
from mri_audit.report.records_csv import write_csv

__all__ = ["finish_audit", "build_results"]


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
        "files": {
            "records": "records.csv",
            "journal": "records.jsonl",
            "images": "audit_images.npz",
            "report": "report.html",
        },
    }


logger = logging.getLogger(__name__)


def finish_audit(
    out: Path,
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
) -> dict:
    """Write every final file of an audit (each atomically) and return the results.

    ``recovery_map`` (``run --map``) is the map section, stored under ``map`` in
    ``results.json`` and rendered in the report.

    ``results.json`` is written first with ``complete: false``, then the report, then
    ``results.json`` again with ``complete: true``: a kill in between leaves a folder that
    ``report`` and ``--resume`` know to be unfinished.
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
    arrays = render_panels(auditor, dataset, cases)
    mean_target = auditor.mean_target()
    if mean_target is not None:
        arrays["mean_target"] = mean_target.numpy().astype(np.float16)
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
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write(out / "audit_images.npz", buf.getvalue())
    # The fingerprint is the audit's (results.json holds it), not a per-row value.
    write_csv(out / "records.csv", [{k: v for k, v in r.items() if k != "audit"} for r in records])
    write_json(out / "results.json", results)
    from mri_audit.report.html import render_report

    render_report(out / "results.json", out / "report.html")
    results["complete"] = True
    write_json(out / "results.json", results)
    return results
