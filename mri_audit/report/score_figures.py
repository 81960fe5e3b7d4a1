"""Criterion-aware per-slice figures of the report (DESIGN §4, version 2).

* :func:`score_histograms`: the distribution of the criterion's score of the selected feature of
  each slice, with the hit threshold (``erasure``: ``min(e, r₀)`` against ``δ``; ``recovery``:
  ``r`` against ``r_min``; ``paper``: ``L`` on a log axis against ``τ``, with the no-feature
  control in grey);
* :func:`recovery_scatter`: evidence ``r₀`` (x) against model recovery ``r`` (y) with the identity
  line, on which the zero-filled identity lies, and the criterion's hit region; hits are filled;
* :func:`threshold_curves`: the attack rate against the criterion's threshold, one panel per
  attack and a line per model, the used (and default) threshold marked;
* :func:`recovery_ecdfs`: the distributions (ECDFs) of ``r`` and ``r₀`` per model and attack.

Like :mod:`mri_audit.report.figures`, each function returns a deterministic base64 PNG.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from matplotlib import rc_context
from matplotlib.ticker import MaxNLocator

from mri_audit.report.figures import PALETTE, STYLE, _figure, _grid, _png, _positive, _short

__all__ = [
    "HISTOGRAM",
    "log_range",
    "score_histograms",
    "recovery_scatter",
    "threshold_curves",
    "recovery_ecdfs",
]

# Per criterion: the plotted quantity (a records column), its axis label, the threshold parameter
# and its symbol, whether the axis is logarithmic, and on which side of the line the hits lie.
HISTOGRAM = {
    "erasure": ("score", "erasure min(e, r₀)", "margin", "δ", False, "right"),
    "recovery": ("r", "model recovery r", "min_recovery", "r_min", False, "left"),
    "paper": ("loss", "loss L (over 320²)", "threshold", "τ", True, "right"),
}


DEFAULT_TAU = 1e-3
"""``--threshold``'s default: where a log axis is centred when nothing else places it."""
LOG_LIMITS = (1e-30, 1e30)
"""The widest log axis drawn (matplotlib cannot draw one near the ends of the float range):
losses and thresholds beyond it are drawn at its ends, their labels keep the true value."""


def _finite(values) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    return v[np.isfinite(v)]


def _linear_bins(panels: Mapping[str, tuple], threshold: float) -> np.ndarray:
    every = np.concatenate([_finite(v) for p in panels.values() for v in p if v is not None])
    lo = min(0.0, threshold, float(every.min()) if every.size else 0.0)
    hi = max(1.0, threshold, float(every.max()) if every.size else 1.0)
    pad = 0.02 * (hi - lo)
    return np.linspace(lo - pad, hi + pad, 41)


def log_range(values: np.ndarray, threshold: float) -> tuple[float, float]:
    """The ends of a log axis: a decade beyond the finite positive ``values`` and a positive
    ``threshold`` (three decades either side of the threshold, or of the default τ when it is
    0, when there is no positive value), kept within :data:`LOG_LIMITS`.

    Every threshold the options accept (finite, ≥ 0) gives ends matplotlib can draw.
    """
    v = _finite(values)
    v = v[v > 0]
    marks = np.append(v, threshold) if threshold > 0 else v
    if v.size:
        lo, hi = float(marks.min()) / 10, float(marks.max()) * 10
    else:
        centre = threshold if threshold > 0 else DEFAULT_TAU
        lo, hi = centre / 1e3, centre * 1e3
    lo = min(max(lo, LOG_LIMITS[0]), LOG_LIMITS[1] / 10)
    return lo, max(min(hi, LOG_LIMITS[1]), lo * 10)


def _log_bins(panels: Mapping[str, tuple], threshold: float) -> tuple[np.ndarray, float]:
    """41 log-spaced bin edges (:func:`log_range`) and the floor that non-positive values are
    drawn at (a threshold of 0 is drawn there too)."""
    every = np.concatenate([_finite(v) for p in panels.values() for v in p if v is not None])
    floor, top = log_range(every, threshold)
    return np.logspace(math.log10(floor), math.log10(top), 41), floor


