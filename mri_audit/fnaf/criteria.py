"""FNAF criteria (DESIGN §4, version 2): what an attack maximises and what counts as a hit.

A criterion reads the per-candidate quantities the engine computes (:class:`~mri_audit.fnaf.engine.
Scores`: recovery ``r``, evidence ``r₀``, erasure ``e = r₀ − r``, acquired energy ``ρ``, the
size-free paper loss ``L`` and IP distance ``D``) and gives

* ``score``: what attacks maximise (higher is worse for the model);
* ``admissible``: its information-preservation rule (a candidate the data does not carry cannot
  count, so it is never selected);
* ``hit``: whether the selected candidate is a false negative;
* ``control``: for ``paper`` only, the same search with no feature (the reference code's
  ``--fnaf_eval_control``).

Selection (the best admissible candidate per slice) does not depend on the hit thresholds
(``margin``, ``min_recovery``, ``threshold``), so an audit can be re-read under other
thresholds, or another criterion, from its records (``mri-audit report --criterion``). It
compares scores rounded to the criterion's fixed ``resolution`` (:meth:`Criterion.rank_key`) and
breaks ties by the lowest candidate number, so float rounding (another machine, device or batch
size) cannot pick another feature among candidates that tie, e.g. every candidate of the
zero-filled model at ``e = 0``; records keep the unrounded score.
Everything here works on tensors of any shape, so the auditor (per candidate, on the device) and
the results (per record, on the host) share one definition.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

__all__ = [
    "QUANTITIES",
    "CRITERIA",
    "DEFAULT_CRITERION",
    "REFERENCE_AREA",
    "Criterion",
    "Erasure",
    "Recovery",
    "Paper",
    "make_criterion",
    "all_criteria",
    "criterion_of",
]

# The paper's image area: L and D are sums over pixels divided by this fixed area, so they mean
# the same at every image size and equal the MIDL 2020 definitions at 320x320.
REFERENCE_AREA = 320 * 320
DEFAULT_CRITERION = "erasure"
# The per-candidate quantities every record keeps, whatever the criterion.
QUANTITIES = ("r", "r0", "e", "rho", "loss", "ip", "region_nmse")


def _get(q: Any, name: str) -> torch.Tensor:
    """A quantity as float64: the device's float32 values and the records' floats then meet the
    thresholds the same way (a re-read equals a fresh audit, even at the threshold itself)."""
    value = q[name] if isinstance(q, Mapping) else getattr(q, name)
    return torch.as_tensor(value).to(torch.float64)


# One-sided 95% quantiles of Student's t with 1..30 degrees of freedom (then the normal's).
_T95 = (6.314, 2.920, 2.353, 2.132, 2.015, 1.943, 1.895, 1.860, 1.833, 1.812, 1.796, 1.782)
_T95 += (1.771, 1.761, 1.753, 1.746, 1.740, 1.734, 1.729, 1.725, 1.721, 1.717, 1.714, 1.711)
_T95 += (1.708, 1.706, 1.703, 1.701, 1.699, 1.697)


def t95(df: int) -> float:
    """The one-sided 95% quantile of Student's t with ``df`` degrees of freedom (0 for none)."""
    if df < 1:
        return 0.0
    return _T95[df - 1] if df <= len(_T95) else 1.645


def sampling_error(q: Any) -> torch.Tensor:
    """How far a stochastic model's mean erasure (or recovery) must clear a threshold to count:
    ``t95(samples − 1) · r_se`` (a one-sided test at the 5% level on the paired samples); 0
    for a deterministic model (one sample) and for records without samples."""
    r = _get(q, "r")
    if not _has(q, "r_se"):
        return torch.zeros_like(r)
    se = torch.nan_to_num(_get(q, "r_se"), nan=0.0)
    n = _get(q, "samples") if _has(q, "samples") else torch.ones_like(r)
    df = (torch.nan_to_num(n, nan=1.0) - 1).clamp(0, len(_T95) + 1).long()
    table = torch.tensor((0.0, *_T95, 1.645), dtype=torch.float64, device=se.device)
    return table[df.to(se.device)] * se  # on the device: no host round trip


def _has(q: Any, name: str) -> bool:
    return name in q if isinstance(q, Mapping) else hasattr(q, name)


def _finite(*xs: torch.Tensor) -> torch.Tensor:
    ok = torch.ones_like(xs[0], dtype=torch.bool)
    for x in xs:
        ok = ok & torch.isfinite(x)
    return ok


