"""Figures and display data of the feature-recovery map (the report's map section).

:func:`map_context` turns a map (the plain data of
:func:`mri_audit.audit.recovery_map.recovery_map`,
``results["map"]``) into what ``reports/templates/map_section.html`` shows: heatmaps of the mean
recovery ``r`` and of the erasure rate over size × contrast (one panel per model, one colour scale
for every model and shape), the contrast-detail curves of every model on one plot per shape with
the zero-filled evidence curve, and the same curves as a table. Figures are base64 PNGs drawn with
the report's figure helpers (:mod:`mri_audit.report.figures`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import rc_context
from matplotlib.colors import LinearSegmentedColormap

from mri_audit.report.figures import PALETTE, STYLE, _figure, _grid, _png, _short

__all__ = ["heatmap_figure", "curve_figure", "map_context"]

RECOVERY_MAP = LinearSegmentedColormap.from_list(
    "recovery", ["#3b0f70", "#8c2981", "#de4968", "#fe9f6d", "#fcfdbf"]
)
ERASURE_MAP = LinearSegmentedColormap.from_list(
    "erasure", ["#f7f7f7", "#fcbba1", "#fb6a4a", "#cb181d", "#67000d"]
)
EVIDENCE_STYLE = {"color": "#444444", "linestyle": "--", "marker": "x"}


def _label(value: float) -> str:
    return f"{value:g}"


def heatmap_figure(
    panels: Mapping[str, np.ndarray],
    *,
    sizes: Sequence[float],
    contrasts: Sequence[float],
    size_label: str,
    quantity: str,
    percent: bool = False,
    ncols: int = 2,
) -> str:
    """One heatmap per model over size (rows, smallest at the bottom) × contrast (columns), every
    panel on the colour scale [0, 1], each cell annotated with its value.

    Args:
        panels: model name -> values (NaN: none).
        sizes, contrasts: the axes, ascending.
        size_label: the size axis label (e.g. ``radius (px)``).
        quantity: the colour bar's label.
        percent: annotate as percentages (rates) rather than two decimals (means).
        ncols: panels per row.

    Shape:
        each value array: ``(sizes, contrasts)``.
    """
    cmap = ERASURE_MAP if percent else RECOVERY_MAP
    ncols = max(1, min(ncols, len(panels)))
    nrows = -(-len(panels) // ncols)
    with rc_context(STYLE):
        fig = _figure(3.3 * ncols + 0.9, 2.7 * nrows + 0.3)
        axes = _grid(fig, len(panels), ncols)
        image = None
        for ax, (title, values) in zip(axes, panels.items(), strict=True):
            values = np.asarray(values, dtype=np.float64)
            image = ax.imshow(
                np.ma.masked_invalid(values),
                cmap=cmap,
                vmin=0,
                vmax=1,
                origin="lower",
                aspect="auto",
                interpolation="nearest",
            )
            for (i, j), v in np.ndenumerate(values):
                if not np.isfinite(v):
                    text, colour = "n/a", "#666666"
                else:
                    text = f"{v:.0%}" if percent else f"{v:.2f}"
                    dark = v > 0.55 if percent else v < 0.45
                    colour = "white" if dark else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=6.5, color=colour)
            ax.set_xticks(range(len(contrasts)), [_label(c) for c in contrasts], rotation=45)
            ax.set_yticks(range(len(sizes)), [_label(s) for s in sizes])
            ax.set_xlabel("contrast (share of the range)")
            ax.set_ylabel(size_label)
            ax.set_title(_short(title, 36))
        if image is not None:
            fig.colorbar(image, ax=axes, shrink=0.85, label=quantity)
        return _png(fig)


def curve_figure(
    curves: Mapping[str, Mapping[str, Sequence[float | None]]],
    evidence: Mapping[str, Sequence[float | None]],
    *,
    shapes: Sequence[str],
    sizes: Mapping[str, Sequence[float]],
    size_labels: Mapping[str, str],
    contrasts: Sequence[float],
    threshold: float,
) -> str:
    """Contrast-detail curves: per shape, the smallest size each model recovers (mean
    ``r >= threshold``) at each contrast, every model on one plot, the zero-filled evidence curve
    (mean ``r₀ >= threshold``) dashed beside them; "none" (no size reached it) is the top row.

    Args:
        curves: model -> shape -> smallest size per contrast (None: none).
        evidence: shape -> the same for ``r₀``.
        shapes: the panels.
        sizes: shape -> its sizes, ascending (the rows; evenly spaced).
        size_labels: shape -> size axis label.
        contrasts: the columns (evenly spaced).
        threshold: the recovery threshold (for the title).
    """
    n_lines = len(curves) + 1
    spread = 0.24
    offsets = np.linspace(-spread / 2, spread / 2, n_lines) if n_lines > 1 else np.zeros(1)
    x = np.arange(len(contrasts))
    with rc_context(STYLE):
        fig = _figure(3.1 * len(shapes) + 0.4, 3.6)
        axes = _grid(fig, len(shapes), len(shapes))
        for ax, shape in zip(axes, shapes, strict=True):
            rows = list(sizes[shape])
            none_row = len(rows)

            def level(value, rows=rows, none_row=none_row):
                return none_row if value is None else rows.index(value)

            lines = [
                (m, curves[m][shape], {"color": PALETTE[i % len(PALETTE)], "marker": "o"})
                for i, m in enumerate(curves)
            ]
            lines.append(("zero-filled evidence r₀", evidence.get(shape, []), EVIDENCE_STYLE))
            for k, (label, values, style) in enumerate(lines):
                if len(values) != len(contrasts):
                    continue
                y = np.array([level(v) for v in values], dtype=float) + offsets[k]
                ax.plot(x, y, lw=1.4, ms=4.5, label=_short(label, 30), **style)
            ax.axhspan(none_row - 0.5, none_row + 0.5, color="#eeeeee", zorder=0)
            ax.set_xticks(x, [_label(c) for c in contrasts], rotation=45)
            ax.set_yticks(range(none_row + 1), [_label(s) for s in rows] + ["none"])
            ax.set_ylim(-0.6, none_row + 0.6)
            ax.set_xlabel("contrast (share of the range)")
            ax.set_ylabel(f"smallest {size_labels.get(shape, 'size')}")
            ax.set_title(f"{shape}: smallest with mean r ≥ {threshold:g}")
            ax.grid(True, axis="both", color="#dddddd", lw=0.6)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)))
        return _png(fig)


def _panel(cells: Sequence[dict], model: str, shape: str, sizes, contrasts, key) -> np.ndarray:
    values = np.full((len(sizes), len(contrasts)), np.nan)
    where = {(c["size"], c["contrast"]): c for c in cells if c["model"] == model}
    for i, z in enumerate(sizes):
        for j, c in enumerate(contrasts):
            v = key(where.get((z, c))) if (z, c) in where else None
            values[i, j] = np.nan if v is None else v
    return values


def _interval(stat: dict | None, spec: str = ".2f") -> str:
    if not stat or stat.get("low") is None:
        return ""
    return f"[{stat['low']:{spec}}, {stat['high']:{spec}}]"


def map_context(section: Mapping[str, Any]) -> dict[str, Any]:
    """The map section of a report as plain display data (strings and base64 PNGs).

    Args:
        section: ``results["map"]`` (see :func:`mri_audit.audit.recovery_map.recovery_map`).
    """
    grid = section["grid"]
    shapes, contrasts = grid["shapes"], grid["contrasts"]
    sizes, units = grid["sizes"], grid.get("size_units") or {}
    models = section["models"]
    cells = section["cells"]
    heatmaps = []
    for shape in shapes:
        of_shape = [c for c in cells if c["shape"] == shape]
        common = dict(sizes=sizes[shape], contrasts=contrasts, size_label=units.get(shape, "size"))
        r_panels = {
            m: _panel(of_shape, m, shape, sizes[shape], contrasts, lambda c: c["r"]["mean"])
            for m in models
        }
        e_panels = {
            m: _panel(of_shape, m, shape, sizes[shape], contrasts, lambda c: c["erasure"]["value"])
            for m in models
        }
        heatmaps.append(
            {
                "shape": shape,
                "unit": units.get(shape, "size"),
                "recovery": heatmap_figure(r_panels, quantity="mean recovery r", **common),
                "erasure": heatmap_figure(
                    e_panels, quantity="erasure rate", percent=True, **common
                ),
            }
        )
    threshold = grid.get("threshold", 0.5)
    curves_png = curve_figure(
        section["curves"],
        section.get("evidence") or {},
        shapes=shapes,
        sizes=sizes,
        size_labels=units,
        contrasts=contrasts,
        threshold=threshold,
    )

    def show(values):
        return ["—" if v is None else _label(v) for v in values]

    tables = []
    for shape in shapes:
        rows = [{"name": m, "values": show(section["curves"][m][shape])} for m in models]
        evidence = (section.get("evidence") or {}).get(shape)
        if evidence is not None:
            rows.append({"name": "zero-filled evidence (r₀)", "values": show(evidence)})
        tables.append({"shape": shape, "unit": units.get(shape, "size"), "rows": rows})
    relative = section.get("relative_curves") or {}
    relative_tables = [
        {
            "shape": shape,
            "unit": units.get(shape, "size"),
            "rows": [{"name": m, "values": show(relative[m][shape])} for m in models],
        }
        for shape in shapes
        if relative and all(m in relative for m in models)
    ]
    cell_rows = [
        {
            "model": c["model"],
            "shape": c["shape"],
            "size": _label(c["size"]),
            "contrast": _label(c["contrast"]),
            "r": "n/a" if c["r"]["mean"] is None else f"{c['r']['mean']:.3f}",
            "r_ci": _interval(c["r"]),
            "r0": "n/a" if c["r0"]["mean"] is None else f"{c['r0']['mean']:.3f}",
            "erasure": "n/a" if c["erasure"]["value"] is None else f"{c['erasure']['value']:.0%}",
            "erasure_ci": _interval(
                {"low": c["erasure"]["low"], "high": c["erasure"]["high"]}, ".0%"
            )
            if c["erasure"]["value"] is not None
            else "",
            "n": c["n"],
        }
        for c in cells
    ]
    return {
        "models": list(models),
        "shapes": list(shapes),
        "sizes": {s: ", ".join(_label(v) for v in sizes[s]) for s in shapes},
        "units": {s: units.get(s, "size") for s in shapes},
        "contrasts": [_label(c) for c in contrasts],
        "draws": grid["draws"],
        "width": _label(grid.get("width", 1.0)),
        "seed": grid.get("seed", 0),
        "margin": _label(grid.get("margin", 0.1)),
        "threshold": _label(threshold),
        "window": _label(grid.get("window", 0.375)),
        "volumes": section.get("volumes"),
        "slices": section.get("slices"),
        "features": section.get("features_scored"),
        "curves_figure": curves_png,
        "curve_tables": tables,
        "relative_tables": relative_tables,
        "heatmaps": heatmaps,
        "cell_count": len(cells),
        "cells": cell_rows,
    }