def score_histograms(
    panels: Mapping[str, tuple[np.ndarray, np.ndarray | None]],
    *,
    criterion: str,
    threshold: float,
    ncols: int = 3,
) -> str:
    """Histograms of the criterion's score per (model, attack), with the hit threshold.

    Args:
        panels: title -> (the plotted quantity of the selected feature of each slice, the
            control's ``L`` of the same slices or None). The quantity is the one
            :data:`HISTOGRAM` names for ``criterion``.
        criterion: ``erasure``, ``recovery`` or ``paper``.
        threshold: the hit threshold (``δ``, ``r_min`` or ``τ``).
        ncols: panels per row.
    """
    _, label, _, symbol, log, side = HISTOGRAM[criterion]
    if log:
        bins, floor = _log_bins(panels, threshold)
    else:
        bins, floor = _linear_bins(panels, threshold), None
    hits = f"hit {'≥' if side == 'right' else '<'} {symbol} = {threshold:g}"
    ncols = max(1, min(ncols, 4, len(panels)))
    with rc_context(STYLE):
        fig = _figure(3.4 * ncols, 2.7 * math.ceil(len(panels) / ncols) + 0.1)
        for i, (ax, (title, (values, control))) in enumerate(
            zip(_grid(fig, len(panels), ncols), panels.items(), strict=True)
        ):
            if control is not None:
                ax.hist(
                    np.minimum(_positive(control, floor), bins[-1]) if log else _finite(control),
                    bins=bins,
                    color="#9e9e9e",
                    alpha=0.7,
                    histtype="stepfilled",
                    label="control (no feature)",
                )
            shown = np.minimum(_positive(values, floor), bins[-1]) if log else _finite(values)
            ax.hist(shown, bins=bins, color=PALETTE[1], alpha=0.75, label="selected feature")
            # On a log axis τ = 0 is drawn at the floor, where the zero losses are.
            at = float(np.clip(threshold, floor, bins[-1])) if log else threshold
            ax.axvline(at, color=PALETTE[0], ls="--", lw=1.2, label=hits)
            if log:
                ax.set_xscale("log")
            ax.set_title(_short(title, 40))
            ax.set_xlabel(label)
            ax.set_ylabel("slices")
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            if i == 0:
                ax.legend(loc="upper left", frameon=False)
        return _png(fig)


def recovery_scatter(
    panels: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]]],
    *,
    criterion: str,
    params: Mapping[str, float],
) -> str:
    """Evidence ``r₀`` (x) against model recovery ``r`` (y), one panel per model.

    The identity line ``r = r₀`` is where a model that passes its input through (zero-filling)
    lies; below it the model removes part of what the data carries. The criterion's hit boundary
    is drawn: ``erasure``: ``r = r₀ − δ``; ``recovery``: ``r = r_min`` and ``r₀ = r₀_min``;
    ``paper`` has none in these coordinates.

    Args:
        panels: model -> attack -> (r₀, r, hit) arrays of the selected features.
        criterion: ``erasure``, ``recovery`` or ``paper``.
        params: the criterion's thresholds (:meth:`~mri_audit.fnaf.criteria.Criterion.params`).
    """
    values = [_finite(a) for p in panels.values() for t in p.values() for a in t[:2]]
    every = np.concatenate(values) if values else np.zeros(0)
    lo = min(0.0, float(every.min()) if every.size else 0.0) - 0.05
    hi = max(1.0, float(every.max()) if every.size else 1.0) + 0.05
    attacks = sorted({a for p in panels.values() for a in p})
    colour = {a: PALETTE[(i + 1) % len(PALETTE)] for i, a in enumerate(attacks)}
    ncols = min(3, len(panels))
    handles: dict[str, object] = {}
    with rc_context(STYLE):
        fig = _figure(3.4 * ncols + 1.8, 3.2 * math.ceil(len(panels) / ncols) + 0.1)
        for ax, (model, by_attack) in zip(
            _grid(fig, len(panels), ncols), panels.items(), strict=True
        ):
            ax.plot([lo, hi], [lo, hi], color="#333333", lw=1.0, label="r = r₀ (zero-filling)")
            if criterion == "erasure":
                delta = params["margin"]
                ax.plot(
                    [lo, hi],
                    [lo - delta, hi - delta],
                    color=PALETTE[0],
                    ls="--",
                    lw=1.1,
                    label=f"e = δ = {delta:g} (hits below)",
                )
            elif criterion == "recovery":
                ax.axhline(
                    params["min_recovery"],
                    color=PALETTE[0],
                    ls="--",
                    lw=1.1,
                    label=f"r_min = {params['min_recovery']:g} (hits below)",
                )
                ax.axvline(
                    params["min_evidence"],
                    color="#333333",
                    ls=":",
                    lw=1.1,
                    label=f"r₀ ≥ {params['min_evidence']:g} (admissible)",
                )
            for attack, (r0, r, hit) in by_attack.items():
                r0, r = np.asarray(r0, dtype=float), np.asarray(r, dtype=float)
                hit = np.asarray(hit, dtype=bool)
                ok = np.isfinite(r0) & np.isfinite(r)
                ax.scatter(
                    r0[ok & ~hit],
                    r[ok & ~hit],
                    s=14,
                    facecolors="none",
                    edgecolors="#9e9e9e",
                    lw=0.8,
                    label="no hit",
                )
                ax.scatter(
                    r0[ok & hit],
                    r[ok & hit],
                    s=16,
                    color=colour[attack],
                    label=f"{_short(attack)} hit",
                    alpha=0.85,
                )
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
            ax.set_aspect("equal", adjustable="box")
            ax.set_xlabel("evidence r₀ (zero-filled)")
            ax.set_ylabel("model recovery r")
            ax.set_title(_short(model, 40))
            _collect(ax, handles)
        return _legend_png(fig, handles)


