"""The self-contained HTML report of an audit (DESIGN §6).

Three separate steps: :func:`load_audit` reads the audit folder, :func:`build_context` turns it
into plain data (formatted strings and base64 figures), :func:`render_html` fills the jinja2
templates of the ``reports`` package (autoescaped, strict). :func:`render_report` does all three
and writes ``report.html`` atomically. The report loads nothing from the network.

The report reads the audit under the criterion its ``config`` names (DESIGN §4, version 2). A
``results.<criterion>.json`` written by ``mri-audit report --criterion`` (see
:mod:`mri_audit.audit.reread`) carries ``reread_from``; its per-slice records are re-read from
the journal by the caller (:func:`mri_audit.audit.reread.render_reread`) and passed in, rather
than taken from ``records.csv``: the report only renders, it never recomputes.
"""

from __future__ import annotations

import json
import shlex
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

from mri_audit.errors import DataError
from mri_audit.files import SCHEMA_VERSION, atomic_write
from mri_audit.fnaf.criteria import criterion_of
from mri_audit.report.method import SCORE_LABEL, fmt, methodology, num, pct, rate_cells, score_spec
from mri_audit.report.sections import record_figures, transfer_section, worst_cases

MODEL_KEYS = (
    "name spec kind source_sha256 weights weights_sha256 domain normalize parameters packages "
    "behaviour samples"
)
__all__ = ["AuditInputs", "load_audit", "build_context", "render_html", "render_report"]


@dataclass
class AuditInputs:
    """What an audit folder holds: results, per-slice records and images (the last two optional)."""

    path: Path
    results: dict
    records: Any = None  # pandas.DataFrame or None
    images: dict[str, np.ndarray] | None = None
    notes: list[str] = field(default_factory=list)
    criterion: Any = None  # the mri_audit.fnaf.criteria.Criterion the report reads the audit under
    reread_from: str | None = None  # the audit's own criterion, when this is a re-read


# ------------------------------------------------------------------------------------ loading


def resolve_results(path: str | Path) -> Path:
    """``path`` itself, or ``path/results.json`` when it is a folder."""
    path = Path(path)
    return path / "results.json" if path.is_dir() else path


def require_complete(path: str | Path) -> dict:
    """Refuse an audit whose final files were not all written (``complete`` is false).

    Returns:
        The checked ``results.json`` content.

    Raises:
        DataError: the audit was interrupted while writing its final files (exit 4).
    """
    path = resolve_results(path)
    results = load_results(path)
    if results.get("complete", True) is True:
        return results
    if results.get("reread_from") is not None:
        criterion = (results.get("config") or {}).get("criterion")
        raise DataError(
            f"the re-read {path} is incomplete: its report was not written; run mri-audit "
            f"report {path.parent} --criterion {criterion} (with the same thresholds) again"
        )
    failed = results.get("failed")
    why = (
        f"writing {failed.get('file')} failed ({failed.get('error')})"
        if isinstance(failed, dict)
        else "it was interrupted while writing its final files"
    )
    raise DataError(
        f"the audit in {path.parent} is incomplete: {why}; run the same command again with "
        "--resume to finish it"
    )


