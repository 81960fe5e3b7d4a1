"""The files of ``mri-audit map``: ``map.csv``, ``results.json`` (``"kind": "map"``) and the
self-contained ``report.html``.

A map's ``results.json`` shares the audit's envelope (schema version, tool, provenance of the
models, data and code, command line, versions) and holds the map under ``"map"`` (see
:func:`mri_audit.audit.recovery_map.recovery_map`); an audit's ``results.json`` may hold a ``"map"``
section too (``mri-audit run --map``), which its report then shows.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mri_audit.files import SCHEMA_VERSION, atomic_write, write_json
from mri_audit.report.records_csv import spreadsheet_safe

__all__ = [
    "MAP_FILES",
    "MAP_KIND",
    "map_rows",
    "write_map_csv",
    "map_results",
    "render_map_report",
    "write_map",
]

MAP_KIND = "map"
MAP_FILES = ("map.csv", "results.json", "report.html")


def map_rows(section: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One flat row per (model, cell) of a map section (the rows of ``map.csv``)."""
    units = (section.get("grid") or {}).get("size_units") or {}
    rows = []
    for c in section["cells"]:
        r, r0, e = c["r"], c["r0"], c["erasure"]
        rows.append(
            {
                "model": c["model"],
                "shape": c["shape"],
                "size": c["size"],
                "size_unit": units.get(c["shape"], ""),
                "contrast": c["contrast"],
                "features": c["n"],
                "volumes": c["clusters"],
                "r_mean": r["mean"],
                "r_low": r["low"],
                "r_high": r["high"],
                "r0_mean": r0["mean"],
                "r0_low": r0["low"],
                "r0_high": r0["high"],
                "erasure_rate": e["value"],
                "erasure_low": e["low"],
                "erasure_high": e["high"],
                "erasure_hits": e["count"],
            }
        )
    return rows


def write_map_csv(path: str | Path, section: Mapping[str, Any]) -> None:
    """``map.csv``: one row per model × cell, spreadsheet-safe, written atomically."""
    import pandas as pd

    frame = spreadsheet_safe(pd.DataFrame(map_rows(section)))
    atomic_write(path, frame.to_csv(index=False, lineterminator="\r\n").encode("utf-8"))


def map_results(
    *,
    section: dict,
    config: dict,
    models: Sequence[dict],
    data: dict,
    code: dict | None,
    command_line: Sequence[str],
    versions: dict,
    device: str,
    elapsed: float,
    started: str,
) -> dict[str, Any]:
    """The ``results.json`` document of a map (plain data)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": "mri-audit",
        "kind": MAP_KIND,
        "complete": False,
        "created": started,
        "command_line": list(command_line),
        "config": config,
        "versions": versions,
        "device": device,
        "elapsed_seconds": elapsed,
        "data": data,
        "models": list(models),
        "code": code,
        "map": section,
        "files": {"map": "map.csv", "report": "report.html"},
    }


def _context(results: Mapping[str, Any]) -> dict[str, Any]:
    from mri_audit.report.map_figures import map_context

    config = results.get("config") or {}
    data = results.get("data") or {}
    elapsed = results.get("elapsed_seconds")
    cf = config.get("center_fraction")
    return {
        "tool": results.get("tool", "mri-audit"),
        "version": (results.get("versions") or {}).get("mri_audit", "unknown"),
        "created": results.get("created", "unknown"),
        "device": results.get("device", "unknown"),
        "elapsed": "n/a" if elapsed is None else f"{elapsed:.1f} s",
        "names": [m["name"] for m in results["models"]],
        "models": [
            {
                k: m.get(k)
                for k in ("name", "spec", "kind", "domain", "weights", "weights_sha256")
                + ("source_sha256", "parameters")
            }
            | {"weights_name": Path(m["weights"]).name if m.get("weights") else None}
            for m in results["models"]
        ],
        "data": {k: data.get(k, "unknown") for k in ("kind", "source", "volumes", "slices")},
        "mask": {
            "mask_type": config.get("mask_type", "random"),
            "accel": format(config.get("accel", 4.0), "g"),
            "center_fraction": "default" if cf is None else format(cf, "g"),
        },
        "command_line": shlex.join(str(a) for a in results.get("command_line") or []),
        "versions": results.get("versions") or {},
        "recovery_map": map_context(results["map"]),
    }


def render_map_report(results: Mapping[str, Any], out: str | Path) -> Path:
    """Render a map's ``report.html`` from its results (autoescaped, strict) and write it
    atomically."""
    from mri_audit.report.html import render_html

    html = render_html(_context(results), template="map_report.html")
    out = Path(out)
    atomic_write(out, html.encode("utf-8"))
    return out


def write_map(out: Path, results: dict, *, sign: str | Path | None = None) -> None:
    """Write ``map.csv``, ``results.json`` (``complete: false``), ``report.html``, then
    ``results.json`` again with ``complete: true`` and the files' SHA-256 (``manifest``), each
    atomically; with ``sign`` (an Ed25519 private key) the manifest is signed into
    ``signature.json``."""
    from mri_audit.evidence.manifest import MAP_OUTPUTS, file_digests

    write_map_csv(out / "map.csv", results["map"])
    write_json(out / "results.json", results)
    render_map_report(results, out / "report.html")
    results["manifest"] = file_digests(out, MAP_OUTPUTS)
    results["complete"] = True
    write_json(out / "results.json", results)
    if sign is not None:
        from mri_audit.evidence.attest import sign_folder

        sign_folder(out, sign)