def threshold_curves(
    panels: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
    *,
    criterion: str,
    used: float,
    default: float,
    limit: float | None = None,
) -> str:
    """The attack rate as a function of the criterion's hit threshold, one panel per attack.

    Args:
        panels: attack -> model -> (thresholds, attack rate at each threshold).
        criterion: ``erasure`` (x = ``δ``), ``recovery`` (x = ``r_min``) or ``paper`` (x = ``τ``,
            log axis).
        used: the threshold the audit (or this re-read) used, marked with a dashed line.
        default: the criterion's default threshold, marked with a dotted line when it differs.
        limit: ``--max-attack-rate``, drawn as a horizontal line, or None.
    """
    _, _, _, symbol, log, _ = HISTOGRAM[criterion]
    models = list(_models(panels))
    colour = {m: PALETTE[(i + 1) % len(PALETTE)] for i, m in enumerate(models)}
    ncols = max(1, min(3, len(panels)))
    with rc_context(STYLE):
        fig = _figure(3.3 * ncols + 1.9, 2.9 * math.ceil(len(panels) / ncols) + 0.1)
        handles: dict[str, object] = {}
        for ax, (attack, by_model) in zip(
            _grid(fig, len(panels), ncols), panels.items(), strict=True
        ):
            for model, (x, y) in by_model.items():
                x, y = np.asarray(x, dtype=np.float64), np.asarray(y)
                if log:  # a log axis has no 0; extreme thresholds are drawn at its ends
                    x, y = np.clip(x[x > 0], *LOG_LIMITS), y[x > 0]
                ax.plot(x, y, color=colour[model], lw=1.5, label=_short(model, 40))
            # On a log axis τ = 0 is drawn at the left end of the curves.
            at = _left(by_model) if log and used <= 0 else used
            at = float(np.clip(at, *LOG_LIMITS)) if log else at
            ax.axvline(at, color=PALETTE[0], ls="--", lw=1.1, label=f"used {symbol} = {used:g}")
            if not math.isclose(used, default):
                ax.axvline(
                    default,
                    color="#333333",
                    ls=":",
                    lw=1.1,
                    label=f"default {symbol} = {default:g}",
                )
            if limit is not None:
                ax.axhline(limit, color="#9e9e9e", lw=1.0, label=f"--max-attack-rate {limit:g}")
            if log:
                ax.set_xscale("log")
            ax.set_ylim(-0.03, 1.03)
            ax.set_xlabel(f"threshold {symbol}")
            ax.set_ylabel("attack rate")
            ax.set_title(_short(attack, 40))
            _collect(ax, handles)
        return _legend_png(fig, handles)


def _left(by_model: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> float:
    """The smallest positive threshold of a panel's curves (where a log axis starts)."""
    x = np.concatenate([_finite(x) for x, _ in by_model.values()] or [np.zeros(0)])
    x = x[x > 0]
    return float(x.min()) if x.size else DEFAULT_TAU


def _collect(ax, handles: dict) -> None:
    """Add ``ax``'s legend entries to ``handles`` (one entry per label across panels)."""
    for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
        handles.setdefault(label, handle)


def _legend_png(fig, handles: dict) -> str:
    """One legend for the whole figure, then the figure as a base64 PNG."""
    fig.legend(list(handles.values()), list(handles), loc="outside right upper", frameon=False)
    return _png(fig)


def _models(panels: Mapping[str, Mapping]) -> dict[str, None]:
    return {m: None for p in panels.values() for m in p}


def recovery_ecdfs(
    panels: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
    *,
    guides: Mapping[str, tuple[float, str]] | None = None,
) -> str:
    """Distributions (ECDFs) of recovery ``r`` and evidence ``r₀``: one column per attack, a line
    per model.

    Args:
        panels: attack -> model -> (r, r₀) of the selected feature of each slice.
        guides: quantity (``r`` or ``r0``) -> (x, label) of a vertical guide line (a threshold).
    """
    guides = guides or {}
    models = list(_models(panels))
    colour = {m: PALETTE[(i + 1) % len(PALETTE)] for i, m in enumerate(models)}
    ncols = len(panels)
    labels = {"r": "model recovery r", "r0": "evidence r₀ (zero-filled)"}
    with rc_context(STYLE):
        fig = _figure(3.0 * ncols + 1.9, 5.4)
        axes = fig.subplots(2, ncols, squeeze=False)
        handles: dict[str, object] = {}
        for j, (attack, by_model) in enumerate(panels.items()):
            for i, q in enumerate(("r", "r0")):
                ax = axes[i, j]
                for model, values in by_model.items():
                    v = np.sort(_finite(values[i]))
                    if v.size:
                        x = np.concatenate([v[:1], v])
                        y = np.arange(v.size + 1) / v.size
                        ax.step(x, y, where="post", color=colour[model], lw=1.4, label=model)
                if q in guides:
                    x, label = guides[q]
                    ax.axvline(x, color=PALETTE[0], ls="--", lw=1.0, label=label)
                ax.set_ylim(0, 1.02)
                ax.set_xlabel(labels[q])
                ax.set_ylabel("share of slices ≤ x" if j == 0 else "")
                if i == 0:
                    ax.set_title(_short(attack, 40))
                for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                    handles.setdefault(_short(label, 40), handle)
        fig.legend(list(handles.values()), list(handles), loc="outside right upper", frameon=False)
        return _png(fig)
