"""The self-contained HTML report of an audit (DESIGN §6).

Three separate steps: :func:`load_audit` reads the audit folder, :func:`build_context` turns it
into plain data (formatted strings and base64 figures), :func:`render_html` fills the jinja2
templates of the ``reports`` package (autoescaped, strict). :func:`render_report` does all three
and writes ``report.html`` atomically. The report loads nothing from the network.
"""

from __future__ import annotations

import json
import math
import shlex
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mri_audit.errors import DataError
from mri_audit.results import SCHEMA_VERSION, atomic_write

MODEL_KEYS = "name spec kind source_sha256 weights weights_sha256 domain normalize parameters"
__all__ = ["AuditInputs", "load_audit", "build_context", "render_html", "render_report"]


@dataclass
class AuditInputs:
    """What an audit folder holds: results, per-slice records and images (the last two optional)."""

    path: Path
    results: dict
    records: Any = None  # pandas.DataFrame or None
    images: dict[str, np.ndarray] | None = None
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------ loading


def resolve_results(path: str | Path) -> Path:
    """``path`` itself, or ``path/results.json`` when it is a folder."""
    path = Path(path)
    return path / "results.json" if path.is_dir() else path


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
    missing = [k for k in ("config", "models", "clean", "attacks", "verdict") if k not in results]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}")
    return results


def load_audit(results_path: str | Path) -> AuditInputs:
    """Read ``results.json`` and, beside it, ``records.csv`` and ``audit_images.npz`` if any."""
    import pandas as pd

    path = resolve_results(results_path)
    audit = AuditInputs(path, load_results(path))
    files = audit.results.get("files") or {}
    records = path.parent / files.get("records", "records.csv")
    try:
        audit.records = pd.read_csv(records, dtype={"model": str, "attack": str, "volume": str})
    except FileNotFoundError:
        audit.notes.append(
            f"{records.name} was not found beside {path.name}: the location heatmaps, loss "
            "distributions and loss-vs-IP plots need the per-slice records and are omitted."
        )
    except (OSError, ValueError) as err:
        audit.notes.append(f"{records.name} could not be read ({err}); per-slice plots omitted.")
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


# ---------------------------------------------------------------------------- formatting


def pct(v: float | None) -> str:
    """``12.5%``, or ``n/a``."""
    return "n/a" if v is None else f"{v:.1%}"


def num(v: float | None, spec: str = ".2e") -> str:
    """A number formatted with ``spec``, or ``n/a`` for None / non-finite."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return format(v, spec)


def rate(r: dict | None, limit: float | None = None) -> dict:
    """A Wilson-rated dict as display strings: value, 95% CI and count/total."""
    r = r or {}
    value = r.get("value")
    return {
        "value": pct(value),
        "ci": "" if value is None else f"[{pct(r['low'])}, {pct(r['high'])}]",
        "frac": f"{r.get('count', 0)}/{r.get('total', 0)}",
        "over": limit is not None and value is not None and value > limit,
    }


# --------------------------------------------------------------------------- plain data


def _window(spec, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The feature window (as :func:`mri_audit.features.make_window`, without torch)."""
    h, w = shape
    if isinstance(spec, (int, float)):
        wh, ww = max(1, round(h * float(spec))), max(1, round(w * float(spec)))
        return (h - wh) // 2, (w - ww) // 2, wh, ww
    top, left, wh, ww = (int(v) for v in spec)
    return top, left, wh, ww


def _frame_groups(frame) -> dict[tuple[str, str], Any]:
    """FNAF records grouped by (model, attack), with numeric and boolean columns coerced."""
    import pandas as pd

    frame = frame.copy()
    for col in ("loss", "control", "ip", "rho", "row", "col"):
        frame[col] = pd.to_numeric(frame.get(col), errors="coerce")
    for col in ("hit", "found"):
        frame[col] = frame[col].astype(str).str.strip().str.lower().isin(("true", "1", "1.0"))
    if "kind" in frame:
        frame = frame[frame["kind"].astype(str) == "fnaf"]
    groups = {}
    for (model, attack), rows in frame.groupby(["model", "attack"], sort=False):
        groups[(str(model), str(attack))] = rows
    return groups


