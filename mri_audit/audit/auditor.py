"""The auditor: streams slices once, attacks every model, replays features across models.

For each batch of slices it builds one :class:`SliceContext`, and for every model computes the
clean reconstruction metrics, runs every attack, then replays each model's features on every
other model (transfer). One record per (slice, model, attack) is appended to the journal as
soon as its batch is done, so an interrupted audit loses at most one batch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch

from mri_audit.audit.journal import Journal, record_key
from mri_audit.audit.progress import Progress
from mri_audit.data.batching import take_slices
from mri_audit.data.datasets import SliceBatch, collate, valid_indices
from mri_audit.errors import MriAuditError
from mri_audit.fnaf.attack import FnafAttack, result_records
from mri_audit.fnaf.criteria import DEFAULT_CRITERION, QUANTITIES, make_criterion
from mri_audit.fnaf.degradation import degradation_records
from mri_audit.fnaf.engine import FnafEngine
from mri_audit.fnaf.features import SliceContext, prepare_context
from mri_audit.models.estimator import Reconstructor
from mri_audit.mri.metrics import ssim
from mri_audit.mri.physics import make_mask_func, volume_seed

__all__ = ["AuditConfig", "AuditModel", "Auditor", "DEFAULT_ATTACKS"]

logger = logging.getLogger(__name__)

DEFAULT_ATTACKS = ("fnaf-rs", "fnaf-fd", "fnaf-pgd")


@dataclass(frozen=True)
class AuditConfig:
    """Every setting that changes an audit's numbers (stored in results.json)."""

    accel: float = 4.0
    center_fraction: float | None = None
    mask_type: str = "random"
    attacks: tuple[str, ...] = DEFAULT_ATTACKS
    candidates: int = 11
    feature_steps: int = 10
    feature: str = "walk"
    criterion: str = DEFAULT_CRITERION
    margin: float = 0.1
    min_recovery: float = 0.5
    threshold: float = 1e-3
    ip_epsilon: float = 1e-4
    window: float = 0.375
    insert: str = "phase"
    seed: int = 0
    batch_size: int = 16
    precision: str = "fp32"
    attack_options: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["attacks"] = list(self.attacks)
        return d

    def thresholds(self) -> dict:
        """The criteria's thresholds."""
        return {
            "margin": self.margin,
            "min_recovery": self.min_recovery,
            "threshold": self.threshold,
            "ip_epsilon": self.ip_epsilon,
        }

    def rule(self):
        """The audit's criterion with its thresholds."""
        return make_criterion(self.criterion, **self.thresholds())

    def attack_kwargs(self, cls: type | None = None) -> dict:
        """The shared settings an attack class takes (all of them when ``cls`` is None)."""
        kwargs = {
            "candidates": self.candidates,
            "feature_steps": self.feature_steps,
            "feature": self.feature,
            "window": self.window,
            "criterion": self.criterion,
            **self.thresholds(),
            "seed": self.seed,
            "batch_size": self.batch_size,
        }
        if cls is None:
            return kwargs
        known = set(getattr(cls, "attack_params", ()))
        return {k: v for k, v in kwargs.items() if k in known}

    def attack_settings(self, name: str, cls: type) -> dict:
        """Every keyword attack ``name`` (class ``cls``) is built with: the shared settings it
        takes, overridden by its own ``--attack-param`` values (an attack parameter wins, so
        ``fnaf-pgd.candidates=33`` sets fnaf-pgd's candidates alone)."""
        return {**self.attack_kwargs(cls), **self.attack_options.get(name, {})}


class AuditModel(NamedTuple):
    """A model under audit: its unique display name and estimator."""

    name: str
    estimator: Reconstructor


