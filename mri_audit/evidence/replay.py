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

import ast
import hashlib
import logging
import random
from pathlib import Path
from typing import NamedTuple

from mri_audit.errors import UsageError

__all__ = ["TOLERANCE", "Replayer", "pick_records", "replay_checks", "within"]

logger = logging.getLogger(__name__)

TOLERANCE = {"atol": 3e-3, "rtol": 1e-2}
"""How far a replayed quantity may be from the recorded one (see the module docstring)."""
QUANTITIES = ("r", "r0", "e")


def within(recorded: float, replayed: float, *, slack: float = 0.0) -> bool:
    """Whether ``replayed`` is within :data:`TOLERANCE` (plus ``slack``) of ``recorded``."""
    bound = TOLERANCE["atol"] + TOLERANCE["rtol"] * abs(recorded) + slack
    return abs(replayed - recorded) <= bound


def pick_records(records: list[dict], head: str, nonce: str, n: int) -> list[dict]:
    """``n`` FNAF records (with a found feature) chosen by SHA-256(head, nonce), in key order."""
    from mri_audit.audit.journal import record_key

    pool = sorted(
        (r for r in records if r.get("kind", "fnaf") == "fnaf" and r.get("found")),
        key=record_key,
    )
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
        source = given if given is not None else _recorded_source(data)
        self.dataset, probe = open_data(source, data.get("max_volumes"), data.get("max_slices"))
        _same_data(data, self.dataset.describe(), given)
        self.device = resolve_device(overrides.get("device") or "auto")
        mask_func = make_mask_func(
            self.config.mask_type, self.config.accel, self.config.center_fraction
        )
        entries = _entries(results["models"], overrides)
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
            _same_model(o, e, m)
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

    def rescore(self, rec: dict) -> dict | None:
        """``rec``'s feature inserted again: its ``r``, ``r0``, ``e`` and criterion ``score``,
        and (``fnaf-rs``) ``best``, the best regenerated candidate's score; None when its slice
        is not in the data."""
        import torch

        from mri_audit.data.datasets import collate
        from mri_audit.fnaf.engine import FnafEngine
        from mri_audit.fnaf.features import decode_features, prepare_context

        pos = self.index.get((rec["volume"], int(rec["slice"])))
        if pos is None:
            return None
        batch = collate([self.dataset[pos]]).to(self.device)
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
        model = next(m for m in self.auditor.models if m.name == rec["model"])
        engine = self.auditor.engines[model.name].full_precision()
        if self.precision != "fp32":  # calibration only (benchmarks/calibrate_replay.py)
            engine = FnafEngine(model.estimator, batch_size=1, precision=self.precision)
        features = decode_features([rec["feature"]], [0], device=self.device)
        out: dict = {}
        with model.estimator.cropping(ctx.target_shape), torch.no_grad():
            scoring = engine.confirming() if model.estimator.call.stochastic else engine
            with engine.autocast():
                scores = scoring.evaluate(ctx, features)
            if rec["attack"] == "fnaf-rs":
                attack = self.auditor.attacks[(model.name, rec["attack"])]
                fresh = attack.attack(ctx, self.auditor.engines[model.name])
                out["best"] = float(fresh.score[0])
                out["picks"] = {
                    name: {"score": float(p.score[0])}
                    | {q: float(getattr(p.scores, q)[0]) for q in QUANTITIES}
                    for name, p in fresh.picks.items()
                    if bool(p.found[0])
                }
        out.update({q: float(getattr(scores, q)[0]) for q in QUANTITIES})
        rule = self.config.rule()
        out["score"] = float(rule.score(scores)[0])
        out["hit"] = bool(rule.hit(scores)[0])
        out["stochastic"] = bool(model.estimator.call.stochastic)
        return out

    def replay(self, rec: dict) -> Outcome:
        """Re-score ``rec`` and compare it with what the journal holds."""
        where = f"{rec['model']} {rec['attack']} {rec['volume']} slice {rec['slice']}"
        values = self.rescore(rec)
        if values is None:
            return Outcome("mismatch", f"{where}: that slice is not in the data")
        slack = 4 * float(rec.get("r_se") or 0.0) if values["stochastic"] else 0.0
        off = [
            f"{q} recorded {_shown(rec.get(q))}, replayed {values[q]:.4f}"
            for q in QUANTITIES
            if rec.get(q) is None or not within(float(rec[q]), values[q], slack=slack)
        ]
        if "best" in values and not within(float(rec["score"]), values["best"], slack=slack):
            off.append(
                f"the best regenerated candidate scores {values['best']:.4f}, the record's "
                f"pick {float(rec['score']):.4f}"
            )
        off += _criteria_off(rec, self.config.criterion, values, slack)
        threshold = _threshold(self.config.rule())
        near = threshold is not None and within(threshold, values["score"], slack=slack)
        if bool(rec.get("hit")) != values["hit"] and not near:
            off.append(f"hit recorded {bool(rec.get('hit'))}, replayed {values['hit']}")
        if off:
            return Outcome("mismatch", f"{where}: {'; '.join(off)}")
        if near:
            return Outcome(
                "borderline",
                f"{where}: score {values['score']:.4f} is within tolerance of the threshold "
                f"{threshold:g} (borderline, not a failure)",
            )
        return Outcome("ok", f"{where}: r, r0, e within tolerance")


