"""``mri-audit verify --replay N``: re-run N of an audit's records through its model and data.

The records are picked from the chain head and the reviewer's nonce (SHA-256 of both seeds the
choice), so whoever ran the audit cannot predict them. For each, the stored feature is inserted
again and ``r``, ``r0``, ``e`` recomputed (in fp32, as the audit rescored its picks); for
``fnaf-rs`` every candidate is regenerated from its keys (seed, volume, slice, candidate) and
the recorded pick must be the best within the tolerance. A chain recomputed over lowered
numbers passes every file check; the replay is what catches it.

Tolerance (:data:`TOLERANCE`): ``|replayed - recorded| <= atol + rtol * |recorded|`` for ``r``,
``r0``, ``e`` and the criterion's score, plus four standard errors for a stochastic model.
Calibrated by ``benchmarks/calibrate_replay.py`` (see ``benchmarks/RESULTS.md``). A record whose
score lies within the tolerance of its criterion's threshold is *borderline*: reported, never
a failure.
"""

from __future__ import annotations

import hashlib
import logging
import random
from pathlib import Path
from typing import NamedTuple

from mri_audit.evidence.reopen import entries_of, recorded_source, same_data, same_model

__all__ = ["TOLERANCE", "Replayer", "pick_records", "replay_checks", "within"]

logger = logging.getLogger(__name__)

TOLERANCE = {"atol": 3e-3, "rtol": 1e-2}
"""How far a replayed quantity may be from the recorded one: ``r``, ``r0``, ``e``, ``rho``,
the region's NMSE, SSIMs and scores in a feature's (or image's) fractions."""
LOSS_TOLERANCE = {"atol": 1e-6, "rtol": 1e-2}
"""The same for ``paper``'s L and D and the control (their units: 1/1000 of the default τ)."""
QUANTITIES = ("r", "r0", "e", "rho", "loss", "ip", "region_nmse")


def within(
    recorded: float, replayed: float, *, slack: float = 0.0, tol: dict | None = None
) -> bool:
    """Whether ``replayed`` is within ``tol`` (default :data:`TOLERANCE`, plus ``slack``) of
    ``recorded``."""
    tol = tol or TOLERANCE
    bound = tol["atol"] + tol["rtol"] * abs(recorded) + slack
    return abs(replayed - recorded) <= bound


REPLAYED_KINDS = ("fnaf", "skipped", "error")
"""Records replay can re-check (a ``kspace-pgd`` degradation record's search is not redone)."""


def pick_records(records: list[dict], head: str, nonce: str, n: int) -> list[dict]:
    """``n`` records (FNAF, found or not, and slices skipped or failed) chosen by
    SHA-256(head, nonce), in key order."""
    from mri_audit.audit.journal import record_key

    pool = sorted((r for r in records if r.get("kind", "fnaf") in REPLAYED_KINDS), key=record_key)
    seed = int.from_bytes(hashlib.sha256(f"{head}\n{nonce}".encode()).digest()[:8], "big")
    chosen = random.Random(seed).sample(range(len(pool)), min(n, len(pool)))
    return [pool[i] for i in sorted(chosen)]


class Outcome(NamedTuple):
    """One replayed record: ``status`` is ``ok``, ``borderline`` or ``mismatch``."""

    status: str
    detail: str


