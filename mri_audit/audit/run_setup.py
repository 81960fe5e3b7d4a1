"""The steps of :func:`mri_audit.audit.api.audit` around the attacks: checking the attacks and
the output folder, describing the models for the audit's identity, starting or resuming the
journal, and merging the journal of a run in many processes."""

from __future__ import annotations

import json
import logging
import platform
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from mri_audit import __version__
from mri_audit.data.opening import open_data, probe_batch
from mri_audit.errors import DataError, UsageError
from mri_audit.models.opening import open_entries

__all__ = [
    "apply_samples",
    "attack_classes_for",
    "check_attacks",
    "check_precision",
    "check_resume",
    "choose_batch",
    "claim_out",
    "merge_shards",
    "model_info",
    "open_data",
    "open_entries",
    "prepare_journal",
    "probe_batch",
    "read_records",
    "stored_batch_size",
    "versions",
]

logger = logging.getLogger(__name__)


def versions() -> dict:
    """The versions an audit ran with (``results.json`` ``versions``)."""
    import matplotlib
    import numpy
    import torch

    from mri_audit.models.art_setup import art

    return {
        "mri_audit": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "adversarial_robustness_toolbox": art.__version__,
        "numpy": numpy.__version__,
        "matplotlib": matplotlib.__version__,  # the report's figures (verify compares them)
        "platform": platform.platform(),
    }


def attack_classes_for(settings: dict, max_attack_rate: float | None) -> dict[str, type]:
    """The audit's attack classes; ``feature_size``/``feature_width`` become every FNAF attack's
    default (an attack's own parameter wins) in ``settings["attack_options"]``.

    Raises:
        UsageError: an unknown attack, or a gate with no FNAF attack to gate on.
    """
    from mri_audit.fnaf.registry import load_attack

    classes = {a: load_attack(a) for a in settings["attacks"]}
    shared = {k: settings.get(k) for k in ("feature_size", "feature_width")}
    for name, cls in classes.items():
        for key, value in shared.items():
            if value is not None and key in getattr(cls, "attack_params", ()):
                settings["attack_options"].setdefault(name, {}).setdefault(key, value)
    fnaf = any(getattr(c, "kind", "fnaf") == "fnaf" for c in classes.values())
    if max_attack_rate is not None and not fnaf:
        raise UsageError(
            "--max-attack-rate gates on FNAF attack rates, but --attacks "
            f"{','.join(settings['attacks'])} has no FNAF attack; add fnaf-rs, fnaf-fd or fnaf-pgd"
        )
    if not fnaf:
        _refuse_fnaf_settings(settings)
    return classes


# Settings that only FNAF attacks read (a degradation attack such as kspace-pgd inserts no
# feature and has no criterion).
FNAF_ONLY = (
    *("candidates", "feature", "feature_steps", "feature_size", "feature_width", "window"),
    *("insert", "criterion", "margin", "min_recovery", "threshold", "ip_epsilon", "precision"),
)


def _refuse_fnaf_settings(settings: dict) -> None:
    """A FNAF setting other than its default, with no FNAF attack to read it, is refused."""
    from mri_audit.settings import RUN, check_value

    for s in RUN:
        if s.name in FNAF_ONLY and s.api and settings.get(s.name) is not None:
            default = None if s.default is None else check_value(s, s.default)
            if settings[s.name] != default:
                raise UsageError(
                    f"{s.flag} applies to FNAF attacks, but --attacks "
                    f"{','.join(settings['attacks'])} has none, so it would be ignored; remove "
                    "it or add fnaf-rs, fnaf-fd or fnaf-pgd"
                )


def check_attacks(attack_classes: dict, config, estimator) -> None:
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
            cls(estimator, **config.attack_settings(name, cls))
        except (TypeError, ValueError) as err:
            raise UsageError(f"{name}: {err}") from None