def _criteria_off(rec: dict, main: str, values: dict, slack: float) -> list[str]:
    """What a record's per-criterion selections (what the aggregates count) say that its
    replay does not: the audit's criterion must be the record itself; with regenerated
    candidates (``fnaf-rs``) every criterion's pick is checked too."""
    off = []
    for name, sub in (rec.get("criteria") or {}).items():
        if not isinstance(sub, dict):
            return [f"a malformed selection of criterion {name!r}"]
        if name == main:
            for q in (*QUANTITIES, "score"):
                if sub.get(q) != rec.get(q):
                    off.append(
                        f"criteria.{name}.{q} is {_shown(sub.get(q))}, the record's "
                        f"{q} {_shown(rec.get(q))}"
                    )
        fresh = (values.get("picks") or {}).get(name)
        if fresh is None:
            continue
        for q in (*QUANTITIES, "score"):
            if sub.get(q) is None or not within(float(sub[q]), fresh[q], slack=slack):
                off.append(
                    f"criteria.{name}.{q} recorded {_shown(sub.get(q))}, regenerated {fresh[q]:.4f}"
                )
    return off


def _shown(value) -> str:
    return "none" if value is None else f"{float(value):.4f}"


def _threshold(crit) -> float | None:
    """The value the criterion's score is compared with (its sign as the score's)."""
    params = crit.params()
    if crit.name == "erasure":
        return params["margin"]
    if crit.name == "recovery":
        return -params["min_recovery"]
    return params.get("threshold")


def _recorded_source(data: dict):
    if data.get("kind") == "synthetic":
        return None
    source = data.get("source")
    if not source:
        raise UsageError("the audit records no data source; give it again with --data")
    return source


def _same_data(recorded: dict, found: dict, given) -> None:
    """Refuse data that is not the audit's (files and their hashes, or the phantoms' seed)."""
    keys = ("kind", "split", "seed", "volumes", "slices", "kspace_shapes", "noise", "files")
    for key in keys:
        if recorded.get(key) != found.get(key):
            what = (
                f"--data {given}"
                if given is not None
                else f"the recorded data {found.get('source')}"
            )
            raise UsageError(
                f"{what} is not the audit's data (its {key} differ from what results.json "
                "records); give the audit's data with --data"
            )


def _entries(models: list[dict], overrides: dict) -> list:
    from mri_audit.models.entries import ModelEntry

    specs, weights = overrides.get("models") or [], overrides.get("weights") or []
    if len(specs) > len(models) or len(weights) > len(models):
        raise UsageError(
            f"the audit has {len(models)} model(s); --model and --weights give them again in "
            "that order"
        )
    out = []
    for i, m in enumerate(models):
        spec = specs[i] if i < len(specs) else m.get("spec")
        if m.get("kind") == "object" and i >= len(specs):
            raise UsageError(
                f"model {m['name']!r} was a Python object given to mri_audit.audit(); give "
                "its spec with --model to replay it"
            )
        try:
            args = {k: ast.literal_eval(v) for k, v in (m.get("model_args") or {}).items()}
        except (ValueError, SyntaxError):
            raise UsageError(
                f"model {m['name']!r}'s constructor arguments cannot be read back from results.json"
            ) from None
        w = weights[i] if i < len(weights) else m.get("weights")
        out.append(ModelEntry(spec, m["name"], w, args, m.get("domain"), m.get("normalize")))
    return out


def _same_model(opened, entry, recorded: dict) -> None:
    from mri_audit.audit.run_setup import model_info

    found = model_info(opened, entry, recorded["name"])
    for key, what in (
        ("weights_sha256", "weights"),
        ("source_sha256", "source file"),
        ("sources", "source files"),
    ):
        if found.get(key) != recorded.get(key):
            raise UsageError(
                f"model {recorded['name']!r}: its {what} differ from the audit's (the SHA-256 "
                "results.json records); give the audited model with --model/--weights"
            )


def replay_checks(path: Path, results: dict, n: int, nonce: str, overrides: dict) -> list:
    """The replay's lines for ``verify``: one per record, then the summary check."""
    from mri_audit.audit.reread import read_journal
    from mri_audit.errors import MriAuditError
    from mri_audit.evidence.verify import MISMATCH, Check

    head = (results.get("chain") or {}).get("head") or ""
    picked = pick_records(read_journal(path, results), head, nonce, n)
    if not picked:
        return [Check("replay", False, "the audit holds no FNAF record with a feature to replay")]
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
    detail = f"replayed {len(picked)}/{len(picked)} within tolerance ({tol}){note}"
    return [*lines, Check("replay", True, detail, MISMATCH)]