class Replayer:
    """The audit's models and data opened again (their hashes checked) and an auditor over
    them, to re-score records.

    Raises:
        UsageError: a model, weights or data that differ from the audit's recorded hashes, or
            a model that cannot be opened again from what the audit recorded (exit 2).
    """

    def __init__(self, results: dict, overrides: dict, *, precision: str = "fp32") -> None:
        import torch

        self.precision = precision
        from mri_audit.audit.auditor import AuditConfig, AuditModel, Auditor
        from mri_audit.data.opening import open_data
        from mri_audit.device import resolve_device
        from mri_audit.fnaf.registry import load_attack
        from mri_audit.models.opening import open_entries
        from mri_audit.mri.physics import make_mask_func

        config = dict(results["config"])
        config["attacks"] = tuple(config["attacks"])
        fields = AuditConfig.__dataclass_fields__
        self.config = AuditConfig(**{k: v for k, v in config.items() if k in fields})
        data = results.get("data") or {}
        given = overrides.get("data")
        source = given if given is not None else recorded_source(data)
        self.dataset, probe = open_data(source, data.get("max_volumes"), data.get("max_slices"))
        same_data(data, self.dataset.describe(), given)
        self.device = resolve_device(overrides.get("device") or "auto")
        mask_func = make_mask_func(
            self.config.mask_type, self.config.accel, self.config.center_fraction
        )
        entries = entries_of(results["models"], overrides)
        torch.manual_seed(self.config.seed)
        opened = open_entries(
            entries,
            normalize="instance",
            device=self.device,
            probe=probe,
            mask_func=mask_func,
            need_gradient=False,
        )
        for o, e, m in zip(opened, entries, results["models"], strict=True):
            same_model(o, e, m)
            if o.estimator.call.stochastic:
                o.estimator.samples = int(m.get("samples") or 1)
        self.auditor = Auditor(
            [
                AuditModel(m["name"], o.estimator)
                for m, o in zip(results["models"], opened, strict=True)
            ],
            self.dataset,
            self.config,
            attack_classes={a: load_attack(a) for a in self.config.attacks},
            progress=False,
        )
        self.index = {key: i for i, key in enumerate(self.dataset.keys())}

    def context(self, rec: dict):
        """The one-slice context of ``rec`` and whether its k-space is finite (None: the slice
        is not in the data)."""
        import torch

        from mri_audit.data.datasets import collate
        from mri_audit.fnaf.features import prepare_context

        pos = self.index.get((rec["volume"], int(rec["slice"])))
        if pos is None:
            return None, False
        batch = collate([self.dataset[pos]]).to(self.device)
        finite = bool(torch.isfinite(torch.view_as_real(batch.kspace)).all())
        if not finite:
            return None, False
        ctx = prepare_context(
            batch.kspace,
            target_shape=tuple(batch.target.shape[-2:]),
            volumes=batch.volumes,
            slices=batch.slices,
            mask_for=self.auditor.mask_for,
            window=self.config.window,
            insert_mode=self.config.insert,
            data_range=batch.max_values,
        )
        return ctx, True

    def rescore(self, rec: dict) -> dict:
        """What ``rec``'s slice gives again: the clean metrics, ``rec``'s feature re-scored
        (every quantity), and for ``fnaf-rs`` the regenerated search (``fresh``: found,
        evaluated, accepted, control, each criterion's pick). ``status`` says when the slice
        could not be scored (``missing``, ``skipped``, ``error`` with the model's error)."""
        import torch

        from mri_audit.fnaf.engine import FnafEngine
        from mri_audit.fnaf.features import decode_features

        if (rec["volume"], int(rec["slice"])) not in self.index:
            return {"status": "missing"}
        ctx, finite = self.context(rec)
        if not finite:
            return {"status": "skipped"}
        model = next(m for m in self.auditor.models if m.name == rec["model"])
        engine = self.auditor.engines[model.name].full_precision()
        if self.precision != "fp32":  # calibration only (benchmarks/calibrate_replay.py)
            engine = FnafEngine(model.estimator, batch_size=1, precision=self.precision)
        stochastic = bool(model.estimator.call.stochastic)
        out: dict = {"status": "scored", "stochastic": stochastic}
        with model.estimator.cropping(ctx.target_shape), torch.no_grad():
            try:
                out["clean"] = self.auditor._clean_metrics(ctx, model)[0]
            except Exception as err:  # the model fails on this slice (an error record)
                return {"status": "error", "error": f"{type(err).__name__}: {err}"}
            if rec.get("kind", "fnaf") != "fnaf":
                return out
            if rec.get("found") and rec.get("feature"):
                features = decode_features([rec["feature"]], [0], device=self.device)
                scoring = engine.confirming() if stochastic else engine
                with engine.autocast():
                    scores = scoring.evaluate(ctx, features)
                out |= {q: float(getattr(scores, q)[0]) for q in (*QUANTITIES, "r_se")}
                rule = self.config.rule()
                out["score"] = float(rule.score(scores)[0])
                out["hit"] = bool(rule.hit(scores)[0])
            if rec["attack"] == "fnaf-rs":
                attack = self.auditor.attacks[(model.name, rec["attack"])]
                fresh = attack.attack(ctx, self.auditor.engines[model.name])
                out["fresh"] = {
                    "found": bool(fresh.found[0]),
                    "best": float(fresh.score[0]),
                    "evaluated": int(fresh.evaluated[0]),
                    "accepted": int(fresh.accepted[0]),
                    "control": float(fresh.control[0]),
                    "picks": {
                        name: {"score": float(p.score[0]), "found": bool(p.found[0])}
                        | {q: float(getattr(p.scores, q)[0]) for q in QUANTITIES}
                        for name, p in fresh.picks.items()
                    },
                }
        return out

    def replay(self, rec: dict) -> Outcome:
        """Re-score ``rec`` and compare it with what the journal holds."""
        where = f"{rec['model']} {rec['attack']} {rec['volume']} slice {rec['slice']}"
        values = self.rescore(rec)
        status, kind = values["status"], rec.get("kind", "fnaf")
        if status == "missing":
            return Outcome("mismatch", f"{where}: that slice is not in the data")
        if kind in ("skipped", "error"):
            if status == kind:
                return Outcome("ok", f"{where}: {kind} again")
            return Outcome("mismatch", f"{where}: recorded as {kind}, but the model ran on it")
        if status != "scored":
            return Outcome("mismatch", f"{where}: the replay was {status} ({values.get('error')})")
        off = _clean_off(rec, values["clean"])
        if kind != "fnaf":
            return Outcome("mismatch" if off else "ok", f"{where}: {'; '.join(off) or 'clean'}")
        slack = 4 * values.get("r_se", 0.0) if values["stochastic"] else 0.0
        if rec.get("found"):
            off += _quantities_off(rec, values, slack)
        fresh = values.get("fresh")
        if fresh is not None:
            off += _search_off(rec, fresh, slack)
        off += _criteria_off(rec, self.config.criterion, fresh, slack)
        threshold = _threshold(self.config.rule())
        tol = LOSS_TOLERANCE if self.config.criterion == "paper" else TOLERANCE
        near = threshold is not None and "score" in values
        near = near and within(threshold, values["score"], slack=slack, tol=tol)
        if rec.get("found") and bool(rec.get("hit")) != values["hit"] and not near:
            off.append(f"hit recorded {bool(rec.get('hit'))}, replayed {values['hit']}")
        if off:
            return Outcome("mismatch", f"{where}: {'; '.join(off)}")
        if near:
            return Outcome(
                "borderline",
                f"{where}: score {values['score']:.4g} is within tolerance of the threshold "
                f"{threshold:g} (borderline, not a failure)",
            )
        return Outcome("ok", f"{where}: every quantity within tolerance")