class Auditor:
    """Runs an audit over a dataset.

    Args:
        models: the models (names unique).
        dataset: slices (``SliceSample`` items).
        config: the audit settings.
        attack_classes: attack name -> class (from the registry).
        journal: where records are appended (None: keep them in memory only).
        done: keys of records already in the journal (``--resume``); their batches are skipped.
        progress: show progress bars.
    """

    def __init__(
        self,
        models: Sequence[AuditModel],
        dataset,
        config: AuditConfig,
        *,
        attack_classes: dict[str, type[FnafAttack]],
        journal: Journal | None = None,
        done: set[tuple] | None = None,
        progress: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        self.models = list(models)
        self.dataset = dataset
        self.config = config
        self.journal = journal
        self.done = done or set()
        self.progress = progress and rank == 0
        self.rank, self.world_size = rank, world_size
        self.mask_func = make_mask_func(config.mask_type, config.accel, config.center_fraction)
        self._masks: dict[tuple[str, int], object] = {}
        self.target_sum = None
        self.target_count = 0
        self.attacks = {
            (m.name, a): attack_classes[a](
                m.estimator, **config.attack_settings(a, attack_classes[a])
            )
            for m in self.models
            for a in config.attacks
        }
        self.engines = {
            m.name: FnafEngine(
                m.estimator,
                batch_size=config.batch_size,
                precision=config.precision,
            )
            for m in self.models
        }

    def mask_for(self, volume: str, num_cols: int):
        key = (volume, num_cols)
        if key not in self._masks:
            self._masks[key] = self.mask_func(num_cols, seed=volume_seed(volume))
        return self._masks[key]

    @property
    def slices_per_batch(self) -> int:
        """Slices per context: enough for two full candidate chunks."""
        return max(1, math.ceil(2 * self.config.batch_size / self.config.candidates))

    def batch_plan(self) -> list[list[int]]:
        """Dataset indices of each slice batch: consecutive valid slices of one shape (no I/O).
        Invalid slices (see :meth:`invalid_records`) are never batched."""
        plan: list[list[int]] = []
        current: list[int] = []
        key = None
        for i in valid_indices(self.dataset):
            k = self.dataset.shape_key(i)
            if current and (k != key or len(current) == self.slices_per_batch):
                plan.append(current)
                current = []
            current.append(i)
            key = k
        if current:
            plan.append(current)
        return plan

    def my_batches(self) -> list[list[int]]:
        """This rank's share of the batches (round-robin over whole batches)."""
        return self.batch_plan()[self.rank :: self.world_size]

    def run(self, on_batch: Callable[[list[dict]], None] | None = None) -> list[dict]:
        """Audit this rank's slices; returns the records computed (journal-skipped excluded)."""
        mine = self.my_batches()
        progress = Progress(
            sum(len(b) for b in mine), [m.name for m in self.models], enabled=self.progress
        )
        records: list[dict] = []
        try:
            skipped = self.invalid_records() if self.rank == 0 else []
            if skipped:
                if self.journal is not None:
                    self.journal.append(skipped)
                records.extend(skipped)
            for indices in mine:
                batch = collate([self.dataset[i] for i in indices])
                batch_records = self._run_batch(batch)
                if batch_records is None:
                    progress.update(len(batch.volumes))
                    continue
                if self.journal is not None:
                    self.journal.append(batch_records)
                records.extend(batch_records)
                if on_batch is not None:
                    on_batch(batch_records)
                progress.update(len(batch.volumes), batch_records)
        finally:
            progress.close()
        return records

    def invalid_records(self) -> list[dict]:
        """``skipped`` records (with the data's reason) of the slices that failed the data
        checks; these slices never reach a model. Already journalled ones are left out."""
        reason_of = getattr(self.dataset, "invalid_reason", None)
        if reason_of is None:
            return []
        out = []
        for i, (volume, slice_) in enumerate(self.dataset.keys()):
            reason = reason_of(i)
            if reason is None:
                continue
            out += [
                self._failure(m.name, a, volume, slice_, "skipped", reason)
                for m in self.models
                for a in self.config.attacks
            ]
        return [r for r in out if record_key(r) not in self.done]

    def _run_batch(self, batch: SliceBatch) -> list[dict] | None:
        keys = [
            (m.name, a, v, int(s))
            for m in self.models
            for a in self.config.attacks
            for v, s in zip(batch.volumes, batch.slices, strict=True)
        ]
        self._accumulate_target(batch)
        if all(k in self.done for k in keys):
            return None
        device = self.models[0].estimator.device
        batch = batch.to(device)
        finite = torch.isfinite(torch.view_as_real(batch.kspace)).flatten(1).all(1).tolist()
        out = [
            self._failure(m.name, a, v, s, "skipped", "NaN or Inf in the k-space")
            for ok, v, s in zip(finite, batch.volumes, batch.slices, strict=True)
            if not ok
            for m in self.models
            for a in self.config.attacks
        ]
        if any(finite):
            out += self._attack_batch(take_slices(batch, [i for i, ok in enumerate(finite) if ok]))
        return [r for r in out if record_key(r) not in self.done]

    def _failure(
        self, model: str, attack: str, volume: str, slice_: int, kind: str, reason: str
    ) -> dict:
        """The record of a slice that could not be audited (kept, counted, reported)."""
        return {
            "model": model,
            "attack": attack,
            "kind": kind,
            "volume": volume,
            "slice": int(slice_),
            "error": reason,
            "found": False,
            "hit": False,
            "control_hit": False,
            "evaluated": 0,
            "accepted": 0,
            "transfer": {},
        }

    def _attack_batch(self, batch: SliceBatch) -> list[dict]:
        ctx = prepare_context(
            batch.kspace,
            target_shape=tuple(batch.target.shape[-2:]),
            volumes=batch.volumes,
            slices=batch.slices,
            mask_for=self.mask_for,
            window=self.config.window,
            insert_mode=self.config.insert,
            data_range=batch.max_values,
        )
        results: dict[tuple[str, str], object] = {}
        clean: dict[str, list[dict]] = {}
        failed: list[dict] = []
        for m in self.models:
            try:  # cropped to this batch's target size, not the probe slice's
                with m.estimator.cropping(ctx.target_shape):
                    clean[m.name] = self._clean_metrics(ctx, m)
                    for a in self.config.attacks:
                        attack = self.attacks[(m.name, a)]
                        results[(m.name, a)] = attack.attack(ctx, self.engines[m.name])
            except (KeyboardInterrupt, MriAuditError):
                raise
            except Exception as err:  # a model that fails on some inputs
                for a in self.config.attacks:
                    results.pop((m.name, a), None)
                if ctx.num_slices > 1:
                    # Isolate the failing slice(s): audit this model slice by slice.
                    return self._split(batch)
                reason = f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
                logger.warning(
                    "%s failed on %s slice %d: %s",
                    m.name,
                    batch.volumes[0],
                    batch.slices[0],
                    reason,
                )
                failed += [
                    self._failure(m.name, a, batch.volumes[0], batch.slices[0], "error", reason)
                    for a in self.config.attacks
                ]
        transfer = self._transfer(ctx, results)
        out = []
        for (model, attack), result in results.items():
            kind = getattr(self.attacks[(model, attack)], "kind", "fnaf")
            to_records = result_records if kind == "fnaf" else degradation_records
            for i, rec in enumerate(to_records(ctx, result)):
                rec.update(model=model, attack=attack, kind=kind, **clean[model][i])
                rec["transfer"] = {
                    target: vals[i] for target, vals in transfer.get((model, attack), {}).items()
                }
                out.append(rec)
        return out + failed

    def _split(self, batch: SliceBatch) -> list[dict]:
        out: list[dict] = []
        for i in range(len(batch.volumes)):
            out += self._attack_batch(take_slices(batch, [i]))
        return out

    def _accumulate_target(self, batch: SliceBatch) -> None:
        """Sum of targets (for the report's mean-anatomy backdrop), where shapes agree."""
        total = batch.target.double().sum(0).cpu()
        if self.target_sum is None:
            self.target_sum = total
        elif self.target_sum.shape != total.shape:
            return
        else:
            self.target_sum += total
        self.target_count += batch.target.shape[0]

    def mean_target(self):
        """The mean target image over the audited slices (None before any batch)."""
        if self.target_sum is None:
            return None
        return (self.target_sum / max(self.target_count, 1)).float()

    def _clean_metrics(self, ctx: SliceContext, model: AuditModel) -> list[dict]:
        recon = self.engines[model.name].clean_reconstruction(ctx)
        err = (recon - ctx.target).square().flatten(1)
        values = {
            "data_range": ctx.data_range,
            "clean_ssim": ssim(recon, ctx.target, ctx.data_range),
            "clean_sq_err": err.sum(1),
            "clean_sq_norm": ctx.target.square().flatten(1).sum(1),
        }
        # The zero-filled baseline on the same slices (for "worse than zero-filling" warnings).
        zf_err = (ctx.zero_filled - ctx.target).square().flatten(1)
        values["zf_ssim"] = ssim(ctx.zero_filled, ctx.target, ctx.data_range)
        values["zf_sq_err"] = zf_err.sum(1)
        host = {k: v.double().tolist() for k, v in values.items()}
        npix = int(ctx.target.shape[-1] * ctx.target.shape[-2])
        return [
            {**{k: host[k][i] for k in host}, "clean_pixels": npix} for i in range(ctx.num_slices)
        ]

    def _transfer(self, ctx, results) -> dict[tuple[str, str], dict[str, list]]:
        """Replay each model's found features on every other model (quantities and the hit
        under the audit's criterion)."""
        out: dict[tuple[str, str], dict[str, list]] = {}
        if len(self.models) < 2:
            return out
        rule = self.config.rule()
        for (source, attack), result in results.items():
            if getattr(self.attacks[(source, attack)], "kind", "fnaf") != "fnaf":
                continue
            found = result.found.nonzero().squeeze(1)
            per_target = {}
            for m in self.models:
                if m.name == source:
                    continue
                values: list = [None] * ctx.num_slices
                if found.numel():
                    # Replays are scored in fp32, as the records they are compared with.
                    engine = self.engines[m.name].full_precision()
                    scores = engine.evaluate(ctx, result.features.take(found))
                    host = {q: getattr(scores, q).tolist() for q in QUANTITIES}
                    host["score"] = rule.score(scores).tolist()
                    host["hit"] = rule.hit(scores).tolist()
                    for j, i in enumerate(found.tolist()):
                        values[i] = {k: _finite_or_none(v[j]) for k, v in host.items()}
                per_target[m.name] = values
            out[(source, attack)] = per_target
        return out


def _finite_or_none(v):
    """Plain JSON values: NaN as None, bools kept."""
    return None if isinstance(v, float) and v != v else v