def apply_samples(opened: Sequence, samples: int | None) -> None:
    """``--samples``: the reconstructions a stochastic model averages per input.

    Raises:
        UsageError: ``--samples`` other than 1 when the dry run found every model deterministic.
    """
    stochastic = [o.estimator for o in opened if o.estimator.call.stochastic]
    if samples is not None and not stochastic and samples != 1:
        names = ", ".join(o.estimator.name for o in opened)
        raise UsageError(
            f"--samples applies to stochastic models, but the dry run found every model "
            f"deterministic ({names}), so it would be ignored; remove it"
        )
    for est in stochastic:
        if samples is not None:
            est.samples = int(samples)
        logger.warning(
            "%s: r is the mean of %d samples per input, with its standard error (--samples%s)",
            est.name,
            est.samples,
            "" if samples is not None else ", default 8",
        )


def check_precision(precision: str, device) -> None:
    """``bf16``/``fp16`` on a CPU: bf16 runs where the CPU computes it natively (AMX,
    AVX512-BF16: the example U-Net's forward took 0.51x the fp32 time here, see
    ``benchmarks/bench_precision.py``); elsewhere, and for fp16 on any CPU (1.13x the fp32 time
    even with AVX512-FP16), a warning says the search is slower than in fp32."""
    if precision == "fp32" or device.type != "cpu":
        return
    import torch

    native = False
    if precision == "bf16":
        check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        try:
            native = bool(check()) if check is not None else False
        except RuntimeError:
            native = False
    if not native:
        why = "has no native bf16 support" if precision == "bf16" else "runs fp16 slowly"
        logger.warning(
            "--precision %s: this CPU %s, so the search is likely slower than in fp32 (the "
            "chosen features are still rescored in fp32); use --precision %s here",
            precision,
            why,
            "fp32" if precision == "bf16" else "bf16 or fp32",
        )


def choose_batch(opened: Sequence, probe, mask_func, gradient: bool, candidates: int) -> int:
    """``--batch-size auto``: measured on a GPU, fixed on a CPU (the same for every model)."""
    from mri_audit.fnaf.autobatch import choose_batch_size

    return choose_batch_size(
        [o.estimator for o in opened], probe, mask_func, gradient=gradient, candidates=candidates
    )


def model_info(opened, entry, name: str) -> dict:
    """A model's record in the journal header and ``results.json`` (its identity included:
    target, kind, sources, weights, constructor arguments, domain, normalisation, packages)."""
    from mri_audit.audit.identity import model_sources
    from mri_audit.hashing import sha256_file, state_sha256
    from mri_audit.models.exported import PROGRAM_KINDS
    from mri_audit.models.loading import imported_packages

    loaded = opened.loaded
    src = loaded.source_path
    weights, args = entry.weights, entry.args
    if loaded.kind == "module":  # the package's files, named from the folder that holds it
        top = sys.modules[str(entry.spec).rpartition(":")[0].split(".")[0]]
        root = Path(top.__file__).resolve().parent.parent
    else:
        root = Path(src).parent if src else Path.cwd()
    if weights:
        weights_sha256 = sha256_file(weights)
    elif loaded.kind == "object":  # a constructed module: its weights are its state
        weights_sha256 = state_sha256(loaded.module.state_dict())
    else:
        weights_sha256 = None
    programs = (*PROGRAM_KINDS, "object")
    return {
        "name": name,
        "spec": entry.spec if isinstance(entry.spec, str) else loaded.spec,
        "target": loaded.name,  # file name and class (or module:Name, or program file)
        "kind": loaded.kind,
        "source": str(src) if src else None,
        "source_sha256": sha256_file(src) if src and Path(src).is_file() else None,
        "sources": model_sources(loaded.sources, root),
        "weights": str(weights) if weights else None,
        "weights_sha256": weights_sha256,
        "domain": opened.estimator.input_domain,
        "normalize": opened.estimator.normalize,
        "parameters": opened.parameters,
        **_behaviour(opened.estimator),
        "model_args": {k: repr(v) for k, v in args.items()},
        "packages": imported_packages(loaded.module) if loaded.kind not in programs else {},
    }


