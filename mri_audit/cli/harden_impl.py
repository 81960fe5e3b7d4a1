"""The work behind ``mri-audit harden``."""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import time
from pathlib import Path

import click

from mri_audit.cli.harden_checks import refuse_program, refuse_untrainable
from mri_audit.errors import ModelError, UsageError

logger = logging.getLogger(__name__)

EXIT_INTERRUPTED = 130


def _datasets(opts):
    """``(train, select, report)``: training data, the held-out slices the kept epoch or blend is
    chosen on, and the held-out slices the before/after audit reports (never the same)."""
    from mri_audit.data.datasets import (
        BUILTIN_SELECT,
        BUILTIN_TRAIN,
        BUILTIN_VAL,
        SliceDataset,
        SyntheticDataset,
    )
    from mri_audit.data.fastmri_io import resolve_files

    lim = {"max_volumes": opts["max_volumes"], "max_slices": opts["max_slices"]}
    val_lim = {"max_slices": opts["max_slices"]}
    if opts["data"] is None:
        train = SyntheticDataset(split="train", **BUILTIN_TRAIN, **lim)
        select = SyntheticDataset(split="select", **BUILTIN_SELECT)
        report = (
            SliceDataset(opts["val_data"], **val_lim)
            if opts["val_data"] is not None
            else SyntheticDataset(split="val", **BUILTIN_VAL)
        )
        return train, select, report
    files = resolve_files(opts["data"])
    if opts["val_data"] is not None:
        shared = {p.resolve() for p in files} & {
            p.resolve() for p in resolve_files(opts["val_data"])
        }
        if shared:
            raise ValueError(
                f"--val-data shares {len(shared)} file(s) with --data (e.g. "
                f"{sorted(shared)[0].name}): the before/after audit must report volumes the "
                "model was neither trained nor chosen on"
            )
    parts = 2 if opts["val_data"] is not None else 3
    if len(files) < parts:
        need = "a second one to choose the kept weights on" if parts == 2 else "two held out"
        raise ValueError(
            f"--data needs at least {parts} volumes ({need}: one to choose the kept weights "
            "on, one for the before/after audit); or give more volumes"
        )
    held = max(1, len(files) // 10)
    if opts["val_data"] is not None:
        train = SliceDataset(files[:-held], **lim)
        return (
            train,
            SliceDataset(files[-held:], **val_lim),
            SliceDataset(opts["val_data"], **val_lim),
        )
    train = SliceDataset(files[: -2 * held], **lim)
    select = SliceDataset(files[-2 * held : -held], **val_lim)
    return train, select, SliceDataset(files[-held:], **val_lim)


def execute(opts: dict, command_line: list[str] | None = None) -> int:
    """Run ``harden`` with parsed options; ``command_line`` is recorded in the card and report.

    The main process holds the lock of ``--out``'s folder for the whole run, so a second
    ``harden`` (or ``run``) on it is refused with one line naming the holder.
    """
    from mri_audit.audit.distributed import init_distributed, shutdown

    env, device = init_distributed(opts["device"])
    finished = False
    try:
        with contextlib.ExitStack() as stack:
            if env.is_main:
                stack.enter_context(_lock(Path(opts["out"])))
            code = _execute(opts, env, device, command_line or ["mri-audit", "harden"])
        finished = True
        return code
    finally:
        shutdown(env, wait=finished)


def _lock(out: Path):
    """The exclusive lock of the weights file ``--out`` (a lock file beside it)."""
    from mri_audit.audit.outlock import hold_lock

    folder = out.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass  # hold_lock says in one line why the folder cannot be used
    return hold_lock(folder, "mri-audit harden", name=f".{out.name}.mri-audit.lock", label=str(out))


def _note(saved: str) -> None:
    """What an interruption (Ctrl-C) from now on leaves behind (printed by the CLI group)."""
    from mri_audit.cli import on_interrupt

    on_interrupt(saved)


def _start_weights(opts: dict, model, start_path: Path) -> None:
    """On ``--resume`` without ``--weights``, start from the weights the first run started
    from (``<out>.start.pt``), not from a new constructor call."""
    if opts["weights"] is None and opts["resume"] and start_path.exists():
        from mri_audit.models.weights import load_state_dict

        try:
            model.load_state_dict(load_state_dict(start_path))
        except (ModelError, RuntimeError) as err:
            raise UsageError(
                f"cannot resume: the starting weights {start_path} do not fit the model ({err}); "
                "use another --out to start over"
            ) from None


def _execute(opts: dict, env, device, command_line: list[str]) -> int:
    from tqdm import tqdm

    from mri_audit.audit.distributed import agree, broadcast
    from mri_audit.cli.harden_resume import (
        checkpoint_entries,
        checkpoint_identity,
        harden_identity,
        identified_trainer,
    )
    from mri_audit.data.opening import probe_batch
    from mri_audit.fnaf.registry import load_attack
    from mri_audit.harden.config import HardenConfig
    from mri_audit.models.opening import open_models
    from mri_audit.mri.physics import make_mask_func

    out = Path(opts["out"])
    checkpoint = out.with_suffix(out.suffix + ".ckpt")
    resuming = opts["resume"] and checkpoint.exists()
    again = "run the same command with --resume to continue"
    _note(
        f"{checkpoint} is unchanged; {again}"
        if resuming
        else "no epoch was finished, so there is nothing to resume; run the command again"
    )
    refuse_program(str(opts["model_spec"]))  # before the data is read or the model dry-run
    train, select, val = _datasets(opts)
    probe = probe_batch(train, "the training data")
    accels = tuple(opts["accel"])
    mask_func = make_mask_func(opts["mask_type"], accels[0], opts["center_fraction"])
    (opened,) = open_models(
        [(opts["model_spec"], opts["weights"])],
        model_args=opts["model_args"],
        input_domain=opts["input_domain"],
        normalize=opts["normalize"],
        device=device,
        probe=probe,
        mask_func=mask_func,
        need_gradient=True,
    )
    refuse_untrainable(opened)
    config = HardenConfig(
        accels=accels,
        center_fraction=opts["center_fraction"],
        mask_type=opts["mask_type"],
        epochs=opts["epochs"],
        steps=opts["steps"],
        lr=opts["lr"],
        batch_size=opts["batch_size"],
        lam=opts["lam"],
        feature_steps=opts["feature_steps_range"],
        inner=opts["inner"],
        candidates=opts["candidates"],
        loss=opts["loss"],
        seed=opts["seed"],
        amp=opts["amp"],
        ssim_tolerance=opts["ssim_tolerance"],
        nmse_tolerance=opts.get("nmse_tolerance"),
        criterion=opts.get("criterion", "erasure"),
        margin=opts.get("margin", 0.1),
        interpolate=opts.get("interpolate") or 0,
    )
    start_path = out.with_suffix(out.suffix + ".start.pt")
    _start_weights(opts, opened.estimator.model, start_path)
    identity = harden_identity(opts, opened, train, select)
    if resuming:
        done = checkpoint_identity(checkpoint, identity)
        _note(f"{checkpoint} is unchanged (epoch {done} of {config.epochs}); {again}")

    def saved(trainer) -> None:
        _note(f"{checkpoint} holds epoch {trainer.epoch} of {config.epochs}; {again}")

    attack_classes = {n: load_attack(n) for n in ("fnaf-rs", "fnaf-pgd")}
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
        attack_classes=attack_classes,
        checkpoint=checkpoint,
        out=out,
        # The bar gives way to the epoch's line (printed once, by report_epoch).
        progress=lambda **kw: tqdm(leave=False, disable=None, dynamic_ncols=True, **kw),
        train_model=train_model,
        rank=env.rank,
        world_size=env.world_size,
        sync=lambda obj: broadcast(env, obj),
    )
    original = opts["weights"]
    if original is None:
        # A model without --weights: keep its starting weights for the before/after audit.
        original = str(start_path)
        if env.is_main and not (opts["resume"] and start_path.exists()):
            import io

            import torch

            from mri_audit.files import atomic_write

            buf = io.BytesIO()
            torch.save(opened.estimator.model.state_dict(), buf)
            atomic_write(original, buf.getvalue())
    started = time.perf_counter()

    def report_epoch(entry: dict) -> None:
        if env.is_main:
            click.echo(epoch_line(entry))

    if resuming and env.is_main:  # the lines of the epochs done before, then the new ones
        for entry in checkpoint_entries(checkpoint):
            report_epoch(entry)
    summary = trainer.fit(resume=opts["resume"], on_epoch=report_epoch)
    _note(
        f"the kept weights are in {out} and {checkpoint} holds the finished training; "
        "run the same command with --resume to write the card and the before/after audit"
    )
    elapsed = time.perf_counter() - started
    agree(env, lambda: None)  # every rank has finished training
    if not env.is_main:
        if opts["no_report"]:
            return 0
        return _audit(opts, original, val, config, accels, opened.loaded.name, command_line)
    best = summary["best"]
    note = (
        " (nothing kept SSIM and NMSE within tolerance: last epoch written)"
        if best.get("fallback")
        else ""
    )
    click.echo(f"kept {_describe(best)} -> {out}{note} ({elapsed:.0f} s)")
    card = {
        "kind": "harden",
        "command": shlex.join(str(a) for a in command_line),
        "config": config.to_dict(),
        "model": opts["model_spec"],
        "weights": opts["weights"],
        "summary": summary,
        "seconds": elapsed,
        # The kept weights are chosen on `select`; the before/after audit reports `report`.
        "select_data": select.describe(),
        "report_data": val.describe(),
    }
    from mri_audit.files import write_json

    write_json(out.with_suffix(out.suffix + ".json"), json.loads(json.dumps(card)))
    code = 0
    if not opts["no_report"]:
        click.echo(f"before/after audit on the validation data -> {_report_out(opts)}/")
        code = _audit(opts, original, val, config, accels, opened.loaded.name, command_line)
        if code != EXIT_INTERRUPTED:
            add_audit_to_card(out, _report_out(opts))
    if code == 0:
        _finished(out, checkpoint, keep=bool(opts.get("keep_checkpoint")))
    return code


