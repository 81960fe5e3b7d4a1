"""The library entry point: ``mri_audit.audit(model, ...) -> AuditResult``.

The CLI's ``run`` and ``harden``'s before/after audit both call :func:`audit`. It loads and
dry-runs every model, streams the data once through every attack (journal first, so an
interrupted audit resumes), recounts the aggregates from the records and returns an
:class:`~mri_audit.audit.result.AuditResult`; with ``out`` every file is written there.

Example::

    import mri_audit

    result = mri_audit.audit("examples/unet.py:UNet", weights="examples/weights/unet_4x.pt",
                             accel=4, max_volumes=2, attacks=("fnaf-rs",))
    print(result.verdict["status"], result.attacks)
    result.records.head()           # one row per (slice, model, attack), as records.csv
    result.write("my-audit")        # results.json, records.csv, report.html, ...
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from torch import nn

from mri_audit.audit.auditor import DEFAULT_ATTACKS
from mri_audit.audit.keywords import KEYWORDS, SETTINGS, check_keywords, model_entry
from mri_audit.audit.result import AuditResult
from mri_audit.audit.run_setup import (
    apply_samples,
    attack_classes_for,
    check_attacks,
    claim_out,
    model_info,
    read_records,
    stored_batch_size,
    versions,
)
from mri_audit.errors import UsageError
from mri_audit.models.entries import ModelEntry, check_files, with_arguments

__all__ = ["audit", "AuditInterrupted", "ModelLike"]


logger = logging.getLogger(__name__)

ModelLike = str | nn.Module | ModelEntry
"""A model to audit: a spec (``path/to/file.py:Name``, ``package.module:Name``, a ``.pt2`` or
TorchScript file), a constructed ``nn.Module``, or a :class:`ModelEntry` with its own settings."""


class AuditInterrupted(KeyboardInterrupt):
    """Ctrl-C while the attacks ran: ``saved`` records are in the journal of ``out``."""

    def __init__(self, out: Path | None, saved: int) -> None:
        super().__init__(f"{saved} records are saved in {out}")
        self.out, self.saved = out, saved


def audit(
    model: ModelLike,
    *,
    weights: str | Path | None = None,
    name: str | None = None,
    model_args: Sequence[str] | Mapping[str, Any] = (),
    input_domain: str | None = None,
    normalize: str = "instance",
    compare: Sequence[ModelLike | tuple] = (),
    data: str | Path | Any | None = None,
    max_volumes: int | None = None,
    max_slices: int | None = None,
    accel: float = 4,
    center_fraction: float | None = None,
    mask_type: str = "random",
    attacks: Sequence[str] = DEFAULT_ATTACKS,
    attack_options: Mapping[str, Mapping[str, Any]] | None = None,
    criterion: str = "erasure",
    margin: float = 0.1,
    min_recovery: float = 0.5,
    threshold: float = 1e-3,
    ip_epsilon: float = 1e-4,
    candidates: int = 11,
    feature: str = "walk",
    feature_steps: int | tuple[int, int] = 10,
    feature_size: float | None = None,
    feature_width: float | None = None,
    window: float = 0.375,
    insert: str = "phase",
    seed: int = 0,
    device: str = "auto",
    batch_size: int | None = None,
    precision: str = "fp32",
    compile_model: bool = False,
    max_attack_rate: float | None = None,
    recovery_map: bool = False,
    samples: int | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    sign: str | Path | None = None,
    progress: bool = False,
    command_line: Sequence[str] | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> AuditResult:
    """Audit ``model`` (and the ``compare`` models) for false negatives with FNAF attacks.

    Every default is the CLI's (DESIGN §4); the names are ``mri-audit run``'s options.

    Args:
        model: the model to audit (:data:`ModelLike`); ``weights``, ``name``, ``model_args``
            (``["k=v"]``, ``{"k": v}`` or ``NAME:k=v``) and ``input_domain`` are its settings.
        compare: more models audited on the same slices (specs, ``(spec, weights)`` pairs,
            modules or :class:`ModelEntry`); transfer is measured between all of them.
        data: a fastMRI ``.h5`` file or folder, a dataset object, or None for the built-in
            phantoms; ``max_volumes``/``max_slices`` limit it.
        accel, center_fraction, mask_type: the undersampling.
        attacks, attack_options: registered attack names and per-attack parameters.
        criterion, margin, min_recovery, threshold, ip_epsilon: the criterion and thresholds.
        candidates, feature, feature_steps, feature_size, feature_width, window, insert: the
            threat model.
        seed: every random draw is keyed by (seed, volume, slice, candidate).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        batch_size: candidates per model batch (None: measured on a GPU, 16 on a CPU).
        precision: ``fp32``, ``bf16`` or ``fp16`` for the search (picks rescored in fp32).
        max_attack_rate: the gate (``verdict``); None for none.
        recovery_map: add the feature-recovery map (default grid) to the results.
        samples: reconstructions averaged per input for a stochastic model (None: 8; refused
            when every model is deterministic).
        out: write the journal as the audit goes and every file at the end into this folder
            (None: a temporary journal; call :meth:`AuditResult.write` to keep the files).
        resume, force: continue the audit in ``out``, or replace it.
        sign: an Ed25519 private key file (``mri-audit keygen``): sign the chain head and the
            files' manifest into ``out/signature.json`` (needs the ``sign`` extra).
        progress: progress bars (or log lines without a terminal).
        command_line: recorded in ``results.json`` (default ``["mri_audit.audit"]``).
        on_stage: told what an interruption from now on leaves behind (the CLI prints it).

    Returns:
        the :class:`AuditResult` (on every rank of a ``torchrun`` job; the records on rank 0).

    Raises:
        MriAuditError: a bad option, model, data, device or output folder, as one line.
        AuditInterrupted: Ctrl-C during the attacks (the journal keeps what was done).
    """
    from mri_audit.audit.distributed import init_distributed, shutdown

    given = {k: v for k, v in locals().items() if k in KEYWORDS}
    c, compare = check_keywords(given, model_args, compare, attack_options)
    entries = [model_entry(model, c["name"], c["weights"])]
    entries += [model_entry(m, what="compare") for m in compare]
    if c["input_domain"] is not None:
        entries[0] = entries[0]._replace(input=c["input_domain"])
    if isinstance(model_args, Mapping):
        entries[0] = entries[0]._replace(args={**entries[0].args, **model_args})
    else:
        entries = with_arguments(entries, model_args)
    names = [e.name for e in entries if e.name]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"two models are named {twice[0]!r}; give each model its own name")
    if c["sign"] is not None:  # a bad key is refused before any work
        from mri_audit.evidence.signing import load_private_key

        load_private_key(Path(c["sign"]))
    settings = {k: c[k] for k in SETTINGS}
    settings["attack_options"] = {k: dict(v) for k, v in (attack_options or {}).items()}
    out, data, device = c["out"], c["data"], c["device"]
    owned = out is None
    folder = Path(tempfile.mkdtemp(prefix="mri-audit-")) if owned else Path(out)
    import torch.distributed as dist

    joined = dist.is_available() and dist.is_initialized()  # a caller's group (harden's)
    env, dev = init_distributed(device)
    finished = False
    try:
        if owned and env.enabled:
            raise UsageError("an audit in many processes (torchrun) needs out= (a shared folder)")
        with contextlib.ExitStack() as stack:
            result = _audit(
                entries,
                settings,
                data=data,
                limits=(c["max_volumes"], c["max_slices"]),
                normalize=c["normalize"],
                batch_size=c["batch_size"],
                compile_model=c["compile_model"],
                max_attack_rate=c["max_attack_rate"],
                recovery_map=c["recovery_map"],
                samples=c["samples"],
                out=folder,
                write=not owned,
                resume=c["resume"] and not owned,
                force=c["force"] or owned,
                sign=c["sign"],
                progress=c["progress"],
                command_line=list(command_line or ["mri_audit.audit"]),
                on_stage=on_stage or (lambda saved: None),
                env=env,
                device=dev,
                stack=stack,
            )
        finished = True
        return result
    finally:
        if not joined:  # leave a caller's process group to the caller
            shutdown(env, wait=finished)
        if owned and env.is_main:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)


def _audit(
    entries,
    settings,
    *,
    data,
    limits,
    normalize,
    batch_size,
    compile_model,
    max_attack_rate,
    recovery_map,
    samples,
    out,
    write,
    resume,
    force,
    sign,
    progress,
    command_line,
    on_stage,
    env,
    device,
    stack,
) -> AuditResult:
    """The audit behind :func:`audit`, in ``out``, in this process of ``env``."""
    import torch

    from mri_audit.audit.auditor import AuditConfig, AuditModel, Auditor
    from mri_audit.audit.chain import GENESIS
    from mri_audit.audit.distributed import agree, broadcast, gather
    from mri_audit.audit.identity import audit_identity, fingerprint
    from mri_audit.audit.journal import Journal, header_anchor
    from mri_audit.audit.outdir import precheck_out
    from mri_audit.audit.result import summarize_audit
    from mri_audit.audit.run_setup import (
        check_precision,
        choose_batch,
        merge_shards,
        open_data,
        open_entries,
        prepare_journal,
    )
    from mri_audit.models.entries import unique_names
    from mri_audit.mri.physics import make_mask_func

    attack_classes = attack_classes_for(settings, max_attack_rate)
    check_files(entries)  # before the data is read, before anything is written
    agree(env, lambda: precheck_out(out, resume=resume, force=force))
    if env.is_main:
        check_precision(settings["precision"], device)
    mask_func = make_mask_func(
        settings["mask_type"], settings["accel"], settings["center_fraction"]
    )
    dataset, probe = open_data(data, *limits)
    previous = agree(env, lambda: claim_out(out, stack, resume=resume, force=force, note=on_stage))
    torch.manual_seed(settings["seed"])  # a model's own random initialisation is seeded too
    need_grad = any(getattr(c, "needs_gradients", False) for c in attack_classes.values())
    opened = open_entries(
        entries,
        normalize=normalize,
        device=device,
        probe=probe,
        mask_func=mask_func,
        need_gradient=need_grad,
    )
    apply_samples(opened, samples)
    names = unique_names([o.estimator.name for o in opened])
    if compile_model and all(o.loaded.kind == "torchscript" for o in opened):
        raise UsageError(
            "--compile applies to Python models, but every model here is TorchScript, which "
            "torch.compile does not take; remove --compile"
        )
    if compile_model:
        for o in opened:
            if o.loaded.kind != "torchscript":
                o.estimator.compile()
    if batch_size is None:
        batch_size = stored_batch_size(previous)
    if batch_size is None:
        batch_size = broadcast(
            env,
            choose_batch(opened, probe, mask_func, need_grad, settings["candidates"])
            if env.is_main
            else None,
        )
    config = AuditConfig(
        **{k: v for k, v in settings.items() if k not in ("feature_size", "feature_width")},
        batch_size=batch_size,
    )
    check_attacks(attack_classes, config, opened[0].estimator)
    models_info = [model_info(o, e, n) for o, e, n in zip(opened, entries, names, strict=True)]
    stored, described = json.loads(json.dumps(config.to_dict())), dataset.describe()
    identity = audit_identity(
        config=stored, models=models_info, data=described, attack_classes=attack_classes.values()
    )
    header = {
        "kind": "header",
        "audit": fingerprint(identity),
        "config": stored,
        "code": identity["code"],
        "models": models_info,
        "data": described,
    }
    done_keys, segments = agree(
        env, lambda: prepare_journal(out, header, identity, previous, dataset)
    )
    segment = max(map(int, segments), default=-1) + 1
    earlier = sum(segments.values())
    started = time.perf_counter()
    journal_name = "records.jsonl" if not env.enabled else f"records.rank{env.rank}.jsonl"
    auditor = Auditor(
        [AuditModel(n, o.estimator) for n, o in zip(names, opened, strict=True)],
        dataset,
        config,
        attack_classes=attack_classes,
        journal=Journal(
            out / journal_name,
            audit=header["audit"],
            segment=segment,
            started=started,
            anchor=header_anchor(out / "records.jsonl") if env.enabled else GENESIS,
        ),
        done=set(map(tuple, done_keys)),
        progress=progress,
        rank=env.rank,
        world_size=env.world_size,
    )
    try:
        auditor.run()
    except KeyboardInterrupt:
        saved = len(read_records(out).records) if env.is_main else 0
        raise AuditInterrupted(out if write else None, saved) from None
    elapsed = earlier + time.perf_counter() - started
    sums = gather(env, (auditor.target_sum, auditor.target_count))
    gather(env, True)  # every rank has finished its batches
    if not env.is_main:
        return AuditResult(broadcast(env, None), header=header)
    if env.enabled:
        auditor.target_sum = sum(t for t, _ in sums if t is not None)
        auditor.target_count = sum(c for _, c in sums)
    records = merge_shards(out, header, dataset, names, config.attacks, segment, elapsed)
    section = None
    if recovery_map:
        from mri_audit.audit.progress import map_progress
        from mri_audit.audit.recovery_map import recovery_map as compute_map

        logger.info("mapping feature recovery (the default grid; mri-audit map sets its own)")
        section = compute_map(
            [(n, o.estimator) for n, o in zip(names, opened, strict=True)],
            dataset,
            mask_func=mask_func,
            seed=config.seed,
            margin=config.margin,
            batch_size=config.batch_size,
            window=config.window,
            insert_mode=config.insert,
            on_batch=map_progress(progress),
        )
    from mri_audit.report.failures import rendering

    then = (
        f"the journal {out / 'records.jsonl'} keeps every record; once the cause is fixed, run "
        "the same command again with --resume (nothing is recomputed)"
        if write
        else "pass out= to keep the attack work in a journal that --resume can finish"
    )
    with rendering("summarising the audit's records", then):
        result = summarize_audit(
            records=records,
            header=header,
            auditor=auditor,
            dataset=dataset,
            max_attack_rate=max_attack_rate,
            command_line=command_line,
            versions=versions(),
            device=str(device) if not env.enabled else f"{device} x {env.world_size} processes",
            elapsed=elapsed,
            started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            recovery_map=section,
        )
    if write:
        result.write(out, sign=sign)
    broadcast(env, result.results)
    return result
