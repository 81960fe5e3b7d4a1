"""The work behind ``mri-audit run`` (kept apart so the CLI module imports fast)."""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import click

from mri_audit import __version__
from mri_audit.errors import UsageError

logger = logging.getLogger(__name__)


def _versions() -> dict:
    import numpy
    import torch

    from mri_audit.models.art_setup import art

    return {
        "mri_audit": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "adversarial_robustness_toolbox": art.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
    }


def _model_info(opened, entry, name: str) -> dict:
    from mri_audit.audit.identity import model_sources
    from mri_audit.hashing import sha256_file
    from mri_audit.models.exported import PROGRAM_KINDS
    from mri_audit.models.loading import imported_packages

    loaded = opened.loaded
    src = loaded.source_path
    spec, weights, args = entry.spec, entry.weights, entry.args
    if loaded.kind == "module":  # the package's files, named from the folder that holds it
        top = sys.modules[spec.rpartition(":")[0].split(".")[0]]
        root = Path(top.__file__).resolve().parent.parent
    else:
        root = Path(src).parent if src else Path.cwd()
    return {
        "name": name,
        "spec": spec,
        "target": loaded.name,  # file name and class (or module:Name, or program file)
        "kind": loaded.kind,
        "source": str(src) if src else None,
        "source_sha256": sha256_file(src) if src and Path(src).is_file() else None,
        "sources": model_sources(loaded.sources, root),
        "weights": str(weights) if weights else None,
        "weights_sha256": sha256_file(weights) if weights else None,
        "domain": opened.estimator.input_domain,
        "normalize": opened.estimator.normalize,
        "parameters": opened.parameters,
        "model_args": {k: repr(v) for k, v in args.items()},
        "packages": imported_packages(loaded.module) if loaded.kind not in PROGRAM_KINDS else {},
    }


def _check_resume(header: dict, identity: dict, stored: dict, out: Path) -> None:
    """Refuse to resume a different audit, naming what changed."""
    from mri_audit.audit.identity import describe_changes, stored_identity

    if stored.get("audit") == header["audit"]:
        return
    if not stored.get("audit"):
        raise UsageError(
            f"cannot resume the audit in {out}: it was made by an older mri-audit, without an "
            "audit fingerprint; use --force to start over"
        )
    diffs = describe_changes(stored_identity(stored), identity) or ["the audit's fingerprint"]
    raise UsageError(
        f"cannot resume the audit in {out}: {'; '.join(diffs)} changed; "
        "rerun with the same settings, or use --force to start over"
    )


def _check_attacks(attack_classes: dict, config, estimator) -> None:
    """Build each attack once so bad parameters fail before any work, as one line."""
    for name, cls in attack_classes.items():
        params = config.attack_options.get(name, {})
        known = set(getattr(cls, "attack_params", ()))
        unknown = sorted(set(params) - known)
        if unknown:
            raise UsageError(
                f"{name} has no parameter {', '.join(unknown)}; see `mri-audit attacks`"
            )
        try:
            cls(estimator, **config.attack_kwargs(cls), **params)
        except (TypeError, ValueError) as err:
            raise UsageError(f"{name}: {err}") from None


def _stored_batch_size(previous) -> int | None:
    """The batch size of the audit being resumed (so ``auto`` does not change it)."""
    size = ((previous.header if previous else None) or {}).get("config", {}).get("batch_size")
    return size if isinstance(size, int) and size >= 1 else None


def _read(out: Path, *, repair: bool = False):
    """The audit's validated journal (main file and per-rank shards)."""
    from mri_audit.audit.journal import read_audit_journal

    return read_audit_journal(out / "records.jsonl", repair=repair)


def execute(opts: dict, command_line: list[str]) -> int:
    """Run the audit described by the parsed options; returns the exit status."""
    from mri_audit.audit.distributed import init_distributed, shutdown

    env, device = init_distributed(opts["device"])
    finished = False
    try:
        with contextlib.ExitStack() as stack:
            code = _execute(opts, command_line, env, device, stack)
        finished = True
        return code
    finally:
        shutdown(env, wait=finished)


def _claim_out(out: Path, opts: dict, stack: contextlib.ExitStack):
    """Check ``--out`` and take its lock before any work (rank 0); the resumed journal."""
    from mri_audit.audit.outdir import check_existing, prepare_folder
    from mri_audit.audit.outlock import hold_lock
    from mri_audit.cli import on_interrupt

    prepare_folder(out)
    stack.enter_context(hold_lock(out, "mri-audit run"))  # first the lock, then what it holds
    check_existing(out, resume=opts["resume"], force=opts["force"])
    on_interrupt(
        f"no record was written yet; {out} keeps what it held before"
        if not opts["resume"]
        else f"the journal in {out} is as it was; run the same command with --resume to continue"
    )
    return _read(out, repair=True) if opts["resume"] else None


