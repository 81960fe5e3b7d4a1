"""One hardening run in this process: data, model, training, the card, the before/after audit.

:func:`run` is the work behind :func:`mri_audit.harden` once its settings are checked, the
process group (``torchrun``) is joined and ``<out>``'s lock is held. It prints nothing: the
caller is told each validation entry (``on_epoch``), the end of training (``on_trained``) and what
an interruption from each point on leaves behind (``on_stage``).
"""

from __future__ import annotations

import json
import logging
import shlex
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mri_audit.errors import ModelError, UsageError
from mri_audit.harden.checks import refuse_program, refuse_untrainable
from mri_audit.harden.outputs import (
    add_audit_to_card,
    card_path,
    checkpoint_path,
    finish,
    report_folder,
    start_path,
)
from mri_audit.harden.result import HardenResult

__all__ = ["before_after_audit", "run"]

logger = logging.getLogger(__name__)

AGAIN = "run the same command with --resume to continue"


def _start_weights(c: Mapping[str, Any], model, start: Path) -> None:
    """On ``resume`` without ``weights``, start from the weights the first run started from
    (``<out>.start.pt``), not from a new constructor call."""
    if c["weights"] is None and c["resume"] and start.exists():
        from mri_audit.models.weights import load_state_dict

        try:
            model.load_state_dict(load_state_dict(start))
        except (ModelError, RuntimeError) as err:
            raise UsageError(
                f"cannot resume: the starting weights {start} do not fit the model ({err}); "
                "use another --out to start over"
            ) from None


def _config(c: Mapping[str, Any]):
    from mri_audit.harden.config import HardenConfig

    return HardenConfig(
        accels=tuple(c["accel"]),
        center_fraction=c["center_fraction"],
        mask_type=c["mask_type"],
        epochs=c["epochs"],
        steps=c["steps"],
        lr=c["lr"],
        batch_size=c["batch_size"],
        lam=c["lam"],
        feature_steps=c["feature_steps_range"],
        inner_steps=c["inner_steps"],
        candidates=c["candidates"],
        attack_fraction=c["attack_fraction"],
        recovery=c["recovery"],
        recovery_target=c["recovery_target"],
        val_candidates=c["val_candidates"],
        val_steps=c["val_steps"],
        loss=c["loss"],
        seed=c["seed"],
        amp=c["amp"],
        ssim_tolerance=c["ssim_tolerance"],
        nmse_tolerance=c["nmse_tolerance"],
        criterion=c["criterion"],
        margin=c["margin"],
        interpolate=c["interpolate"] or 0,
    )


def _open(c: Mapping[str, Any], train, device):
    """The model, loaded, dry-run on one training slice and checked to be trainable."""
    from mri_audit.data.opening import probe_batch
    from mri_audit.models.entries import ModelEntry
    from mri_audit.models.opening import open_entries
    from mri_audit.mri.physics import make_mask_func

    probe = probe_batch(train, "the training data")
    mask_func = make_mask_func(c["mask_type"], c["accel"][0], c["center_fraction"])
    entry = ModelEntry(c["model"], None, c["weights"], c["model_args"], c["input_domain"])
    (opened,) = open_entries(
        [entry],
        normalize=c["normalize"],
        device=device,
        probe=probe,
        mask_func=mask_func,
        need_gradient=True,
    )
    refuse_untrainable(opened)
    return opened


def _bars(**kw):
    """An epoch's progress bar; it gives way to the epoch's line (printed by ``on_epoch``)."""
    from tqdm import tqdm

    return tqdm(leave=False, disable=None, dynamic_ncols=True, **kw)


def _save_start(model, path: Path) -> None:
    import io

    import torch

    from mri_audit.files import atomic_write

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    atomic_write(path, buf.getvalue())


