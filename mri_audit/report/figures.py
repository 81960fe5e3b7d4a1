"""Report figures: matplotlib ``Figure`` objects (Agg, no pyplot state) rendered to base64 PNG.

Every function takes plain arrays and returns a PNG as a base64 ``str``; the same inputs give the
same bytes (fixed size and dpi, no timestamps in the PNG metadata). The criterion-aware per-slice
distributions (score histograms, evidence-vs-recovery scatter) are in
:mod:`mri_audit.report.score_figures`.
"""

from __future__ import annotations

import base64
import io
import math
import re
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

__all__ = [
    "DPI",
    "location_heatmaps",
    "transfer_heatmaps",
    "worst_case_figure",
    "worst_case_panel",
    "feature_ticks",
]

DPI = 100
PALETTE = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2")
HEAT = LinearSegmentedColormap.from_list("hits", ["#fff3b0", "#f4a259", "#d62728", "#6a040f"])
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8}


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None}, facecolor="white")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _grid(fig: Figure, n: int, ncols: int) -> list:
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return axes[:n]


def _positive(values: np.ndarray, floor: float) -> np.ndarray:
    """Values for a log axis: non-finite dropped, non-positive clipped to ``floor``."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return np.maximum(v, floor)


def location_heatmaps(
    panels: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    window: tuple[int, int, int, int],
    shape: tuple[int, int],
    background: np.ndarray | None,
    cell: int = 8,
    ncols: int = 3,
) -> str:
    """Where the hits are: hit centroids binned on the window grid, over the mean anatomy.

    Args:
        panels: title -> (rows, cols) of the hit centroids (target pixel coordinates).
        window: ``(top, left, height, width)`` of the feature window.
        shape: ``(h, w)`` of the target.
        background: the mean target (drawn in grey), or None for a blank backdrop.
        cell: side of a bin in pixels.
        ncols: panels per row (e.g. the number of attacks, so that each row is a model).
    """
    top, left, wh, ww = window
    ny, nx = max(1, math.ceil(wh / cell)), max(1, math.ceil(ww / cell))
    margin = max(4, round(0.25 * max(wh, ww)))
    y0, y1 = max(0, top - margin), min(shape[0], top + wh + margin)
    x0, x1 = max(0, left - margin), min(shape[1], left + ww + margin)
    counts = []
    for rows, cols in panels.values():
        h, _, _ = np.histogram2d(
            np.asarray(rows, dtype=float),
            np.asarray(cols, dtype=float),
            bins=[ny, nx],
            range=[[top - 0.5, top + ny * cell - 0.5], [left - 0.5, left + nx * cell - 0.5]],
        )
        counts.append(h)
    vmax = max([1.0] + [float(h.max()) for h in counts])
    ncols = max(1, min(ncols, 4, len(panels)))
    nrows = math.ceil(len(panels) / ncols)
    with rc_context(STYLE):
        fig = _figure(3.2 * ncols + 0.8, 3.1 * nrows + 0.2)
        axes = _grid(fig, len(panels), ncols)
        image = None
        for ax, title, h in zip(axes, panels, counts, strict=True):
            if background is not None:
                bg = np.asarray(background, dtype=np.float32)
                ax.imshow(bg, cmap="gray", vmin=0, vmax=float(np.nanmax(bg)) or 1.0)
            else:
                ax.imshow(np.zeros(shape, dtype=np.float32), cmap="gray", vmin=0, vmax=1)
            extent = (left - 0.5, left + nx * cell - 0.5, top + ny * cell - 0.5, top - 0.5)
            masked = np.ma.masked_equal(h, 0)
            image = ax.imshow(
                masked,
                cmap=HEAT,
                vmin=0,
                vmax=vmax,
                extent=extent,
                alpha=0.85,
                interpolation="nearest",
            )
            ax.add_patch(
                Rectangle((left - 0.5, top - 0.5), ww, wh, fill=False, ec="#4cc9f0", lw=1.2)
            )
            ax.set_xlim(x0 - 0.5, x1 - 0.5)
            ax.set_ylim(y1 - 0.5, y0 - 0.5)
            ax.set_title(f"{_short(title, 40)}  ({_count(h.sum(), 'hit')})")
            ax.set_xticks([])
            ax.set_yticks([])
        if image is not None:
            cbar = fig.colorbar(image, ax=axes, shrink=0.8)
            cbar.set_label(f"hits per {cell}×{cell} px cell")
            cbar.locator = MaxNLocator(integer=True)
            cbar.update_ticks()
        return _png(fig)


def transfer_heatmaps(
    panels: Mapping[str, tuple[Sequence[str], Sequence[str], np.ndarray, np.ndarray]],
) -> str:
    """Transfer matrices: source rows, target columns, each cell the share of hits that transfer.

    Args:
        panels: title -> (source names, target names, rates (nan: none), replay counts).
    """
    ncols = min(4, len(panels))
    first = next(iter(panels.values()))
    labels = [_wrap(n) for n in (*first[0], *first[1])]
    extra = 0.09 * max(len(line) for label in labels for line in label.split("\n"))
    side = 0.8 * max(len(first[0]), len(first[1])) + 1.2 + extra
    with rc_context(STYLE):
        fig = _figure(side * ncols + 0.6, side * math.ceil(len(panels) / ncols))
        image = None
        for ax, (title, (sources, targets, rates, totals)) in zip(
            _grid(fig, len(panels), ncols), panels.items(), strict=True
        ):
            rates = np.asarray(rates, dtype=float)
            image = ax.imshow(np.ma.masked_invalid(rates), cmap="Reds", vmin=0, vmax=1)
            for (i, j), v in np.ndenumerate(rates):
                if sources[i] == targets[j]:
                    text, col = "—", "#666666"
                elif math.isnan(v):
                    text, col = "n/a", "#666666"
                else:
                    text = f"{v:.0%}\n{_count(totals[i, j], 'hit')}"
                    col = "white" if v > 0.6 else "black"
                ax.text(j, i, text, ha="center", va="center", color=col, fontsize=8)
            ax.set_xticks(range(len(targets)), [_wrap(t) for t in targets], rotation=90)
            ax.set_yticks(range(len(sources)), [_wrap(s) for s in sources])
            ax.set_xlabel("target model")
            ax.set_ylabel("source model")
            ax.set_title(_short(title, 40))
        if image is not None:
            fig.colorbar(image, ax=fig.axes, shrink=0.8, label="transfer rate")
        return _png(fig)


def feature_ticks(
    rows: Sequence[int], cols: Sequence[int], *, gap: float = 1.5, length: float = 3.0
) -> np.ndarray:
    """Corner ticks around a pixel support: segments ``(8, 2, 2)`` of (x, y) points.

    The ticks lie on the support's bounding box grown by ``gap`` pixels on every side, so they
    mark the feature beside it and never cover one of its pixels (pixel ``(r, c)`` spans
    ``[c − ½, c + ½] × [r − ½, r + ½]``).

    Args:
        rows, cols: the support (pixel coordinates).
        gap: clearance between the support's outer pixel edges and the ticks, in pixels.
        length: length of each tick arm, in pixels (at most a third of the box's side, so the
            corners stay apart).
    """
    y0, y1 = min(rows) - 0.5 - gap, max(rows) + 0.5 + gap
    x0, x1 = min(cols) - 0.5 - gap, max(cols) + 0.5 + gap
    length = min(length, (x1 - x0) / 3, (y1 - y0) / 3)
    segs = []
    for x, dx in ((x0, length), (x1, -length)):
        for y, dy in ((y0, length), (y1, -length)):
            segs.append([(x, y), (x + dx, y)])
            segs.append([(x, y), (x, y + dy)])
    return np.asarray(segs, dtype=np.float64)


MARK = "#ffd166"


def worst_case_figure(
    images: Sequence[tuple[str, np.ndarray]],
    *,
    rows: Sequence[int],
    cols: Sequence[int],
    zoom: int = 24,
) -> tuple[Figure, list]:
    """One worst case: full images, zooms on the feature, and each image's difference from truth.

    Three rows, one column per image: (1) the whole image with the zoomed region boxed; (2) the
    zoom (``zoom`` pixels, drawn at the panel's full size so a 10-pixel feature is plainly
    visible) with the feature marked by corner ticks beside it, never over it; (3) the zoomed
    difference from the ground truth (blue: darker than the truth; red: brighter), for every
    image but the truth itself.

    Args:
        images: (title, image) pairs: zero-filled input, ground truth with the feature, then each
            model's reconstruction; all in target units. A title may hold more lines (e.g. the
            panel's ``r``, ``e`` and hit label); each line is shortened on its own.
        rows, cols: the feature's support (pixel coordinates).
        zoom: side of the zoomed region in pixels (grown to hold the feature with a margin).

    Returns:
        the figure and its zoom axes (row 2), whose tick marks tests check against the support.
    """
    truth = np.asarray(images[1][1], dtype=np.float32)
    vmax = float(np.nanmax(truth)) or 1.0
    h, w = truth.shape[:2]
    cy, cx = (float(np.mean(rows)), float(np.mean(cols))) if len(rows) else (h / 2, w / 2)
    reach = max([abs(r - cy) for r in rows] + [abs(c - cx) for c in cols] + [0.0])
    half = max(zoom / 2, reach + 6)
    ys, xs = (
        slice(max(0, int(cy - half)), int(cy + half) + 1),
        slice(max(0, int(cx - half)), int(cx + half) + 1),
    )
    diffs = [np.asarray(img, dtype=np.float32) - truth for _, img in images]
    spread = max(float(np.nanmax(np.abs(d[ys, xs]))) for d in diffs) or vmax
    ticks = feature_ticks(rows, cols) if len(rows) else np.zeros((0, 2, 2))
    n = len(images)
    zooms, diff_image = [], None
    with rc_context(STYLE):
        fig = _figure(2.2 * n + 0.7, 7.2)
        axes = fig.subplots(3, n, squeeze=False)
        for j, (title, img) in enumerate(images):
            img = np.asarray(img, dtype=np.float32)
            top, mid, low = axes[:, j]
            top.imshow(img, cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
            top.add_patch(
                Rectangle((cx - half, cy - half), 2 * half, 2 * half, fill=False, ec=MARK, lw=1.0)
            )
            top.set_title("\n".join(_short(line, 28) for line in str(title).split("\n")))
            mid.imshow(img, cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
            mid.add_collection(LineCollection(ticks, colors=MARK, linewidths=1.5))
            for ax in (mid, low):
                ax.set_xlim(cx - half, cx + half)
                ax.set_ylim(cy + half, cy - half)
            zooms.append(mid)
            if j == 1:
                low.set_visible(False)
            else:
                diff_image = low.imshow(
                    diffs[j], cmap="RdBu_r", vmin=-spread, vmax=spread, interpolation="nearest"
                )
                low.add_collection(LineCollection(ticks, colors="#333333", linewidths=1.2))
                low.set_title("minus ground truth", fontsize=8)
            for ax in (top, mid, low):
                ax.set_xticks([])
                ax.set_yticks([])
        axes[1, 0].set_ylabel(f"zoom {int(2 * half)} px")
        if diff_image is not None:
            fig.colorbar(diff_image, ax=axes[2, :].tolist(), shrink=0.85, label="image − truth")
        return fig, zooms


def worst_case_panel(
    images: Sequence[tuple[str, np.ndarray]],
    *,
    rows: Sequence[int],
    cols: Sequence[int],
    zoom: int = 24,
) -> str:
    """:func:`worst_case_figure` as a base64 PNG."""
    fig, _ = worst_case_figure(images, rows=rows, cols=cols, zoom=zoom)
    return _png(fig)


def _short(name: str, n: int = 24) -> str:
    """A label for user text: at most ``n`` characters, ``$`` escaped (no mathtext)."""
    name = str(name) if len(str(name)) <= n else str(name)[: n - 1] + "…"
    return name.replace("$", r"\$")


def _wrap(name: str, width: int = 18, lines: int = 3) -> str:
    """A long model name on up to ``lines`` lines of ``width`` characters (``$`` escaped).

    Lines break after ``.``, ``:``, ``/``, ``_`` or a space where they can; the last line ends in
    ``…`` when the name does not fit.
    """
    out = [""]
    for token in re.findall(r"[^.:/_ ]+[.:/_ ]?|[.:/_ ]", str(name)):
        while token:
            if out[-1] and len(out[-1]) + len(token) > width:
                out.append("")
            room = width - len(out[-1])
            out[-1], token = out[-1] + token[:room], token[room:]
    if len(out) > lines:
        out = out[: lines - 1] + [out[lines - 1][: width - 1] + "…"]
    return "\n".join(line.strip().replace("$", r"\$") for line in out)


def _count(n: float, noun: str) -> str:
    return f"{int(n)} {noun}{'' if int(n) == 1 else 's'}"