class Criterion:
    """One FNAF criterion: a score attacks maximise, an IP rule, a hit rule.

    ``q`` is anything with the engine's quantity names as attributes or keys (``r``, ``r0``,
    ``e``, ``rho``, ``loss``, ``ip``), holding tensors of one shape; missing values are NaN.

    Attributes:
        resolution: selection compares scores in integer multiples of this, in the score's units
            (:meth:`rank_key`): far above float noise, far below the hit thresholds, and fixed
            (not a threshold), so selection stays independent of the thresholds.
    """

    name = ""
    has_control = False
    summary = ""
    resolution = 1e-4

    def params(self) -> dict[str, float]:
        """The criterion's thresholds (stored with the audit)."""
        raise NotImplementedError

    def score(self, q) -> torch.Tensor:
        """What attacks maximise; NaN where the candidate is not admissible."""
        raise NotImplementedError

    def admissible(self, q) -> torch.Tensor:
        """The information-preservation rule (bool)."""
        raise NotImplementedError

    def hit(self, q) -> torch.Tensor:
        """Whether a (selected) candidate is a false negative (bool; False where inadmissible)."""
        raise NotImplementedError

    def control_hit(self, control: torch.Tensor) -> torch.Tensor:
        """The control's hit: ``control`` is the best no-feature score of the same search."""
        return torch.zeros_like(torch.as_tensor(control), dtype=torch.bool)

    def key(self, q) -> torch.Tensor:
        """The score where admissible, ``-inf`` elsewhere (unrounded: what a record keeps;
        selection compares :meth:`rank_key`)."""
        s = self.score(q)
        ok = self.admissible(q) & torch.isfinite(s)
        return torch.where(ok, s, torch.full_like(s, -math.inf))

    def rank_key(self, q) -> torch.Tensor:
        """The selection key rounded to :attr:`resolution`: ``floor(key / resolution + 0.5)``
        (float64 integers; ``-inf`` stays ``-inf`` where inadmissible).

        Candidates whose scores differ by float noise (far less than the resolution) get the
        same key, and selection gives a tie to the lowest candidate number
        (:func:`~mri_audit.fnaf.engine.select_best`); the admissible set is exactly
        :meth:`key`'s (finite keys stay finite).
        """
        key = self.key(q)
        rank = torch.floor(key / self.resolution + 0.5).clamp(-1e300, 1e300)
        return torch.where(torch.isfinite(key), rank, torch.full_like(key, -math.inf))

    def describe(self) -> str:
        return self.summary.format(**self.params())

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v:g}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


class Erasure(Criterion):
    """``erasure`` (default): the model removes at least ``margin`` of what the data carries.

    The erasure credited to the model is capped at the evidence, ``min(e, r₀)``: a model is never
    blamed for more of the feature than the undersampled data still shows. Hit when it is
    ``>= margin`` (so ``r₀ >= margin`` and ``e >= margin``). The zero-filled identity has
    ``e = 0`` and is never hit.

    Selection rounds the score to ``1e-4`` of the feature's contrast (a thousandth of the default
    margin; float noise is ~1e-7).

    Args:
        margin: ``δ`` in (0, 1] (default 0.1).
    """

    name = "erasure"
    resolution = 1e-4
    summary = "hit when the erasure e = r₀ − r (at most r₀) is ≥ δ = {margin:g}"

    def __init__(self, *, margin: float = 0.1) -> None:
        if not isinstance(margin, (int, float)) or not 0 < margin <= 1:
            raise ValueError(f"margin must be in (0, 1], got {margin!r}")
        self.margin = float(margin)

    def params(self) -> dict[str, float]:
        return {"margin": self.margin}

    def score(self, q) -> torch.Tensor:
        e, r0 = _get(q, "e"), _get(q, "r0")
        return torch.minimum(e, r0)

    def admissible(self, q) -> torch.Tensor:
        return _finite(_get(q, "r"), _get(q, "r0"))

    def hit(self, q) -> torch.Tensor:
        s = self.score(q)
        return self.admissible(q) & (s >= self.margin + sampling_error(q))