def run(
    c: Mapping[str, Any],
    env,
    device,
    *,
    progress: bool,
    command_line: list[str],
    on_epoch: Callable[[dict], None],
    on_trained: Callable[[HardenResult], None],
    on_stage: Callable[[str], None],
) -> HardenResult:
    """Train, choose the kept weights, write the card and run the before/after audit.

    Args:
        c: the checked settings (:func:`mri_audit.harden.keywords.check_keywords`).
        env, device: this process of the job and its device.
        progress: progress bars for the epochs and the audit.
        command_line: recorded in the card and the audit's ``results.json``.
        on_epoch: each validation entry, on the main process (a resumed checkpoint's first).
        on_trained: the result so far (no audit yet), on the main process, once the card is
            written.
        on_stage: what an interruption from now on leaves behind.

    Raises:
        AuditInterrupted: Ctrl-C during the before/after audit (the card is written, the
            checkpoint kept).
    """
    from mri_audit.audit.distributed import agree, broadcast
    from mri_audit.fnaf.registry import load_attack
    from mri_audit.harden.inner import training_attack_card
    from mri_audit.harden.resume import (
        checkpoint_entries,
        checkpoint_identity,
        harden_identity,
        identified_trainer,
    )
    from mri_audit.harden.splits import datasets
    from mri_audit.harden.validation import evaluation_attacks

    out = Path(c["out"])
    checkpoint, start = checkpoint_path(out), start_path(out)
    resuming = c["resume"] and checkpoint.exists()
    on_stage(
        f"{checkpoint} is unchanged; {AGAIN}"
        if resuming
        else "no epoch was finished, so there is nothing to resume; run the command again"
    )
    refuse_program(str(c["model"]))  # before the data is read or the model dry-run
    train, select, val = datasets(c)
    opened = _open(c, train, device)
    config = _config(c)
    _start_weights(c, opened.estimator.model, start)
    identity = harden_identity(c, opened, train, select)
    if resuming:
        done = checkpoint_identity(checkpoint, identity)
        on_stage(f"{checkpoint} is unchanged (epoch {done} of {config.epochs}); {AGAIN}")

    def saved(trainer) -> None:
        on_stage(f"{checkpoint} holds epoch {trainer.epoch} of {config.epochs}; {AGAIN}")

    train_model = None
    if env.enabled:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        train_model = DistributedDataParallel(
            opened.estimator.model, device_ids=ids, broadcast_buffers=False
        )
    trainer = identified_trainer(identity, on_save=saved)(
        opened.estimator,
        train,
        select,
        config,
        attack_classes={n: load_attack(n) for n in ("fnaf-rs", "fnaf-pgd")},
        checkpoint=checkpoint,
        out=out,
        progress=_bars if progress else None,
        train_model=train_model,
        rank=env.rank,
        world_size=env.world_size,
        sync=lambda obj: broadcast(env, obj),
    )
    original = c["weights"]
    if original is None:
        # A model without weights: keep its starting weights for the before/after audit.
        original = str(start)
        if env.is_main and not (c["resume"] and start.exists()):
            _save_start(opened.estimator.model, start)
    started = time.perf_counter()

    def report_epoch(entry: dict) -> None:
        if env.is_main:
            on_epoch(entry)

    if resuming and env.is_main:  # the entries of the epochs done before, then the new ones
        for entry in checkpoint_entries(checkpoint):
            report_epoch(entry)
    summary = trainer.fit(resume=c["resume"], on_epoch=report_epoch)
    on_stage(
        f"the kept weights are in {out} and {checkpoint} holds the finished training; "
        "run the same command with --resume to write the card and the before/after audit"
    )
    elapsed = time.perf_counter() - started
    agree(env, lambda: None)  # every rank has finished training
    report_out = None if c["no_report"] else report_folder(out, c["report_out"])
    result = HardenResult(
        out=out,
        original=Path(original),
        card=card_path(out) if env.is_main else None,
        checkpoint=checkpoint if env.is_main else None,
        report_out=report_out,
        config=config.to_dict(),
        start=summary["start"],
        history=list(summary["history"]),
        blends=list(summary["blends"]),
        best=summary["best"],
        seconds=elapsed,
    )
    audit_args = (c, original, val, config, opened.loaded.name, command_line)
    if not env.is_main:
        if report_out is None:
            return result
        return _with(result, audit=before_after_audit(*audit_args, progress=progress))
    card = {
        "kind": "harden",
        "command": shlex.join(str(a) for a in command_line),
        "config": config.to_dict(),
        "model": c["model"],
        "weights": c["weights"],
        "summary": summary,
        "seconds": elapsed,
        # The kept weights are chosen on `select`; the before/after audit reports `report`.
        "select_data": select.describe(),
        "training_attack": training_attack_card(config),
        "evaluation_attack": evaluation_attacks(config),
        "report_data": val.describe(),
    }
    from mri_audit.files import write_json

    write_json(card_path(out), json.loads(json.dumps(card)))
    on_trained(result)
    if report_out is not None:
        audit = before_after_audit(*audit_args, progress=progress)
        add_audit_to_card(out, report_out)
        result = _with(result, audit=audit)
    if result.exit_code == 0:
        kept = finish(out, keep=c["keep_checkpoint"], note=on_stage)
        result = _with(result, checkpoint=kept)
    return result


def _with(result: HardenResult, **changes) -> HardenResult:
    from dataclasses import replace

    return replace(result, **changes)


def before_after_audit(c, original, val, config, name, command_line, *, progress):
    """The before/after audit of the kept weights against the original, on the report data.

    Returns:
        the :class:`~mri_audit.audit.result.AuditResult`.

    Raises:
        AuditInterrupted: Ctrl-C during the audit.
    """
    from mri_audit.audit.api import audit
    from mri_audit.models.entries import ModelEntry

    out = Path(c["out"])
    args, domain = c["model_args"], c["input_domain"]
    hardened = ModelEntry(c["model"], f"{name} (hardened)", str(out), args, domain)
    return audit(
        hardened,
        compare=[ModelEntry(c["model"], f"{name} (original)", original, args, domain)],
        normalize=c["normalize"],
        data=val,
        accel=c["accel"][0],
        center_fraction=c["center_fraction"],
        mask_type=c["mask_type"],
        attacks=("fnaf-rs", "fnaf-pgd"),
        # The validation's attacks, stronger than the training's (mri_audit.harden.validation).
        candidates=config.val_candidates,
        attack_options={"fnaf-pgd": {"steps": config.val_steps}},
        feature_steps=10,
        criterion=config.criterion,
        margin=config.margin,
        min_recovery=config.min_recovery,
        threshold=config.threshold,
        ip_epsilon=config.ip_epsilon,
        window=config.window,
        insert="phase",
        seed=c["seed"],
        device=c["device"],
        out=report_folder(out, c["report_out"]),
        force=True,
        progress=progress,
        command_line=command_line,
        # Not the audit's own "records are saved" line: resuming means `harden --resume`,
        # which runs the before/after audit again (on_stage said so before it began).
        on_stage=None,
    )
