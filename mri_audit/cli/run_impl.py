"""The work behind ``mri-audit run`` (kept apart so the CLI module imports fast)."""

from __future__ import annotations

import json
import logging
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import click

from mri_audit import __version__
from mri_audit.errors import UsageError

logger = logging.getLogger(__name__)

AUDIT_FILES = ("records.jsonl", "records.csv", "results.json", "report.html", "audit_images.npz")


def _versions() -> dict:
    import art
    import numpy
    import torch

    return {
        "mri_audit": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "adversarial_robustness_toolbox": art.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
    }


def _model_info(opened, spec: str, weights: str | None, name: str, args: dict) -> dict:
    from mri_audit.plugins import imported_packages, sha256_file

    loaded = opened.loaded
    src = loaded.source_path
    return {
        "name": name,
        "spec": spec,
        "kind": loaded.kind,
        "source": str(src) if src else None,
        "source_sha256": sha256_file(src) if src and Path(src).is_file() else None,
        "weights": str(weights) if weights else None,
        "weights_sha256": sha256_file(weights) if weights else None,
        "domain": opened.estimator.input_domain,
        "normalize": opened.estimator.normalize,
        "parameters": opened.parameters,
        "model_args": {k: repr(v) for k, v in args.items()},
        "packages": imported_packages(loaded.module) if loaded.kind != "torchscript" else {},
    }


def _prepare_out(out: Path, resume: bool, force: bool) -> None:
    existing = [f for f in AUDIT_FILES if (out / f).exists()]
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder")
    if existing and not (resume or force):
        raise UsageError(
            f"{out} already holds an audit ({', '.join(existing)}); "
            "use --resume to continue it or --force to replace it"
        )
    if force and not resume:
        for f in existing:
            (out / f).unlink()
    out.mkdir(parents=True, exist_ok=True)


def _check_resume(header: dict, stored: dict | None, out: Path) -> None:
    if stored is None:
        return
    diffs = []
    if stored.get("config") != header["config"]:
        keys = sorted(
            k
            for k in set(stored["config"]) | set(header["config"])
            if stored["config"].get(k) != header["config"].get(k)
        )
        diffs.append("configuration (" + ", ".join(keys) + ")")
    old = {m["name"]: m for m in stored.get("models", [])}
    for m in header["models"]:
        o = old.get(m["name"])
        if o is None:
            diffs.append(f"model {m['name']} (not in the earlier audit)")
        elif o.get("source_sha256") != m["source_sha256"]:
            diffs.append(f"model file of {m['name']} (sha256 differs)")
        elif o.get("weights_sha256") != m["weights_sha256"]:
            diffs.append(f"weights of {m['name']} (sha256 differs)")
        elif o.get("model_args") != m["model_args"]:
            diffs.append(f"constructor arguments of {m['name']} (--model-arg)")
    if stored.get("data") != header["data"]:
        diffs.append("data")
    if diffs:
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


def _stored_batch_size(out: Path) -> int | None:
    """The batch size of the audit being resumed (so ``auto`` does not change it)."""
    from mri_audit.journal import Journal

    path = out / "records.jsonl"
    if not path.exists():
        return None
    header = next((r for r in Journal(path).read() if r.get("kind") == "header"), None)
    size = (header or {}).get("config", {}).get("batch_size")
    return size if isinstance(size, int) and size >= 1 else None


def _read_all(out: Path) -> list[dict]:
    """The main journal plus any per-rank journals a distributed run left behind."""
    from mri_audit.journal import Journal

    records = Journal(out / "records.jsonl").read()
    for shard in sorted(out.glob("records.rank*.jsonl")):
        records += [r for r in Journal(shard).read() if r.get("kind") != "header"]
    return records


def execute(opts: dict, command_line: list[str]) -> int:
    """Run the audit described by the parsed options; returns the exit status."""
    from mri_audit.distributed import init_distributed, shutdown

    env, device = init_distributed(opts["device"])
    finished = False
    try:
        code = _execute(opts, command_line, env, device)
        finished = True
        return code
    finally:
        shutdown(env, wait=finished)