def _finished(out: Path, checkpoint: Path, *, keep: bool) -> None:
    """After a successful run: remove the checkpoint unless ``keep`` (an interrupted or failed
    run never gets here, so its checkpoint stays for ``--resume``)."""
    card = out.with_suffix(out.suffix + ".json")
    _note(f"the run has finished: the kept weights are in {out}, the card in {card}")
    if not keep:
        with contextlib.suppress(FileNotFoundError):
            checkpoint.unlink()
        logger.info("removed %s: the run has finished (--keep-checkpoint keeps it)", checkpoint)


def add_audit_to_card(out: Path, report_out: Path) -> None:
    """Add the weights' sha256 and the before/after audit's figures to ``<out>.json``."""
    from mri_audit.files import write_json
    from mri_audit.hashing import sha256_file

    card_path = out.with_suffix(out.suffix + ".json")
    results_path = Path(report_out) / "results.json"
    if not (card_path.exists() and results_path.exists()):
        return
    card = json.loads(card_path.read_text())
    results = json.loads(results_path.read_text())
    card["sha256"] = sha256_file(out)
    card["before_after_audit"] = {"clean": results["clean"], "attacks": results["attacks"]}
    write_json(card_path, card)


def epoch_line(entry: dict) -> str:
    """The line of one validated epoch, blend or the start (printed once, as it is done)."""
    loss = f"  train loss {entry['train_loss']:.4f}" if "train_loss" in entry else ""
    return (
        f"{_label(entry):<11} SSIM {entry['ssim']:.4f}  NMSE {entry['nmse']:.5f}  "
        f"fnaf-rs attack rate {entry['attack_rate']:.1%}{loss}"
    )