def _execute(opts: dict, command_line: list[str], env, device, stack) -> int:
    from mri_audit.audit.auditor import AuditConfig, AuditModel, Auditor
    from mri_audit.audit.distributed import agree, broadcast, gather
    from mri_audit.audit.journal import Journal, record_key
    from mri_audit.cli.setup import build_mask_func, open_data, open_entries
    from mri_audit.fnaf.registry import load_attack
    from mri_audit.models.entries import unique_names

    out: Path = opts["out"]
    attack_classes = {a: load_attack(a) for a in opts["attacks"]}
    shared = {"feature_size": opts.get("feature_size"), "feature_width": opts.get("feature_width")}
    for name, cls in attack_classes.items():  # --feature-size/-width: every FNAF attack's default
        for key, value in shared.items():
            if value is not None and key in getattr(cls, "attack_params", ()):
                opts["attack_options"].setdefault(name, {}).setdefault(key, value)
    if opts["max_attack_rate"] is not None and not any(
        getattr(c, "kind", "fnaf") == "fnaf" for c in attack_classes.values()
    ):
        raise UsageError(
            "--max-attack-rate gates on FNAF attack rates, but --attacks "
            f"{','.join(opts['attacks'])} has no FNAF attack; add fnaf-rs, fnaf-fd or fnaf-pgd"
        )
    from mri_audit.models.entries import check_files, model_entries

    entries = opts.get("models") or model_entries(opts)
    check_files(entries)  # before the data is read, before anything is written
    from mri_audit.audit.outdir import precheck_out

    agree(env, lambda: precheck_out(out, resume=opts["resume"], force=opts["force"]))
    if env.is_main:
        from mri_audit.cli.setup import check_precision

        check_precision(opts.get("precision", "fp32"), device)
    mask_func = build_mask_func(opts["mask_type"], opts["accel"], opts["center_fraction"])
    if opts.get("dataset") is not None:
        from mri_audit.cli.setup import probe_batch

        dataset = opts["dataset"]
        probe = probe_batch(dataset)
    else:
        dataset, probe = open_data(opts["data"], opts["max_volumes"], opts["max_slices"])
    previous = agree(env, lambda: _claim_out(out, opts, stack))
    import torch

    torch.manual_seed(opts["seed"])  # a model's own random initialisation is seeded too
    need_grad = any(getattr(c, "needs_gradients", False) for c in attack_classes.values())
    opened = open_entries(
        entries,
        normalize=opts["normalize"],
        device=device,
        probe=probe,
        mask_func=mask_func,
        need_gradient=need_grad,
    )
    names = unique_names([o.estimator.name for o in opened])
    if opts.get("compile_model"):
        import torch

        for o in opened:
            if o.loaded.kind != "torchscript":
                o.estimator._model = torch.compile(o.estimator.model, dynamic=True)
    batch_size = opts["batch_size"]
    if batch_size is None:
        batch_size = _stored_batch_size(previous)
    if batch_size is None:
        from mri_audit.fnaf.autobatch import choose_batch_size

        batch_size = broadcast(
            env,
            choose_batch_size(
                [o.estimator for o in opened],
                probe,
                mask_func,
                gradient=need_grad,
                candidates=opts["candidates"],
            )
            if env.is_main
            else None,
        )
    config = AuditConfig(
        accel=opts["accel"],
        center_fraction=opts["center_fraction"],
        mask_type=opts["mask_type"],
        attacks=opts["attacks"],
        candidates=opts["candidates"],
        feature_steps=opts["feature_steps"],
        feature=opts.get("feature", "walk"),
        criterion=opts.get("criterion", "erasure"),
        margin=opts.get("margin", 0.1),
        min_recovery=opts.get("min_recovery", 0.5),
        threshold=opts["threshold"],
        ip_epsilon=opts["ip_epsilon"],
        window=opts["window"],
        insert=opts["insert"],
        seed=opts["seed"],
        batch_size=batch_size,
        attack_options=opts["attack_options"],
        precision=opts.get("precision", "fp32"),
    )
    _check_attacks(attack_classes, config, opened[0].estimator)

    models_info = [_model_info(o, e, n) for o, e, n in zip(opened, entries, names, strict=True)]
    from mri_audit.audit.identity import audit_identity, fingerprint

    settings, described = json.loads(json.dumps(config.to_dict())), dataset.describe()
    identity = audit_identity(
        config=settings,
        models=models_info,
        data=described,
        attack_classes=attack_classes.values(),
    )
    header = {
        "kind": "header",
        "audit": fingerprint(identity),
        "config": settings,
        "code": identity["code"],
        "models": models_info,
        "data": described,
    }

    def prepare() -> tuple[list[tuple], dict[int, float]]:
        from mri_audit.audit.outdir import remove_audit

        stored = previous.header if previous else None
        if stored is not None:
            _check_resume(header, identity, stored, out)
            keys = set(dataset.keys())
            stray = next(
                (r for r in previous.records if (r["volume"], r["slice"]) not in keys), None
            )
            if stray is not None:
                raise UsageError(
                    f"cannot resume the audit in {out}: its journal holds a record of "
                    f"{stray['volume']} slice {stray['slice']}, which is not in the data; "
                    "use --force to start over"
                )
            return [record_key(r) for r in previous.records], previous.segments
        remove_audit(out)  # --force, or a resume with no journal: start clean
        Journal(out / "records.jsonl").write_header(header)
        return [], {}

    done_keys, segments = agree(env, prepare)
    done = set(map(tuple, done_keys))
    segment = max(map(int, segments), default=-1) + 1
    earlier = sum(segments.values())
    started = time.perf_counter()
    name = "records.jsonl" if not env.enabled else f"records.rank{env.rank}.jsonl"
    journal = Journal(out / name, audit=header["audit"], segment=segment, started=started)
    auditor = Auditor(
        [AuditModel(n, o.estimator) for n, o in zip(names, opened, strict=True)],
        dataset,
        config,
        attack_classes=attack_classes,
        journal=journal,
        done=done,
        progress=not opts["no_progress"],
        rank=env.rank,
        world_size=env.world_size,
    )
    try:
        auditor.run()
    except KeyboardInterrupt:
        if env.is_main:
            n = len(_read(out).records)
            click.echo(
                f"\nInterrupted: {n} records are saved in {out}; "
                "run the same command with --resume to continue.",
                err=True,
            )
        return 130
    elapsed = earlier + time.perf_counter() - started
    sums = gather(env, (auditor.target_sum, auditor.target_count))
    if env.enabled:
        barrier_ok = gather(env, True)
        del barrier_ok
    if not env.is_main:
        return int(broadcast(env, None))
    if env.enabled:
        auditor.target_sum = sum(t for t, _ in sums if t is not None)
        auditor.target_count = sum(c for _, c in sums)
    records = _read(out).records
    order = {key: i for i, key in enumerate(dataset.keys())}
    model_rank = {n: i for i, n in enumerate(names)}
    attack_rank = {a: i for i, a in enumerate(config.attacks)}
    records.sort(
        key=lambda r: (
            order.get((r["volume"], int(r["slice"])), 0),
            model_rank.get(r["model"], 0),
            attack_rank.get(r["attack"], 0),
        )
    )
    if env.enabled or any(out.glob("records.rank*.jsonl")):
        # One journal again: the shards of this run, or of an unfinished distributed run that
        # this one resumed, merged into records.jsonl (a re-read needs every record in it).
        from mri_audit.files import atomic_write, to_jsonable

        timing = {"kind": "time", "audit": header["audit"], "segment": segment, "elapsed": elapsed}
        lines = [json.dumps(to_jsonable(r), sort_keys=True) for r in [header, *records, timing]]
        atomic_write(out / "records.jsonl", ("\n".join(lines) + "\n").encode())
        for shard in out.glob("records.rank*.jsonl"):
            shard.unlink()
    from mri_audit.audit.outputs import finish_audit

    section = None
    if opts.get("map"):
        from mri_audit.audit.recovery_map import recovery_map

        click.echo("Mapping feature recovery (the default grid; mri-audit map sets its own)...")
        section = recovery_map(
            [(n, o.estimator) for n, o in zip(names, opened, strict=True)],
            dataset,
            mask_func=mask_func,
            seed=config.seed,
            margin=config.margin,
            batch_size=config.batch_size,
            window=config.window,
            insert_mode=config.insert,
        )
    results = finish_audit(
        out,
        records=records,
        header=header,
        auditor=auditor,
        dataset=dataset,
        max_attack_rate=opts["max_attack_rate"],
        command_line=command_line,
        versions=_versions(),
        device=str(device) if not env.enabled else f"{device} x {env.world_size} processes",
        elapsed=elapsed,
        started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        recovery_map=section,
    )
    from mri_audit.report.tables import attack_table

    click.echo(attack_table(results))
    for warning in results.get("warnings") or []:
        click.echo(f"Warning: {warning}", err=True)
    click.echo(
        f"\nWrote {out}/results.json, records.csv, records.jsonl and report.html ({elapsed:.1f} s)"
    )
    verdict = results["verdict"]
    status = verdict.get("status", "none")
    if status != "none":
        click.echo(f"{status.upper()}: {verdict['reason']}", err=status != "pass")
    return int(broadcast(env, 3 if status in ("fail", "inconclusive") else 0))
