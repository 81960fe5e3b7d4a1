"""Display helpers and the methodology section of the report (threat model v2).

:func:`methodology` turns an audit's stored ``config`` and its criterion into plain display data
for ``reports/templates/report.html``; the wording of the definitions is in the template. The
formatting helpers (:func:`pct`, :func:`num`, :func:`rate`) are shared by the report modules.
"""

from __future__ import annotations

import json
import math

from mri_audit.fnaf.criteria import CRITERIA, Criterion, make_criterion
from mri_audit.fnaf.window import make_window

__all__ = [
    "methodology",
    "fmt",
    "pct",
    "num",
    "rate_cells",
    "score_spec",
    "SCORE_LABEL",
    "THRESHOLD_KEYS",
]

# The thresholds an audit's config stores (min_evidence is fixed at its default).
THRESHOLD_KEYS = ("margin", "min_recovery", "threshold", "ip_epsilon")


def fmt(value) -> str:
    """A threshold for display (``0.1``, ``0.001``), or ``n/a``."""
    return "n/a" if value is None else format(value, "g")


def pct(v: float | None) -> str:
    """``12.5%``, or ``n/a``."""
    return "n/a" if v is None else f"{v:.1%}"


def num(v: float | None, spec: str = ".2e") -> str:
    """A number formatted with ``spec``, or ``n/a`` for None / non-finite."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    text = format(v, spec)
    # A value that rounds to zero is shown as 0, not -0 (e of zero-filling is -1e-7, not < 0).
    return text[1:] if text.startswith("-") and not any(c in "123456789" for c in text) else text


def rate_cells(r: dict | None, limit: float | None = None) -> dict:
    """A Wilson-rated dict as display strings: value, 95% CI and count/total."""
    r = r or {}
    value = r.get("value")
    return {
        "value": pct(value),
        "ci": "" if value is None else f"[{pct(r['low'])}, {pct(r['high'])}]",
        "frac": f"{r.get('count', 0)}/{r.get('total', 0)}",
        "over": limit is not None and value is not None and value > limit,
    }


SCORE_LABEL = {"erasure": "min(e, r₀)", "recovery": "−r", "paper": "L"}


def score_spec(criterion: str) -> str:
    """The format of a criterion's score (``L`` is small: scientific notation)."""
    return ".2e" if criterion == "paper" else ".3f"


def _criteria(config: dict, active: Criterion) -> list[dict]:
    """Each criterion with this audit's thresholds and the defaults, the active one marked."""
    from mri_audit.fnaf.criteria import criterion_of

    out = []
    for name in CRITERIA:
        crit = active if name == active.name else criterion_of(config, name)
        out.append(
            {
                "name": name,
                "used": name == active.name,
                "params": {k: fmt(v) for k, v in crit.params().items()},
                "defaults": {k: fmt(v) for k, v in make_criterion(name).params().items()},
            }
        )
    return out


def methodology(
    config: dict,
    window,
    shape: tuple[int, int] | None,
    criterion: Criterion,
    reread_from: str | None = None,
) -> dict:
    """Display data of the methodology section.

    Args:
        config: the audit's stored configuration (``results.json`` ``config``).
        window: the feature window (fraction or box).
        shape: the target shape, if known.
        criterion: the criterion the report reads the audit under.
        reread_from: the audit's own criterion when the report is a re-read, else None.
    """
    steps = config.get("feature_steps")
    if isinstance(steps, (list, tuple)):
        steps = f"{steps[0]}–{steps[1]} (drawn uniformly per feature)"
    feature = config.get("feature") or "walk"
    accel = config.get("accel")
    cf = config.get("center_fraction")
    if cf is None and accel:
        from mri_audit.mri.physics import default_center_fraction

        default = default_center_fraction(accel)
        cf = f"{default:g} (fastMRI default for {accel:g}×)"
    if isinstance(window, (int, float)):
        win = f"a centred window of {window:g} of each side of the target"
        if shape:
            _, _, wh, ww = make_window(shape, window)
            win += f" ({wh}×{ww} px of a {shape[0]}×{shape[1]} target)"
    else:
        win = f"the window (top, left, height, width) = {tuple(window or ())}"
    criteria = _criteria(config, criterion)
    values = {c["name"]: c["params"] for c in criteria}
    return {
        k: config.get(k) for k in ("candidates", "insert", "mask_type", "seed", "batch_size")
    } | {
        "criterion": criterion.name,
        "rule": criterion.describe(),
        "reread_from": reread_from,
        "criteria": criteria,
        "margin": values["erasure"]["margin"],
        "min_recovery": values["recovery"]["min_recovery"],
        "min_evidence": values["recovery"]["min_evidence"],
        "tau": values["paper"]["threshold"],
        "epsilon": values["paper"]["ip_epsilon"],
        "steps": steps,
        "feature": feature,
        "feature_size": _feature_size(config, feature),
        "window": win,
        "accel": "n/a" if accel is None else format(accel, "g"),
        "center_fraction": cf,
        "attacks": ", ".join(config.get("attacks", [])),
        "attack_options": json.dumps(config.get("attack_options") or {}, sort_keys=True),
    }


def _feature_size(config: dict, feature: str) -> str:
    """A disk's radius or a line's length and width as the attacks used them (text).

    Attack parameters (``--attack-param NAME.feature_size=``) win over ``--feature-size``; when
    the FNAF attacks differ, each one's value is named.
    """
    if feature == "walk":
        return ""
    from mri_audit.fnaf.shapes import DEFAULT_SIZE

    options = config.get("attack_options") or {}
    fnaf = [a for a in config.get("attacks", []) if a.startswith("fnaf")]

    def value(attack: str, key: str, default: float) -> float:
        for found in ((options.get(attack) or {}).get(key), config.get(key)):
            if found is not None:
                return float(found)
        return float(default)

    def text(attack: str) -> str:
        size = value(attack, "feature_size", DEFAULT_SIZE[feature])
        if feature == "disk":
            return f"radius {size:g} px"
        return f"length {size:g} px, width {value(attack, 'feature_width', 1.0):g} px"

    texts = {a: text(a) for a in fnaf} or {"": text("")}
    if len(set(texts.values())) == 1:
        return next(iter(texts.values()))
    return "; ".join(f"{t} ({a})" for a, t in texts.items())