def _record_figures(audit: AuditInputs, threshold: float, epsilon: float) -> dict:
    from mri_audit import figures

    r, out = audit.results, {}
    try:
        groups = _frame_groups(audit.records)
    except (KeyError, TypeError, ValueError) as err:
        audit.notes.append(f"records.csv lacks expected columns ({err}); per-slice plots omitted.")
        return out
    if not groups:
        return out
    mean = (audit.images or {}).get("mean_target")
    shapes = (r.get("data") or {}).get("target_shapes") or []
    shape = tuple(mean.shape) if mean is not None else (tuple(shapes[0]) if shapes else None)
    titles = {key: f"{key[0]} · {key[1]}" for key in groups}
    ncols = len({attack for _, attack in groups})  # one row per model
    if shape is not None and r.get("window_fraction") is not None:
        hits = {
            titles[k]: (g["row"][g["hit"]].dropna(), g["col"][g["hit"]].dropna())
            for k, g in groups.items()
        }
        window = _window(r["window_fraction"], shape)
        out["heatmap"] = figures.location_heatmaps(
            hits, window=window, shape=shape, background=mean, ncols=ncols
        )
    else:
        audit.notes.append("The target shape or window is unknown; location heatmaps omitted.")
    found = {k: g[g["found"]] for k, g in groups.items()}
    out["loss"] = figures.loss_histograms(
        {titles[k]: (g["loss"].to_numpy(), g["control"].to_numpy()) for k, g in found.items()},
        threshold=threshold,
        ncols=ncols,
    )
    scatter: dict[str, dict] = {}
    for (model, attack), g in found.items():
        scatter.setdefault(model, {})[attack] = (
            g["ip"].to_numpy(),
            g["loss"].to_numpy(),
            g["hit"].to_numpy(),
        )
    out["scatter"] = figures.loss_ip_scatter(scatter, threshold=threshold, epsilon=epsilon)
    return out