def _label(entry: dict) -> str:
    """``start``, ``epoch 3`` or ``blend 0.60`` (a WiSE-FT blend of start and final weights)."""
    if "alpha" in entry:
        return f"blend {entry['alpha']:.2f}"
    return "start" if entry["epoch"] == 0 else f"epoch {entry['epoch']}"


def _describe(best: dict) -> str:
    """The kept weights in words."""
    if "alpha" in best:
        a = best["alpha"]
        return f"the blend {1 - a:.2f}*start + {a:.2f}*epoch {best['epoch']}"
    return f"epoch {best['epoch']}"


def _report_out(opts) -> Path:
    return Path(opts["report_out"] or str(opts["out"]) + ".audit")


def _audit(opts, original, val, config, accels, name, command_line) -> int:
    """The before/after audit of the kept weights against the original, on the report data."""
    from mri_audit.audit.api import AuditInterrupted, audit
    from mri_audit.cli import on_interrupt
    from mri_audit.models.entries import ModelEntry, with_arguments

    out, report_out = Path(opts["out"]), _report_out(opts)
    entries = with_arguments(
        [
            ModelEntry(
                opts["model_spec"], f"{name} (hardened)", str(out), {}, opts["input_domain"]
            ),
            ModelEntry(opts["model_spec"], f"{name} (original)", original),
        ],
        opts["model_args"],
    )
    try:
        result = audit(
            entries[0],
            compare=entries[1:],
            normalize=opts["normalize"],
            data=val,
            accel=accels[0],
            center_fraction=opts["center_fraction"],
            mask_type=opts["mask_type"],
            attacks=("fnaf-rs", "fnaf-pgd"),
            candidates=11,
            feature_steps=10,
            criterion=config.criterion,
            margin=config.margin,
            min_recovery=config.min_recovery,
            threshold=config.threshold,
            ip_epsilon=config.ip_epsilon,
            window=config.window,
            insert="phase",
            seed=opts["seed"],
            device=opts["device"],
            out=report_out,
            force=True,
            progress=True,
            command_line=command_line,
            on_stage=on_interrupt,
        )
    except AuditInterrupted:
        return EXIT_INTERRUPTED
    from mri_audit.cli.run_impl import show_result

    show_result(result)
    return result.exit_code