def _tol(q: str) -> dict:
    return LOSS_TOLERANCE if q in ("loss", "ip", "control") else TOLERANCE


def _differs(recorded, replayed: float, q: str, slack: float = 0.0) -> bool:
    if recorded is None or replayed != replayed:  # NaN (none) on either side
        return (recorded is None) != (replayed != replayed)
    return not within(float(recorded), replayed, slack=slack, tol=_tol(q))


def _clean_off(rec: dict, clean: dict) -> list[str]:
    """The clean metrics of the record against the replay's (SSIMs as fractions, squared
    errors relative)."""
    off = []
    for q, v in clean.items():
        if q == "clean_pixels" or q not in rec:
            continue
        tol = TOLERANCE if q.endswith("ssim") else {"atol": 0.0, "rtol": 1e-2}
        if rec[q] is None or not within(float(rec[q]), float(v), tol=tol):
            off.append(f"{q} recorded {_shown(rec[q])}, replayed {float(v):.4g}")
    return off


def _quantities_off(rec: dict, values: dict, slack: float) -> list[str]:
    off = [
        f"{q} recorded {_shown(rec.get(q))}, replayed {values[q]:.4g}"
        for q in QUANTITIES
        if _differs(rec.get(q), values[q], q, slack if q in ("r", "e") else 0.0)
    ]
    if values["stochastic"] and _differs(rec.get("r_se"), values["r_se"], "r_se"):
        off.append(f"r_se recorded {_shown(rec.get('r_se'))}, replayed {values['r_se']:.4g}")
    return off