class Recovery(Criterion):
    """``recovery``: the feature is shown at less than ``min_recovery`` of its contrast although
    the data carries at least ``min_evidence`` of it (the clinical view).

    Selection rounds the score ``−r`` to ``1e-4`` of the feature's contrast, as ``erasure``.

    Args:
        min_recovery: ``r_min`` (default 0.5).
        min_evidence: ``r₀_min``, the IP rule (default 0.1).
    """

    name = "recovery"
    resolution = 1e-4
    summary = "hit when r < r_min = {min_recovery:g} and r₀ ≥ {min_evidence:g}"

    def __init__(self, *, min_recovery: float = 0.5, min_evidence: float = 0.1) -> None:
        if not isinstance(min_recovery, (int, float)) or not 0 < min_recovery <= 1:
            raise ValueError(f"min_recovery must be in (0, 1], got {min_recovery!r}")
        if not isinstance(min_evidence, (int, float)) or not 0 <= min_evidence <= 1:
            raise ValueError(f"min_evidence must be in [0, 1], got {min_evidence!r}")
        self.min_recovery = float(min_recovery)
        self.min_evidence = float(min_evidence)

    def params(self) -> dict[str, float]:
        return {"min_recovery": self.min_recovery, "min_evidence": self.min_evidence}

    def score(self, q) -> torch.Tensor:
        return -_get(q, "r")

    def admissible(self, q) -> torch.Tensor:
        r, r0 = _get(q, "r"), _get(q, "r0")
        return _finite(r, r0) & (r0 >= self.min_evidence)

    def hit(self, q) -> torch.Tensor:
        return self.admissible(q) & (_get(q, "r") < self.min_recovery - sampling_error(q))


class Paper(Criterion):
    """``paper``: the MIDL 2020 criterion with a fixed reference area (size-free).

    ``L = Σ_Ω e²/320²`` in normalised units over the support plus its 4-ring, hit when
    ``L >= threshold``; IP ``D = Σ (N(zf(x')) − N(zf(x)))²/320² >= ip_epsilon``. At 320x320 it
    equals the paper's. Its control is the same search with no feature. Selection rounds ``L`` to
    ``1e-6`` (a thousandth of the default ``τ``; fixed, so that selection never depends on the
    threshold an audit is read under).

    Args:
        threshold: ``τ`` (default 1e-3).
        ip_epsilon: ``ε`` (default 1e-4).
    """

    name = "paper"
    has_control = True
    resolution = 1e-6
    summary = "hit when L ≥ τ = {threshold:g} with D ≥ ε = {ip_epsilon:g} (areas over 320²)"

    def __init__(self, *, threshold: float = 1e-3, ip_epsilon: float = 1e-4) -> None:
        for label, value in (("threshold", threshold), ("ip_epsilon", ip_epsilon)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{label} must be a finite number >= 0, got {value!r}")
        self.threshold = float(threshold)
        self.ip_epsilon = float(ip_epsilon)

    def params(self) -> dict[str, float]:
        return {"threshold": self.threshold, "ip_epsilon": self.ip_epsilon}

    def score(self, q) -> torch.Tensor:
        return _get(q, "loss")

    def admissible(self, q) -> torch.Tensor:
        ip, loss = _get(q, "ip"), _get(q, "loss")
        return _finite(ip, loss) & (ip >= self.ip_epsilon)

    def hit(self, q) -> torch.Tensor:
        return self.admissible(q) & (_get(q, "loss") >= self.threshold)

    def control_hit(self, control: torch.Tensor) -> torch.Tensor:
        control = torch.as_tensor(control).to(torch.float64)
        return torch.isfinite(control) & (control >= self.threshold)


CRITERIA: dict[str, type[Criterion]] = {c.name: c for c in (Erasure, Recovery, Paper)}


def make_criterion(name: str, **thresholds: float) -> Criterion:
    """The criterion called ``name`` with the thresholds it takes (others are ignored).

    Args:
        name: ``erasure``, ``recovery`` or ``paper``.
        thresholds: any of ``margin``, ``min_recovery``, ``min_evidence``, ``threshold``,
            ``ip_epsilon``.

    Raises:
        ValueError: an unknown name or a threshold out of range.
    """
    if name not in CRITERIA:
        raise ValueError(f"unknown criterion {name!r}; choose one of {', '.join(CRITERIA)}")
    cls = CRITERIA[name]
    import inspect

    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    return cls(**{k: v for k, v in thresholds.items() if k in accepted and v is not None})


def all_criteria(**thresholds: float) -> dict[str, Criterion]:
    """Every criterion, with the given thresholds (see :func:`make_criterion`)."""
    return {name: make_criterion(name, **thresholds) for name in CRITERIA}


def criterion_of(config: dict, name: str | None = None, **overrides) -> Criterion:
    """The criterion an audit's stored ``config`` names (or ``name``), with its thresholds;
    ``overrides`` replace thresholds (None keeps the stored one)."""
    keys = ("margin", "min_recovery", "threshold", "ip_epsilon")
    thresholds = {k: config[k] for k in keys if config.get(k) is not None}
    thresholds |= {k: v for k, v in overrides.items() if v is not None}
    return make_criterion(name or config.get("criterion", DEFAULT_CRITERION), **thresholds)
