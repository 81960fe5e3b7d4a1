"""Report figures: matplotlib ``Figure`` objects (Agg, no pyplot state) rendered to base64 PNG.

Every function takes plain arrays and returns a PNG as a base64 ``str``; the same inputs give the
same bytes (fixed size and dpi, no timestamps in the PNG metadata). The criterion-aware per-slice
distributions (score histograms, evidence-vs-recovery scatter) are in
:mod:`mri_audit.score_figures`.
"""

from __future__ import annotations

import base64
import io
import math
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
    "worst_case_panel",
    "feature_outline",
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


def feature_outline(rows: Sequence[int], cols: Sequence[int]) -> np.ndarray:
    """Segments ``(n, 2, 2)`` (x, y) of the outer edges of a pixel support."""
    support = {(int(r), int(c)) for r, c in zip(rows, cols, strict=True)}
    segs = []
    for r, c in sorted(support):
        if (r - 1, c) not in support:
            segs.append([(c - 0.5, r - 0.5), (c + 0.5, r - 0.5)])
        if (r + 1, c) not in support:
            segs.append([(c - 0.5, r + 0.5), (c + 0.5, r + 0.5)])
        if (r, c - 1) not in support:
            segs.append([(c - 0.5, r - 0.5), (c - 0.5, r + 0.5)])
        if (r, c + 1) not in support:
            segs.append([(c + 0.5, r - 0.5), (c + 0.5, r + 0.5)])
    return np.asarray(segs, dtype=np.float64).reshape(-1, 2, 2)


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
    side = 0.75 * max(len(first[0]), len(first[1])) + 1.6
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
            ax.set_xticks(
                range(len(targets)), [_short(t) for t in targets], rotation=30, ha="right"
            )
            ax.set_yticks(range(len(sources)), [_short(s) for s in sources])
            ax.set_xlabel("target model")
            ax.set_ylabel("source model")
            ax.set_title(_short(title, 40))
        if image is not None:
            fig.colorbar(image, ax=fig.axes, shrink=0.8, label="transfer rate")
        return _png(fig)


def worst_case_panel(
    images: Sequence[tuple[str, np.ndarray]],
    *,
    rows: Sequence[int],
    cols: Sequence[int],
    zoom: int = 32,
) -> str:
    """One worst case as a row of images, each with a zoomed inset on the feature.

    Args:
        images: (title, image) pairs: zero-filled input, ground truth with the feature, then each
            model's reconstruction; all in target units. A title may hold a second line (e.g.
            the panel's ``r``, ``e`` and hit label); each line is shortened on its own.
        rows, cols: the feature's support (pixel coordinates).
        zoom: side of the zoomed region in pixels.
    """
    vmax = float(np.nanmax(np.asarray(images[1][1], dtype=np.float32))) or 1.0
    cy = float(np.mean(rows)) if len(rows) else images[0][1].shape[0] / 2
    cx = float(np.mean(cols)) if len(cols) else images[0][1].shape[1] / 2
    half = zoom / 2
    h, w = np.asarray(images[0][1]).shape[:2]
    # The inset goes in the corner opposite the feature, so it never hides it.
    corner = [0.02 if cx > w / 2 else 0.58, 0.58 if cy > h / 2 else 0.02, 0.4, 0.4]
    outline = feature_outline(rows, cols)
    with rc_context(STYLE):
        fig = _figure(2.35 * len(images), 2.8)
        for ax, (title, img) in zip(_grid(fig, len(images), len(images)), images, strict=True):
            img = np.asarray(img, dtype=np.float32)
            ax.imshow(img, cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
            ax.add_collection(LineCollection(outline, colors="#ffd166", linewidths=0.6))
            ax.set_title("\n".join(_short(line, 30) for line in str(title).split("\n")))
            ax.set_xticks([])
            ax.set_yticks([])
            inset = ax.inset_axes(corner)
            inset.imshow(img, cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
            inset.add_collection(LineCollection(outline, colors="#ffd166", linewidths=1.0))
            inset.set_xlim(cx - half, cx + half)
            inset.set_ylim(cy + half, cy - half)
            inset.set_xticks([])
            inset.set_yticks([])
            for spine in inset.spines.values():
                spine.set_edgecolor("#ffd166")
            ax.indicate_inset_zoom(inset, edgecolor="#ffd166", alpha=0.9)
        return _png(fig)


def _short(name: str, n: int = 24) -> str:
    """A label for user text: at most ``n`` characters, ``$`` escaped (no mathtext)."""
    name = str(name) if len(str(name)) <= n else str(name)[: n - 1] + "…"
    return name.replace("$", r"\$")


def _count(n: float, noun: str) -> str:
    return f"{int(n)} {noun}{'' if int(n) == 1 else 's'}"