def _attack_rows(results: dict, limit: float | None) -> list[dict]:
    rows = []
    for model, by_attack in results["attacks"].items():
        for attack, a in by_attack.items():
            row = {"model": model, "attack": attack, "kind": a.get("kind", "fnaf")}
            row["slices"] = a.get("slices", 0)
            if row["kind"] == "fnaf":
                loss = a.get("loss") or {}
                row.update(
                    found=a.get("found", 0),
                    attack_rate=rate(a.get("attack_rate"), limit),
                    ip_acceptance=rate(a.get("ip_acceptance")),
                    control_rate=rate(a.get("control_rate")),
                    loss_mean=num(loss.get("mean")),
                    loss_q05=num(loss.get("q05")),
                    loss_q50=num(loss.get("q50")),
                    loss_q95=num(loss.get("q95")),
                    ip_mean=num((a.get("ip_distance") or {}).get("mean")),
                    rho_mean=num((a.get("rho") or {}).get("mean"), ".3f"),
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


def _transfer(results: dict, names: list[str]) -> tuple[list[dict], str | None]:
    from mri_audit import figures

    tables, panels = [], {}
    transfer = results.get("transfer") or {}
    keys = (["all"] if "all" in transfer else []) + [k for k in transfer if k != "all"]
    for key in keys:
        cells = transfer[key]
        rates = np.full((len(names), len(names)), np.nan)
        totals = np.zeros((len(names), len(names)))
        rows = []
        for i, src in enumerate(names):
            row = []
            for j, tgt in enumerate(names):
                w = (cells.get(src) or {}).get(tgt)
                if w and w.get("value") is not None:
                    rates[i, j], totals[i, j] = w["value"], w["total"]
                row.append(None if src == tgt else rate(w))
            rows.append({"source": src, "cells": row})
        title = "all FNAF attacks" if key == "all" else key
        tables.append({"title": title, "targets": names, "rows": rows})
        panels[title] = (names, names, rates, totals)
    return tables, (figures.transfer_heatmaps(panels) if panels else None)


def _worst_cases(results: dict, images: dict | None, names: list[str]) -> list[dict]:
    from mri_audit import figures

    out = []
    for i, case in enumerate(results.get("worst_cases") or []):
        caption = {k: case.get(k) for k in ("model", "attack", "volume", "slice")}
        caption |= {
            "loss": num(case.get("loss")),
            "ip": num(case.get("ip")),
            "rho": num(case.get("rho"), ".3f"),
            "hit": bool(case.get("hit")),
        }
        keys = [f"case{i}_zero_filled", f"case{i}_target"]
        keys += [f"case{i}_model{j}" for j in range(len(names))]
        feature = case.get("feature") or {}
        figure = None
        if images is not None and all(k in images for k in keys) and feature.get("rows"):
            titles = ["zero-filled input", "ground truth + feature", *names]
            figure = figures.worst_case_panel(
                [(t, images[k]) for t, k in zip(titles, keys, strict=True)],
                rows=feature["rows"],
                cols=feature["cols"],
            )
        out.append({"index": i + 1, "caption": caption, "figure": figure})
    return out


def _methodology(config: dict, window, shape) -> dict:
    steps = config.get("feature_steps")
    if isinstance(steps, (list, tuple)):
        steps = f"{steps[0]}–{steps[1]} (drawn uniformly per feature)"
    accel = config.get("accel")
    cf = config.get("center_fraction")
    if cf is None and accel:
        default = {4: 0.08, 8: 0.04}.get(accel, 0.32 / accel)
        cf = f"{default:g} (fastMRI default for {accel:g}×)"
    if isinstance(window, (int, float)):
        win = f"a centred window of {window:g} of each side of the target"
        if shape:
            _, _, wh, ww = _window(window, shape)
            win += f" ({wh}×{ww} px of a {shape[0]}×{shape[1]} target)"
    else:
        win = f"the window (top, left, height, width) = {tuple(window or ())}"
    return {
        k: config.get(k) for k in ("candidates", "insert", "mask_type", "seed", "batch_size")
    } | {
        "tau": num(config.get("threshold"), "g"),
        "epsilon": num(config.get("ip_epsilon"), "g"),
        "steps": steps,
        "window": win,
        "accel": num(accel, "g"),
        "center_fraction": cf,
        "attacks": ", ".join(config.get("attacks", [])),
        "attack_options": json.dumps(config.get("attack_options") or {}, sort_keys=True),
    }


def _verdict(results: dict) -> dict:
    v = results["verdict"]
    worst, limit = v.get("worst"), v.get("max_attack_rate")
    by_attack = results["attacks"].get((worst or {}).get("model")) or {}
    ci = rate((by_attack.get((worst or {}).get("attack")) or {}).get("attack_rate"))
    status = {True: "pass", False: "fail"}.get(v.get("passed"), "none")
    label = {"pass": "PASS", "fail": "FAIL"}.get(status, "NO THRESHOLD" if worst else "NO RESULT")
    limit = None if limit is None else pct(limit)
    return dict(status=status, label=label, model=v.get("model"), worst=worst, rate=ci, limit=limit)


def build_context(audit: AuditInputs) -> dict:
    """Everything the template shows, as plain data (strings, numbers, base64 PNGs)."""
    r = audit.results
    config = r["config"]
    names = [m["name"] for m in r["models"]]
    threshold = float(config.get("threshold", r["verdict"].get("threshold")))
    epsilon = float(config.get("ip_epsilon"))
    shapes = (r.get("data") or {}).get("target_shapes") or []
    shape = tuple(shapes[0]) if shapes else None
    figs = dict.fromkeys(("heatmap", "loss", "scatter"))
    if audit.records is not None:
        figs |= _record_figures(audit, threshold, epsilon)
    if len(names) > 1:
        transfer_tables, transfer_fig = _transfer(r, names)
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
    return {
        "tool": r.get("tool", "mri-audit"),
        "version": (r.get("versions") or {}).get("mri_audit", "unknown"),
        "created": r.get("created", "unknown"),
        "device": r.get("device", "unknown"),
        "elapsed": num(elapsed, ".1f") + " s" if elapsed is not None else "n/a",
        "models": [{k: m.get(k) for k in MODEL_KEYS.split()} for m in r["models"]],
        "names": names,
        "data": {k: data.get(k, "unknown") for k in ("kind", "source", "volumes", "slices")},
        "verdict": _verdict(r),
        "clean": clean,
        "attack_rows": _attack_rows(r, r["verdict"].get("max_attack_rate")),
        "figures": figs,
        "transfer_tables": transfer_tables,
        "transfer_figure": transfer_fig,
        "worst_cases": _worst_cases(r, audit.images, names),
        "method": _methodology(config, r.get("window_fraction") or config.get("window"), shape),
        "command_line": shlex.join(str(a) for a in r.get("command_line") or []),
        "versions": r.get("versions") or {},
        "notes": list(audit.notes),
        "failures": r.get("failures") or {"skipped": 0, "errors": 0, "slices": []},
    }


# ------------------------------------------------------------------------------ rendering


def render_html(context: dict) -> str:
    """Fill the report templates (autoescaped; a missing value is an error, not a blank)."""
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    env = Environment(
        loader=PackageLoader("reports", "templates"),
        autoescape=select_autoescape(["html"], default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template("report.html").render(**context)


def render_report(results_path: str | Path, out_path: str | Path | None = None) -> Path:
    """Render the HTML report of the audit whose ``results.json`` is ``results_path``.

    Args:
        results_path: ``results.json``, or the audit folder holding it.
        out_path: where to write (default: ``report.html`` beside ``results.json``).

    Returns:
        the path written.

    Raises:
        DataError: ``results.json`` is missing, not JSON, or of an unknown schema version.
    """
    audit = load_audit(results_path)
    out = Path(out_path) if out_path is not None else audit.path.parent / "report.html"
    html = render_html(build_context(audit))
    atomic_write(out, html.encode("utf-8"))
    return out
