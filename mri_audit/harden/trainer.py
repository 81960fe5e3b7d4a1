"""FNAF-robust fine-tuning (``mri-audit harden``), min-max as in the FNAF paper.

Each step finds FNAFs against the *current* weights on part of the batch (random candidates
with walk lengths drawn from a range, refined by ``inner_steps`` of ``fnaf-pgd``; see
:mod:`mri_audit.harden.inner`), then takes one optimiser step on

    loss = clean loss + λ · (loss on Ω + whole-image loss) + β · recovery term,

with gradients cleared once per step (the reference code applied the clean gradient twice).
Each epoch ends with validation (SSIM/NMSE/PSNR and the rates of a stronger ``fnaf-rs`` and
``fnaf-pgd``, :mod:`mri_audit.harden.validation`) and an atomic checkpoint; the best epoch by
``fnaf-pgd`` rate among those within ``ssim_tolerance`` of the starting model's SSIM is written
to the output weights. Every random draw is keyed by (seed, epoch,
step, ...), so a resumed run gives the same weights as an uninterrupted one.

With ``interpolate`` > 0 the run ends with weight-space blends of the starting and final weights
(WiSE-FT, see ``mri_audit.harden.blending``), validated like epochs and competing with them for
the kept weights.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mri_audit.data.datasets import collate, valid_indices
from mri_audit.files import atomic_write
from mri_audit.fnaf.engine import FnafEngine
from mri_audit.harden.blending import blend_alphas, blend_weights
from mri_audit.harden.config import HardenConfig, within_tolerance
from mri_audit.harden.inner import (
    attacked_slices,
    batch_context,
    feature_loss,
    training_attack,
)
from mri_audit.harden.losses import LOSSES, image_loss
from mri_audit.harden.validation import validate
from mri_audit.models.estimator import Reconstructor
from mri_audit.mri.physics import Mask, make_mask_func, volume_seed
from mri_audit.rng import mix_seed

__all__ = ["HardenConfig", "Trainer"]

logger = logging.getLogger(__name__)


class Trainer:
    """Fine-tunes one model against FNAFs.

    Args:
        estimator: the model and its forward operator (its parameters' ``requires_grad`` say
            which are trained; frozen ones stay unchanged).
        train_set, val_set: datasets of ``SliceSample``; only their valid slices
            (``valid_indices()``) are ever trained or validated on.
        config: the run's settings.
        attack_classes: ``{"fnaf-rs": cls, "fnaf-pgd": cls}`` from the registry.
        checkpoint: path of the resumable checkpoint.
        out: where the best weights go (a state dict).
        progress: a ``tqdm``-like factory or None.
    """

    def __init__(
        self,
        estimator: Reconstructor,
        train_set,
        val_set,
        config: HardenConfig,
        *,
        attack_classes: dict[str, type],
        checkpoint: Path,
        out: Path,
        progress: Callable | None = None,
        train_model: torch.nn.Module | None = None,
        rank: int = 0,
        world_size: int = 1,
        sync: Callable[[object], object] | None = None,
    ) -> None:
        if config.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {config.loss!r}")
        self.est = estimator
        self.model = estimator.model
        self.train_set, self.val_set = train_set, val_set
        self.train_indices = valid_indices(train_set)  # invalid slices are never trained on
        self.config = config
        self.attack_classes = attack_classes
        self.checkpoint, self.out = Path(checkpoint), Path(out)
        self.progress = progress if rank == 0 else None
        self.rank, self.world_size = rank, world_size
        self.sync = sync or (lambda obj: obj)
        # The outer step may go through a DistributedDataParallel wrapper of the same model.
        self.train_est = self.est
        if train_model is not None:
            self.train_est = Reconstructor(
                train_model,
                input_domain=estimator.input_domain,
                target_shape=estimator.target_shape,
                normalize=estimator.normalize,
                device=estimator.device,
                name=estimator.name,
            )
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no trainable parameters")
        self.optimizer = torch.optim.Adam(self.params, lr=config.lr)
        self.device = estimator.device
        use_scaler = config.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.mask_funcs = {
            a: make_mask_func(config.mask_type, a, config.center_fraction) for a in config.accels
        }
        global_batch = config.batch_size * world_size
        self.steps_per_epoch = config.steps or max(1, len(self.train_indices) // global_batch)
        self.history: list[dict] = []
        self.blends: list[dict] | None = None
        # The weights before any step (loaded checkpoints replace the model's, not these).
        self.start_weights = (
            {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            if config.interpolate
            else None
        )
        self.start: dict | None = None
        self.best: dict | None = None
        self.epoch = 0

    # ------------------------------------------------------------------ sampling
    def _batch_indices(self, epoch: int, step: int) -> list[int]:
        valid = self.train_indices
        order = np.random.default_rng(mix_seed(self.config.seed, 1, epoch)).permutation(len(valid))
        b = self.config.batch_size
        global_b = b * self.world_size
        start = (step * global_b) % max(1, len(order))
        picked = np.resize(np.roll(order, -start), global_b)
        # Each rank takes its own part of the step's global batch.
        return [valid[int(i)] for i in picked[self.rank * b : (self.rank + 1) * b]]

    def _train_masks(self, epoch: int, step: int) -> Callable[[str, int], Mask]:
        accels = self.config.accels

        def mask_for(volume: str, num_cols: int) -> Mask:
            key = mix_seed(self.config.seed, 2, epoch, step, *volume_seed(volume))
            accel = accels[key % len(accels)]
            return self.mask_funcs[accel](num_cols, seed=key % (2**32))

        return mask_for

    # ------------------------------------------------------------------ one step
    def train_step(self, epoch: int, step: int) -> dict[str, float]:
        cfg = self.config
        samples = [self.train_set[i] for i in self._batch_indices(epoch, step)]
        mask_for = self._train_masks(epoch, step)
        ctx = batch_context(collate(samples).to(self.device), mask_for, cfg)
        key = mix_seed(cfg.seed, 5, epoch, step)
        part = attacked_slices(len(samples), cfg.attack_fraction, key)
        sub = (
            ctx
            if len(part) == len(samples)
            else batch_context(collate([samples[i] for i in part]).to(self.device), mask_for, cfg)
        )
        seed = mix_seed(cfg.seed, 3, epoch, step) % (2**31)
        attack = training_attack(self.est, cfg, self.attack_classes, seed=seed)
        result = attack.attack(sub, FnafEngine(self.est, batch_size=cfg.candidate_batch))
        self.model.train()
        torch.manual_seed(mix_seed(cfg.seed, 4, epoch, step))  # dropout and the like
        self.optimizer.zero_grad(set_to_none=True)
        amp = (
            torch.autocast(
                self.device.type,
                dtype=torch.bfloat16 if self.device.type == "cpu" else torch.float16,
            )
            if cfg.amp
            else contextlib.nullcontext()
        )

        # The outer step goes through train_est: under torchrun its model is the
        # DistributedDataParallel wrapper, which averages the gradients across processes.
        def reconstruct(kspace, mask):
            return self.train_est.reconstruct(
                kspace, mask, num_low_frequencies=ctx.num_low_frequencies
            )

        with amp, self.train_est.cropping(ctx.target_shape):  # this batch's target size
            clean = reconstruct(ctx.kspace * ctx.mask, ctx.mask).float()
            loss_clean = image_loss(cfg.loss, clean, ctx.target, ctx.t_std, ctx.data_range)
            index = torch.as_tensor(part, device=clean.device)
            loss_feat, loss_rec = feature_loss(reconstruct, sub, result, clean[index], cfg)
            loss = loss_clean + cfg.lam * loss_feat + cfg.recovery * loss_rec
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {
            "loss": float(loss.detach()),
            "clean": float(loss_clean.detach()),
            "fnaf": float(loss_feat.detach()),
            "recovery": float(loss_rec.detach()),
            "hits": float(result.hit.float().mean()),
        }

    # ------------------------------------------------------------------ validation
    def validate(self) -> dict[str, float]:
        """Validation on rank 0, shared with every rank."""
        return self.sync(self._validate() if self.rank == 0 else None)

    def _validate(self) -> dict[str, float]:
        """Clean metrics and the ``fnaf-rs`` and ``fnaf-pgd`` rates on the validation set."""
        cfg = self.config
        func = self.mask_funcs[cfg.accels[0]]
        return validate(self.est, self.val_set, cfg, self.attack_classes, func)

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        return {
            "format": "mri-audit-harden-1",
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "history": self.history,
            "blends": self.blends,
            "start": self.start,
            "best": self.best,
            "config": self.config.to_dict(),
        }

    def save_checkpoint(self) -> None:
        if self.rank != 0:
            return
        buf = io.BytesIO()
        torch.save(self.state(), buf)
        atomic_write(self.checkpoint, buf.getvalue())

    def load_checkpoint(self) -> None:
        state = torch.load(self.checkpoint, map_location=self.device, weights_only=True)
        if state.get("format") != "mri-audit-harden-1":
            raise ValueError(f"{self.checkpoint} is not an mri-audit harden checkpoint")
        # Older files lack newer keys; one without a threat-model version counted version-1 hits.
        saved = {**HardenConfig().to_dict(), "threat_model": 1, **state["config"]}
        if saved != self.config.to_dict():
            diff = sorted(k for k in saved if saved[k] != self.config.to_dict().get(k))
            raise ValueError(f"the checkpoint was made with other settings ({', '.join(diff)})")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.history = int(state["epoch"]), list(state["history"])
        self.blends = state.get("blends")
        self.start, self.best = state["start"], state["best"]

    def _save_weights(self) -> None:
        if self.rank != 0:
            return
        buf = io.BytesIO()
        torch.save(self.model.state_dict(), buf)
        atomic_write(self.out, buf.getvalue())

    # ------------------------------------------------------------------ the loop
    def fit(self, *, resume: bool = False, on_epoch: Callable[[dict], None] | None = None) -> dict:
        """Train for the configured epochs; returns the history and the chosen epoch.

        Args:
            resume: continue from the checkpoint when there is one.
            on_epoch: called with each epoch's validation entry (and once with the start).
        """
        cfg = self.config
        if resume and self.checkpoint.exists():
            self.load_checkpoint()
            logger.info("resuming after epoch %d", self.epoch)
        if self.start is None:
            self.start = self.validate()
            logger.info("start: %s", self.start)
            if on_epoch is not None:
                on_epoch({"epoch": 0, **self.start})
        while self.epoch < cfg.epochs:
            epoch = self.epoch
            bar = (
                self.progress(
                    total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step"
                )
                if self.progress
                else None
            )
            losses = []
            for step in range(self.steps_per_epoch):
                losses.append(self.train_step(epoch, step))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        loss=f"{losses[-1]['loss']:.3f}", hits=f"{losses[-1]['hits']:.0%}"
                    )
            val = self.validate()
            if bar is not None:
                bar.set_postfix(
                    loss=f"{np.mean([x['loss'] for x in losses]):.3f}",
                    attack_rate=f"{val['attack_rate']:.0%}",
                    ssim=f"{val['ssim']:.4f}",
                )
                bar.close()
            self.epoch = epoch + 1
            entry = {
                "epoch": self.epoch,
                **val,
                "train_loss": float(np.mean([x["loss"] for x in losses])),
                "train_hits": float(np.mean([x["hits"] for x in losses])),
            }
            self.history.append(entry)
            logger.info("epoch %d: %s", self.epoch, entry)
            if on_epoch is not None:
                on_epoch(entry)
            self._consider(entry)
            self.save_checkpoint()
        if cfg.interpolate and self.blends is None:
            self._interpolate(on_epoch)
        return {
            "start": self.start,
            "history": self.history,
            "blends": self.blends or [],
            "best": self.best,
        }

    def _consider(self, entry: dict, *, fallback_ok: bool = True) -> None:
        """Keep the model's current weights if ``entry`` beats the best so far.

        Best: the lowest ``fnaf-pgd`` rate among eligible entries, then the lowest ``fnaf-rs``
        rate, then the higher SSIM. Until an
        entry is eligible the latest one is kept, flagged ``fallback``.
        """
        if within_tolerance(entry, self.start, self.config):
            best = self.best
            if best is None or best.get("fallback") or _rank(entry) < _rank(best):
                self.best = {**entry}
                self._save_weights()
        elif fallback_ok and (self.best is None or self.best.get("fallback")):
            self.best = {**entry, "fallback": True}
            self._save_weights()

    def _interpolate(self, on_epoch: Callable[[dict], None] | None) -> None:
        """Validate blends of the starting and final weights; they compete for the kept weights."""
        final = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        blends = []
        try:
            for alpha in blend_alphas(self.config.interpolate):
                with torch.no_grad():
                    self.model.load_state_dict(blend_weights(self.start_weights, final, alpha))
                entry = {"epoch": self.epoch, "alpha": alpha, **self.validate()}
                blends.append(entry)
                logger.info("blend %.3f: %s", alpha, entry)
                if on_epoch is not None:
                    on_epoch(entry)
                # A blend never displaces the final epoch as the fallback.
                self._consider(entry, fallback_ok=False)
        finally:
            self.model.load_state_dict(final)
        self.blends = blends
        self.save_checkpoint()


def _rank(entry: dict) -> tuple[float, float, float]:
    """Lower is better: the strongest attack's rate, then ``fnaf-rs``'s, then -SSIM."""
    return (entry["attack_rate"], entry.get("rs_rate", entry["attack_rate"]), -entry["ssim"])