def load_results(path: Path) -> dict:
    """Read and check ``results.json``; any problem is one :class:`DataError` line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"results file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read results file {path}: {err}") from None
    try:
        results = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(results, dict) or "schema_version" not in results:
        raise DataError(f"{path} is not an mri-audit results file (no schema_version)")
    if results["schema_version"] != SCHEMA_VERSION:
        raise DataError(
            f"{path} has schema_version {results['schema_version']!r}; this version of "
            f"mri-audit reads schema_version {SCHEMA_VERSION}"
        )
    required = ("config", "models", "clean", "attacks", "verdict")
    if results.get("kind") == "map":  # `mri-audit map` (mri_audit.report.map_files)
        required = ("config", "models", "map")
    missing = [k for k in required if k not in results]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}")
    return results


def load_audit(
    results_path: str | Path,
    *,
    records: pd.DataFrame | None = None,
    records_note: str | None = None,
) -> AuditInputs:
    """Read ``results.json`` and, beside it, ``records.csv`` and ``audit_images.npz`` if any.

    Args:
        results_path: ``results.json`` (or a re-read ``results.<criterion>.json``), or its folder.
        records: a re-read's per-slice records (as ``records.csv``), re-read by the caller from
            the journal; a re-read given none has no per-slice plots.
        records_note: why a re-read's records are missing (shown in the report).
    """
    path = resolve_results(results_path)
    audit = AuditInputs(path, load_results(path))
    try:
        audit.criterion = criterion_of(audit.results["config"])
    except ValueError as err:
        raise DataError(f"{path}: {err}") from None
    audit.reread_from = audit.results.get("reread_from")
    files = audit.results.get("files") or {}
    if audit.reread_from is not None:
        if records is not None:
            audit.records = records
        else:
            why = records_note or "they were not given"
            audit.notes.append(
                f"The journal could not be re-read ({why}); per-slice plots omitted."
            )
    else:
        _load_csv_records(audit, path.parent / files.get("records", "records.csv"))
    images = path.parent / files.get("images", "audit_images.npz")
    try:
        with np.load(images, allow_pickle=False) as npz:
            audit.images = {k: np.asarray(npz[k], dtype=np.float32) for k in npz.files}
    except FileNotFoundError:
        audit.notes.append(
            f"{images.name} was not found: the worst-case image panels and the mean-anatomy "
            "backdrop of the heatmaps are omitted."
        )
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        audit.notes.append(f"{images.name} could not be read ({err}); image panels omitted.")
    return audit


def _load_csv_records(audit: AuditInputs, records: Path) -> None:

    from mri_audit.report.records_csv import read_records_csv

    try:
        audit.records = read_records_csv(records)
    except FileNotFoundError:
        audit.notes.append(
            f"{records.name} was not found beside {audit.path.name}: the location heatmaps, score "
            "distributions and evidence-vs-recovery plots need the per-slice records and are "
            "omitted."
        )
    except (OSError, ValueError) as err:
        audit.notes.append(f"{records.name} could not be read ({err}); per-slice plots omitted.")


# ---------------------------------------------------------------------------- formatting


# --------------------------------------------------------------------------- plain data


def _attack_rows(results: dict, limit: float | None, criterion: str) -> list[dict]:
    """One display row per (model, attack): FNAF rates and means, or a degradation summary."""
    rows = []
    for model, by_attack in results["attacks"].items():
        for attack, a in by_attack.items():
            row = {"model": model, "attack": attack, "kind": a.get("kind", "fnaf")}
            row["slices"] = a.get("slices", 0)
            if row["kind"] == "fnaf":
                mean = {q: (a.get(q) or {}).get("mean") for q in ("score", "r", "r0", "e")}
                row.update(
                    found=a.get("found", 0),
                    attack_rate=rate_cells(a.get("attack_rate"), limit),
                    ip_acceptance=rate_cells(a.get("ip_acceptance")),
                    control_rate=rate_cells(a.get("control_rate")),
                    score_mean=num(mean["score"], score_spec(criterion)),
                    r_mean=num(mean["r"], ".3f"),
                    r0_mean=num(mean["r0"], ".3f"),
                    e_mean=num(mean["e"], ".3f"),
                    control_mean=num((a.get("control_loss") or {}).get("mean")),
                )
            else:
                changes = []
                for key, label, spec, unit in (
                    ("ssim", "SSIM", ".4f", ""),
                    ("nmse", "NMSE", ".4f", ""),
                    ("psnr", "PSNR", ".2f", " dB"),
                ):
                    before = (a.get(f"{key}_clean") or {}).get("mean")
                    after = (a.get(f"{key}_adv") or {}).get("mean")
                    changes.append(f"{label} {num(before, spec)} → {num(after, spec)}{unit}")
                pert = (a.get("perturbation") or {}).get("mean")
                row.update(changes=changes, perturbation=num(pert, ".2e"))
            rows.append(row)
    return rows


def _verdict(results: dict, criterion) -> dict:
    v = results["verdict"]
    worst, limit = v.get("worst"), v.get("max_attack_rate")
    by_attack = results["attacks"].get((worst or {}).get("model")) or {}
    ci = rate_cells((by_attack.get((worst or {}).get("attack")) or {}).get("attack_rate"))
    status = v.get("status") or {True: "pass", False: "fail"}.get(v.get("passed"), "none")
    labels = {"pass": "PASS", "fail": "FAIL", "inconclusive": "INCONCLUSIVE"}
    label = labels.get(status, "NO THRESHOLD" if worst else "NO RESULT")
    limit = None if limit is None else pct(limit)
    return dict(
        status=status,
        label=label,
        model=v.get("model"),
        worst=worst,
        rate=ci,
        limit=limit,
        criterion=criterion.name,
        rule=criterion.describe(),
        reason=v.get("reason", ""),
    )


# Attacks whose candidates do not depend on the criterion: their re-read equals a fresh audit.
CRITERION_FREE = ("fnaf-rs",)


def _reread(audit: AuditInputs) -> dict | None:
    """What a re-read report must say about itself (None for an audit's own report)."""
    if audit.reread_from is None:
        return None
    fnaf = [
        a
        for by in audit.results["attacks"].values()
        for a, agg in by.items()
        if agg.get("kind", "fnaf") == "fnaf"
    ]
    fnaf = list(dict.fromkeys(fnaf))
    return {
        "audit": audit.reread_from,
        "criterion": audit.criterion.name,
        "same": audit.reread_from == audit.criterion.name,
        "free": [a for a in fnaf if a in CRITERION_FREE],
        "searched": [a for a in fnaf if a not in CRITERION_FREE],
        "params": {k: fmt(v) for k, v in audit.criterion.params().items()},
    }


def build_context(audit: AuditInputs) -> dict:
    """Everything the template shows, as plain data (strings, numbers, base64 PNGs)."""
    r = audit.results
    config = r["config"]
    names = [m["name"] for m in r["models"]]
    shapes = (r.get("data") or {}).get("target_shapes") or []
    shape = tuple(shapes[0]) if shapes else None
    figs = dict.fromkeys(("heatmap", "histogram", "scatter", "curves", "ecdf", "volumes"))
    if audit.records is not None:
        figs |= record_figures(audit)
    from mri_audit.report.curves import budget_figure

    figs["budget"] = budget_figure(r, names)
    if len(names) > 1:
        transfer_tables, transfer_fig = transfer_section(r, names)
    else:
        transfer_tables, transfer_fig = [], None
    clean = [
        {"model": m, "volumes": c.get("volumes"), "slices": c.get("slices")}
        | {
            k: num(c.get(k), spec)
            for k, spec in (("ssim", ".4f"), ("nmse", ".4f"), ("psnr", ".2f"))
        }
        for m, c in r["clean"].items()
    ]
    data = r.get("data") or {}
    elapsed = r.get("elapsed_seconds")
    crit = audit.criterion
    window = r.get("window_fraction") or config.get("window")
    return {
        "tool": r.get("tool", "mri-audit"),
        "version": (r.get("versions") or {}).get("mri_audit", "unknown"),
        "created": r.get("created", "unknown"),
        "device": r.get("device", "unknown"),
        "elapsed": num(elapsed, ".1f") + " s" if elapsed is not None else "n/a",
        "models": [
            {k: m.get(k) for k in MODEL_KEYS.split()}
            | {"weights_name": Path(m["weights"]).name if m.get("weights") else None}
            for m in r["models"]
        ],
        "names": names,
        "data": {k: data.get(k, "unknown") for k in ("kind", "source", "volumes", "slices")},
        "verdict": _verdict(r, crit),
        "reread": _reread(audit),
        "clean": clean,
        "attack_rows": _attack_rows(r, r["verdict"].get("max_attack_rate"), crit.name),
        "warnings": list(r.get("warnings") or []),
        "data_files": list((r.get("data") or {}).get("files") or []),
        "paired": [p | {"p_value": num(p.get("p_value"), ".3g")} for p in (r.get("paired") or [])],
        "score_label": SCORE_LABEL[crit.name],
        "figures": figs,
        "transfer_tables": transfer_tables,
        "transfer_figure": transfer_fig,
        "worst_cases": worst_cases(audit, names),
        "method": methodology(config, window, shape, crit, audit.reread_from),
        "command_line": shlex.join(str(a) for a in r.get("command_line") or []),
        "versions": r.get("versions") or {},
        "notes": list(audit.notes),
        "failures": r.get("failures") or {"skipped": 0, "errors": 0, "slices": []},
        "recovery_map": _map_section(r),
        "evidence": _evidence(r),
    }


def _evidence(results: dict) -> dict | None:
    """The journal's chain head the report shows (None for results written without one)."""
    chain = results.get("chain")
    if not isinstance(chain, dict) or not isinstance(chain.get("head"), str):
        return None
    return {
        "lines": chain.get("lines"),
        "head": chain["head"],
        "folder": chain.get("folder") or "AUDIT_FOLDER",
    }


def _map_section(results: dict) -> dict | None:
    """The feature-recovery map section (``run --map``), or None."""
    if not results.get("map"):
        return None
    from mri_audit.report.map_figures import map_context

    return map_context(results["map"])


# ------------------------------------------------------------------------------ rendering


def render_html(context: dict, template: str = "report.html") -> str:
    """Fill the report templates (autoescaped; a missing value is an error, not a blank)."""
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    env = Environment(
        loader=PackageLoader("reports", "templates"),
        autoescape=select_autoescape(["html"], default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template(template).render(**context)


def render_report(
    results_path: str | Path,
    out_path: str | Path | None = None,
    *,
    records: pd.DataFrame | None = None,
    records_note: str | None = None,
) -> Path:
    """Render the HTML report of the audit whose ``results.json`` is ``results_path``.

    Args:
        results_path: ``results.json`` (or a re-read ``results.<criterion>.json``), or the audit
            folder holding ``results.json``.
        out_path: where to write (default: the ``files.report`` the results name, beside them:
            ``report.html``, or ``report.<criterion>.html`` for a re-read).
        records, records_note: a re-read's per-slice records (see :func:`load_audit`).

    Returns:
        the path written.

    Raises:
        DataError: ``results.json`` is missing, not JSON, or of an unknown schema version.
    """
    path = resolve_results(results_path)
    results = load_results(path)
    if results.get("kind") == "map":
        from mri_audit.report.map_files import render_map_report

        return render_map_report(results, out_path or path.parent / "report.html")
    audit = load_audit(path, records=records, records_note=records_note)
    name = (audit.results.get("files") or {}).get("report") or "report.html"
    out = Path(out_path) if out_path is not None else audit.path.parent / Path(name).name
    html = render_html(build_context(audit))
    atomic_write(out, html.encode("utf-8"))
    return out
