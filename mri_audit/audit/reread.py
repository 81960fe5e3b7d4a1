"""Re-reading an audit under another criterion or other thresholds, without recomputing.

Every FNAF record keeps, for each criterion, the best admissible candidate that criterion selects
among those the audit evaluated (DESIGN §4), and selection never depends on the hit thresholds.
So the aggregates of the audit under ``--criterion X`` (and ``--margin``, ``--min-recovery``,
``--threshold``) are a function of the journal ``records.jsonl`` alone:
:func:`reread_results` recounts them with :func:`mri_audit.audit.aggregates.aggregate`, and
:func:`reread_audit` writes ``results.<X>.json`` and renders ``report.<X>.html`` beside the audit's
``results.json``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from mri_audit.errors import DataError, MriAuditError, UsageError
from mri_audit.fnaf.criteria import CRITERIA, DEFAULT_CRITERION, Criterion, criterion_of
from mri_audit.report.method import THRESHOLD_KEYS

__all__ = [
    "OPTION_OWNER",
    "choose_criterion",
    "read_journal",
    "reread_frame",
    "reread_results",
    "reread_audit",
]

# Which criterion each threshold option belongs to.
OPTION_OWNER = {"margin": "erasure", "min_recovery": "recovery", "threshold": "paper"}


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def audit_criterion(results: dict) -> str:
    """The criterion the audit itself ran under (its attacks searched with it)."""
    config = results.get("config") or {}
    return results.get("reread_from") or config.get("criterion") or DEFAULT_CRITERION


def choose_criterion(results: dict, name: str | None, **thresholds: float | None) -> Criterion:
    """The criterion to re-read ``results`` under, with the stored thresholds overridden.

    Args:
        results: the stored ``results.json``.
        name: ``erasure``, ``recovery`` or ``paper``; None keeps the stored one.
        thresholds: ``margin``, ``min_recovery``, ``threshold`` (None keeps the stored value).

    Raises:
        UsageError: an unknown criterion, a threshold of another criterion, or one out of range.
    """

    config = results.get("config") or {}
    name = name or config.get("criterion") or DEFAULT_CRITERION
    if name not in CRITERIA:
        raise UsageError(f"unknown criterion {name!r}; choose one of {', '.join(CRITERIA)}")
    for key, value in thresholds.items():
        if value is not None and OPTION_OWNER[key] != name:
            raise UsageError(
                f"{_option(key)} applies to --criterion {OPTION_OWNER[key]}, not {name}; "
                f"remove it or choose --criterion {OPTION_OWNER[key]}"
            )
    try:
        return criterion_of(config, name, **thresholds)
    except ValueError as err:
        given = next((k for k, v in thresholds.items() if v is not None), None)
        raise UsageError(f"invalid {_option(given)}: {err}" if given else str(err)) from None


def read_journal(path: Path, results: dict) -> list[dict]:
    """The audit's records from its journal beside ``results.json``, in the audit's order.

    Raises:
        DataError: the journal is missing, corrupt, empty or belongs to another audit.
    """
    from mri_audit.audit.journal import read_journal as read_validated

    files = results.get("files") or {}
    journal = path.parent / files.get("journal", "records.jsonl")
    if not journal.is_file():
        raise DataError(
            f"{journal.name} was not found beside {path.name}: re-reading an audit under "
            "another criterion needs its journal; re-run the audit"
        )
    try:
        contents = read_validated(
            journal, hint="the journal was edited or is damaged; re-run the audit"
        )
    except OSError as err:
        raise DataError(f"cannot read the journal {journal}: {err}") from None
    header, records = contents.header, contents.records
    if header is not None and header.get("audit") == results.get("audit"):
        from mri_audit.audit.chain import check_head

        problem = check_head(list(contents.hashes), results.get("chain"), exact=True)
        if problem:
            raise DataError(f"{journal}: {problem}; re-run the audit")
    if not records:
        raise DataError(f"the journal {journal} holds no records")
    if header is not None and header.get("audit") != results.get("audit"):
        raise DataError(
            f"the journal {journal} belongs to another audit than {path.name} "
            f"(fingerprint {header.get('audit')}, results {results.get('audit')})"
        )
    if header is not None:
        stored, own = results.get("config") or {}, header.get("config") or {}
        changed = sorted(
            k
            for k in set(stored) | set(own)
            if k not in ("criterion", *THRESHOLD_KEYS) and stored.get(k) != own.get(k)
        )
        if changed:
            raise DataError(
                f"the journal {journal} belongs to another audit than {path.name} "
                f"(configuration differs in {', '.join(changed)})"
            )
    models = {m.get("name"): i for i, m in enumerate(results.get("models") or [])}
    attacks = {a: i for i, a in enumerate((results.get("config") or {}).get("attacks") or [])}
    try:
        records.sort(key=lambda r: (models.get(r["model"], 0), attacks.get(r["attack"], 0)))
    except (KeyError, TypeError):
        raise DataError(f"the journal {journal} holds a record without model or attack") from None
    return records


def _check_selections(records: list[dict], criterion: Criterion) -> None:
    for r in records:
        if r.get("kind", "fnaf") != "fnaf":
            continue
        if criterion.name not in (r.get("criteria") or {}):
            raise UsageError(
                f"the records of this audit hold no {criterion.name!r} selection (record of "
                f"{r.get('model')} {r.get('attack')}, {r.get('volume')} slice {r.get('slice')}); "
                f"run the audit again with --criterion {criterion.name}"
            )


def reread_frame(records: list[dict], criterion: Criterion):
    """The per-slice frame (as ``records.csv``) of the records re-read under ``criterion``."""
    from mri_audit.audit.aggregates import reread
    from mri_audit.report.records_csv import records_frame

    _check_selections(records, criterion)
    try:
        return records_frame(reread(records, criterion))
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"the journal holds a malformed record ({err!r})") from None


def reread_results(results: dict, records: list[dict], criterion: Criterion) -> dict:
    """``results`` as re-read under ``criterion`` from the audit's ``records``.

    The aggregates (``clean``, ``attacks``, ``transfer``, ``verdict``, ``failures``) are recounted,
    the config names ``criterion`` and its thresholds, and ``reread_from`` names the criterion the
    audit ran under. Worst cases and images stay the audit's own.

    Raises:
        UsageError: the records hold no selection for ``criterion``.
        DataError: a malformed record.
    """
    from mri_audit.audit.aggregates import aggregate

    _check_selections(records, criterion)
    names = [m["name"] for m in results.get("models") or []]
    try:
        agg = aggregate(
            records,
            criterion=criterion,
            max_attack_rate=(results.get("verdict") or {}).get("max_attack_rate"),
            primary=names[0] if names else None,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"the journal holds a malformed record ({err!r})") from None
    out = copy.deepcopy(results)
    out.pop("manifest", None)  # the re-read's own files are hashed once written
    keys = ("clean", "zero_filled", "attacks", "transfer", "paired", "verdict", "failures")
    out.update({k: agg[k] for k in keys})
    config = out.setdefault("config", {})
    config["criterion"] = criterion.name
    config.update({k: v for k, v in criterion.params().items() if k in THRESHOLD_KEYS})
    out["reread_from"] = audit_criterion(results)
    out["files"] = dict(out.get("files") or {}, report=f"report.{criterion.name}.html")
    return out


def reread_audit(
    results_path: str | Path,
    name: str | None,
    *,
    margin: float | None = None,
    min_recovery: float | None = None,
    threshold: float | None = None,
    out_path: str | Path | None = None,
) -> tuple[Path, Path, dict]:
    """Re-read an audit under ``name`` and write ``results.<name>.json`` and its report.

    Args:
        results_path: the audit's ``results.json`` or its folder.
        name: the criterion (None: the audit's own, with other thresholds).
        margin, min_recovery, threshold: threshold overrides (None keeps the stored value).
        out_path: the HTML report (default ``report.<name>.html`` beside ``results.json``).

    Returns:
        (report path, ``results.<name>.json`` path, the re-read results).

    ``results.<name>.json`` says ``complete: true`` only once its report is written.

    Raises:
        UsageError: a bad criterion or threshold, or a criterion the records lack (exit 2).
        DataError: a missing or corrupt ``results.json`` or journal (exit 4).
        OutputError: a file cannot be written (exit 7).
        RenderError: the report failed to render (exit 1; its traceback is logged at DEBUG).
    """
    from mri_audit.files import atomic_write, write_json
    from mri_audit.report.failures import rendering
    from mri_audit.report.html import (
        build_context,
        load_audit,
        load_results,
        render_html,
        resolve_results,
    )
    from mri_audit.settings import REPORT, check_settings

    given = {"out": out_path, "criterion": name, "margin": margin}
    given.update(min_recovery=min_recovery, threshold=threshold)
    checked = check_settings(REPORT, given)  # the keywords are `report`'s flags: one check
    name, margin, threshold = checked["criterion"], checked["margin"], checked["threshold"]
    min_recovery = checked["min_recovery"]
    path = resolve_results(results_path)
    results = load_results(path)
    criterion = choose_criterion(
        results, name, margin=margin, min_recovery=min_recovery, threshold=threshold
    )
    records = read_journal(path, results)
    new = reread_results(results, records, criterion)
    json_path = path.parent / f"results.{criterion.name}.json"
    # Complete only once its report exists (a failure leaves it saying complete: false).
    write_json(json_path, dict(new, complete=False))
    audit = load_audit(json_path, records=reread_frame(records, criterion))
    out = Path(out_path) if out_path is not None else path.parent / new["files"]["report"]
    then = (
        f"{json_path.name} says complete: false and the journal is unchanged; once the cause "
        "is fixed, run this command again"
    )
    with rendering(f"rendering {out}", then):
        atomic_write(out, render_html(build_context(audit)).encode("utf-8"))
    if out.parent.resolve() == json_path.parent.resolve():
        from mri_audit.evidence.manifest import file_digests

        new["manifest"] = file_digests(out.parent, [out.name])
    write_json(json_path, dict(new, complete=True))
    return out, json_path, json.loads(json_path.read_text(encoding="utf-8"))


def render_reread(results_path: str | Path, out_path: str | Path | None = None) -> Path:
    """Render the report of a re-read (``results.<criterion>.json``), its per-slice records
    re-read from the audit's journal; any other results file renders as it is.

    A journal that cannot be re-read leaves the per-slice plots out, with a note saying why.
    """
    from mri_audit.report.html import load_results, render_report, resolve_results

    path = resolve_results(results_path)
    results = load_results(path)
    if results.get("kind") == "map" or results.get("reread_from") is None:
        if results.get("chain") and results.get("kind") != "map":
            read_journal(path, results)  # the chain whole and at its head, or one line (exit 4)
        written = render_report(path, out_path)
        if Path(written).resolve() == (path.parent / Path(written).name).resolve():
            from mri_audit.evidence.manifest import update_manifest

            update_manifest(path, [Path(written).name])  # a report rendered again in place
        return written
    frame, note = None, None
    try:
        criterion = criterion_of(results["config"])
        frame = reread_frame(read_journal(path, results), criterion)
    except MriAuditError as err:
        note = str(err)
    except ValueError as err:
        raise DataError(f"{path}: {err}") from None
    return render_report(path, out_path, records=frame, records_note=note)