def _behaviour(estimator) -> dict:
    """What the dry run found (stochastic? batch-coupled?) and the samples averaged per input."""
    b = getattr(estimator, "behaviour", None)
    if b is None:
        return {}
    return {"behaviour": b.to_dict(), "samples": estimator.samples}


def check_resume(header: dict, identity: dict, stored: dict, out: Path) -> None:
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


def stored_batch_size(previous) -> int | None:
    """The batch size of the audit being resumed (so ``auto`` does not change it)."""
    size = ((previous.header if previous else None) or {}).get("config", {}).get("batch_size")
    return size if isinstance(size, int) and size >= 1 else None


def read_records(out: Path, *, repair: bool = False):
    """The audit's validated journal (main file and per-rank shards)."""
    from mri_audit.audit.journal import read_audit_journal

    return read_audit_journal(out / "records.jsonl", repair=repair)


def claim_out(out: Path, stack, *, resume: bool, force: bool, note: Callable[[str], None]):
    """Check ``out`` and take its lock before any work (rank 0); the resumed journal."""
    from mri_audit.audit.outdir import check_existing, prepare_folder
    from mri_audit.audit.outlock import hold_lock

    prepare_folder(out)
    stack.enter_context(hold_lock(out, "mri-audit run"))  # first the lock, then what it holds
    check_existing(out, resume=resume, force=force)
    note(
        f"no record was written yet; {out} keeps what it held before"
        if not resume
        else f"the journal in {out} is as it was; run the same command with --resume to continue"
    )
    if not resume:
        return None
    contents = read_records(out, repair=True)
    _check_recorded_head(out, contents)
    return contents


def _check_recorded_head(out: Path, contents) -> None:
    """A resumed journal must extend the head its audit's ``results.json`` recorded (the last
    lines, which no later line authenticates, are checked there)."""
    from mri_audit.audit.chain import check_head

    try:
        results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    header = contents.header or {}
    if not isinstance(results, dict) or results.get("audit") != header.get("audit"):
        return
    problem = check_head(list(contents.hashes), results.get("chain"), exact=False)
    if problem:
        raise DataError(
            f"cannot resume the audit in {out}: {problem}; restore the journal, or start over "
            "with --force"
        )


def prepare_journal(out: Path, header: dict, identity: dict, previous, dataset):
    """Start the journal (header first), or check that a resumed one is this audit's.

    Returns:
        (keys of the records already done, seconds of each earlier run segment).
    """
    from mri_audit.audit.journal import Journal, record_key
    from mri_audit.audit.outdir import remove_audit

    stored = previous.header if previous else None
    if stored is not None:
        check_resume(header, identity, stored, out)
        keys = set(dataset.keys())
        stray = next((r for r in previous.records if (r["volume"], r["slice"]) not in keys), None)
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


def merge_shards(
    out: Path,
    header: dict,
    dataset,
    names: Sequence[str],
    attacks: Sequence[str],
    segment: int,
    elapsed: float,
) -> list[dict]:
    """Every record of the audit in data, model and attack order; the per-rank shards of a
    distributed run (or of one this run resumed) are merged into ``records.jsonl`` (a re-read
    needs every record in it)."""
    records = read_records(out).records
    order = {key: i for i, key in enumerate(dataset.keys())}
    model_rank = {n: i for i, n in enumerate(names)}
    attack_rank = {a: i for i, a in enumerate(attacks)}
    records.sort(
        key=lambda r: (
            order.get((r["volume"], int(r["slice"])), 0),
            model_rank.get(r["model"], 0),
            attack_rank.get(r["attack"], 0),
        )
    )
    shards = list(out.glob("records.rank*.jsonl"))
    if shards:
        from mri_audit.audit.chain import chained_lines
        from mri_audit.files import atomic_write

        # The merged journal is chained afresh, after every shard's chain was checked above.
        timing = {"kind": "time", "audit": header["audit"], "segment": segment, "elapsed": elapsed}
        atomic_write(out / "records.jsonl", chained_lines([header, *records, timing])[0])
        for shard in shards:
            shard.unlink()
    return records