def _search_off(rec: dict, fresh: dict, slack: float) -> list[str]:
    """fnaf-rs regenerated: the same candidates, the same admissible count, the same best."""
    off = []
    if bool(rec.get("found")) != fresh["found"]:
        off.append(f"found recorded {bool(rec.get('found'))}, regenerated {fresh['found']}")
    if rec.get("evaluated") != fresh["evaluated"]:
        off.append(f"evaluated recorded {rec.get('evaluated')}, regenerated {fresh['evaluated']}")
    if abs(int(rec.get("accepted") or 0) - fresh["accepted"]) > 1:
        off.append(f"accepted recorded {rec.get('accepted')}, regenerated {fresh['accepted']}")
    if _differs(rec.get("control"), fresh["control"], "control"):
        off.append(
            f"control recorded {_shown(rec.get('control'))}, regenerated {fresh['control']:.4g}"
        )
    if fresh["found"] and _differs(rec.get("score"), fresh["best"], "score", slack):
        off.append(
            f"the best regenerated candidate scores {fresh['best']:.4g}, the record's pick "
            f"{_shown(rec.get('score'))}"
        )
    return off


def _criteria_off(rec: dict, main: str, fresh: dict | None, slack: float) -> list[str]:
    """What a record's per-criterion selections (what the aggregates count) say that its
    replay does not: the audit's criterion must be the record itself; with regenerated
    candidates (``fnaf-rs``) every criterion's pick is checked too."""
    off = []
    for name, sub in (rec.get("criteria") or {}).items():
        if not isinstance(sub, dict):
            return [f"a malformed selection of criterion {name!r}"]
        if name == main:
            for q in (*QUANTITIES, "score", "found"):
                if sub.get(q) != rec.get(q):
                    off.append(
                        f"criteria.{name}.{q} is {_shown(sub.get(q))}, the record's "
                        f"{q} {_shown(rec.get(q))}"
                    )
        pick = (fresh or {}).get("picks", {}).get(name)
        if pick is None:
            continue
        if bool(sub.get("found")) != pick["found"]:
            off.append(
                f"criteria.{name}.found recorded {sub.get('found')}, regenerated {pick['found']}"
            )
            continue
        for q in (*QUANTITIES, "score"):
            if pick["found"] and _differs(sub.get(q), pick[q], q, slack):
                off.append(
                    f"criteria.{name}.{q} recorded {_shown(sub.get(q))}, regenerated {pick[q]:.4g}"
                )
    return off


def _shown(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "none"
    return f"{float(value):.4g}"


def _threshold(crit) -> float | None:
    """The value the criterion's score is compared with (its sign as the score's)."""
    params = crit.params()
    if crit.name == "erasure":
        return params["margin"]
    if crit.name == "recovery":
        return -params["min_recovery"]
    return params.get("threshold")


def replay_checks(path: Path, results: dict, n: int, nonce: str, overrides: dict) -> list:
    """The replay's lines for ``verify``: one per record, then the summary check."""
    from mri_audit.audit.reread import read_journal
    from mri_audit.errors import MriAuditError
    from mri_audit.evidence.verify import MISMATCH, Check

    head = (results.get("chain") or {}).get("head") or ""
    picked = pick_records(read_journal(path, results), head, nonce, n)
    if not picked:
        return [Check("replay", None, "the audit holds no record replay can re-check")]
    try:
        replayer = Replayer(results, overrides)
    except MriAuditError as err:
        return [Check("replay", False, str(err), err.exit_code)]
    outcomes = [replayer.replay(r) for r in picked]
    lines = [Check("replay", None, o.detail) for o in outcomes if o.status != "ok"]
    bad = [o for o in outcomes if o.status == "mismatch"]
    border = sum(o.status == "borderline" for o in outcomes)
    tol = f"|Δ| ≤ {TOLERANCE['atol']:g} + {TOLERANCE['rtol']:.0%} of the value"
    note = f", {border} borderline" if border else ""
    if bad:
        detail = f"{len(bad)} of {len(picked)} records differ beyond tolerance ({tol})"
        return [*lines, Check("replay", False, detail, MISMATCH)]
    if len(picked) < n:
        note += f"; {len(picked)} of the {n} asked for: the audit holds no more to replay"
    detail = f"replayed {len(picked)}/{len(picked)} within tolerance ({tol}){note}"
    return [*lines, Check("replay", True, detail, MISMATCH)]