def _execute(opts: dict, command_line: list[str], env, device) -> int:
    from mri_audit.auditor import AuditConfig, AuditModel, Auditor, unique_names
    from mri_audit.cli.setup import build_mask_func, open_data, open_models
    from mri_audit.distributed import agree, broadcast, gather
    from mri_audit.journal import Journal, record_key
    from mri_audit.registry import load_attack

    out: Path = opts["out"]
    attack_classes = {a: load_attack(a) for a in opts["attacks"]}
    if opts["max_attack_rate"] is not None and not any(
        getattr(c, "kind", "fnaf") == "fnaf" for c in attack_classes.values()
    ):
        raise UsageError(
            "--max-attack-rate gates on FNAF attack rates, but --attacks "
            f"{','.join(opts['attacks'])} has no FNAF attack; add fnaf-rs, fnaf-fd or fnaf-pgd"
        )
    mask_func = build_mask_func(opts["mask_type"], opts["accel"], opts["center_fraction"])
    if opts.get("dataset") is not None:
        from mri_audit.data import collate

        dataset = opts["dataset"]
        probe = collate([dataset[0]])
    else:
        dataset, probe = open_data(opts["data"], opts["max_volumes"], opts["max_slices"])
    specs = [(opts["model_spec"], opts["weights"]), *opts["compare"]]
    import torch

    torch.manual_seed(opts["seed"])  # a model's own random initialisation is seeded too
    need_grad = any(getattr(c, "needs_gradients", False) for c in attack_classes.values())
    opened = open_models(
        specs,
        model_args=opts["model_args"],
        input_domain=opts["input_domain"],
        normalize=opts["normalize"],
        device=device,
        probe=probe,
        mask_func=mask_func,
        need_gradient=need_grad,
        names=opts.get("names"),
    )
    names = unique_names([o.estimator.name for o in opened])
    if opts.get("compile_model"):
        import torch

        for o in opened:
            if o.loaded.kind != "torchscript":
                o.estimator._model = torch.compile(o.estimator.model, dynamic=True)
    batch_size = opts["batch_size"]
    if batch_size is None:
        batch_size = _stored_batch_size(out) if opts["resume"] else None
    if batch_size is None:
        from mri_audit.autobatch import choose_batch_size

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
    from mri_audit.plugins import parse_model_args

    args = parse_model_args(opts["model_args"])
    same = all(spec == specs[0][0] for spec, _ in specs)
    models_info = [
        _model_info(o, spec, weights, n, args if i == 0 or same else {})
        for i, (o, (spec, weights), n) in enumerate(zip(opened, specs, names, strict=True))
    ]
    header = {
        "kind": "header",
        "config": json.loads(json.dumps(config.to_dict())),
        "models": models_info,
        "data": dataset.describe(),
    }

    def prepare() -> list[tuple]:
        _prepare_out(out, opts["resume"], opts["force"])
        previous = _read_all(out) if opts["resume"] else []
        stored = next((r for r in previous if r.get("kind") == "header"), None)
        if opts["resume"]:
            _check_resume(header, stored, out)
        if stored is None:
            Journal(out / "records.jsonl").append([header])
        return [record_key(r) for r in previous if r.get("kind") != "header"]

    done = set(map(tuple, agree(env, prepare)))
    name = "records.jsonl" if not env.enabled else f"records.rank{env.rank}.jsonl"
    journal = Journal(out / name)
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
    started = time.perf_counter()
    try:
        auditor.run()
    except KeyboardInterrupt:
        if env.is_main:
            n = len([r for r in _read_all(out) if r.get("kind") != "header"])
            click.echo(
                f"\nInterrupted: {n} records are saved in {out}; "
                "run the same command with --resume to continue.",
                err=True,
            )
        return 130
    elapsed = time.perf_counter() - started
    sums = gather(env, (auditor.target_sum, auditor.target_count))
    if env.enabled:
        barrier_ok = gather(env, True)
        del barrier_ok
    if not env.is_main:
        return int(broadcast(env, None))
    if env.enabled:
        auditor.target_sum = sum(t for t, _ in sums if t is not None)
        auditor.target_count = sum(c for _, c in sums)
    records = [r for r in _read_all(out) if r.get("kind") != "header"]
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
    if env.enabled:
        from mri_audit.journal import to_jsonable
        from mri_audit.results import atomic_write

        lines = [json.dumps(to_jsonable(r), sort_keys=True) for r in [header, *records]]
        atomic_write(out / "records.jsonl", ("\n".join(lines) + "\n").encode())
        for shard in out.glob("records.rank*.jsonl"):
            shard.unlink()
    from mri_audit.outputs import finish_audit

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
    )
    from mri_audit.tables import attack_table

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
