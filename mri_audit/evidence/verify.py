"""``mri-audit verify AUDIT``: check an audit folder as a whole, without its model.

Checks, each one line: the journal's hash chain is whole and ends at the head ``results.json``
recorded; every file matches the manifest's SHA-256 and ``records.csv`` holds exactly the
journal's records; ``results.json``'s aggregates (attack table, intervals, paired tests,
transfer, verdict, failures), worst cases and warnings equal what the records give when
recomputed (the code path of ``mri-audit report``); the report renders from those results
byte for byte; the signature, when a public key is given. ``--replay N`` re-runs records
through the model (:mod:`mri_audit.evidence.replay`).
"""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from mri_audit.errors import MriAuditError

__all__ = ["Check", "verify_folder", "first_difference", "BROKEN", "MISMATCH"]

logger = logging.getLogger(__name__)

BROKEN = 4
"""Exit status of a broken journal or a file that does not match the manifest."""
MISMATCH = 8
"""Exit status of whole files whose numbers do not agree (results, report, replay, signature)."""
REL_TOL = 1e-9
"""Relative tolerance of the recomputed aggregates (one machine's numpy against another's)."""


class Check(NamedTuple):
    """One verification check: its name, whether it held, one line of detail, the exit
    status it causes when it failed (``None``: informational, never fails)."""

    name: str
    ok: bool | None
    detail: str
    status: int = MISMATCH

    def line(self) -> str:
        mark = {True: "ok  ", False: "FAIL", None: "--  "}[self.ok]
        return f"{mark}  {self.name:<10} {self.detail}"


def first_difference(a: Any, b: Any, where: str = "") -> str | None:
    """The path of the first difference between two JSON values (floats within
    :data:`REL_TOL`), with both values; None when they agree."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return None if a == b else f"{where or '.'}: {a!r} vs {b!r}"
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-12):
            return None
        return f"{where}: {a!r} vs {b!r}"
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                return f"{where}.{k}: {'missing' if k not in a else 'present'} vs recomputed"
            diff = first_difference(a[k], b[k], f"{where}.{k}" if where else str(k))
            if diff:
                return diff
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{where}: {len(a)} items vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            diff = first_difference(x, y, f"{where}[{i}]")
            if diff:
                return diff
        return None
    return None if a == b else f"{where}: {a!r} vs {b!r}"


def _guard(name: str, status: int, step: Callable[[], str]) -> Check:
    """Run one check: any failure (a user error, an unreadable file) is that check failing."""
    try:
        return Check(name, True, step(), status)
    except MriAuditError as err:  # a broken or missing file is exit 4 whichever check found it
        return Check(name, False, str(err), BROKEN if err.exit_code == BROKEN else status)
    except Exception as err:  # a malformed results.json: that check fails, in one line
        logger.debug("check %s failed", name, exc_info=True)
        return Check(name, False, " ".join(f"{type(err).__name__}: {err}".split()), status)


def _journal(path: Path, results: dict) -> str:
    from mri_audit.audit.chain import check_head
    from mri_audit.audit.journal import read_journal
    from mri_audit.errors import DataError

    chain = results.get("chain")
    if not isinstance(chain, dict):
        raise DataError(
            "results.json records no chain head (an unfinished audit, or one written by an "
            "mri-audit without chained journals)"
        )
    journal = path.parent / str(chain.get("file") or "records.jsonl")
    if not journal.is_file():
        raise DataError(f"{journal.name} is missing")
    from mri_audit.audit.identity import fingerprint, stored_identity

    contents = read_journal(journal, hint="the journal is not the one the audit wrote")
    header = contents.header
    if header is None or header.get("audit") != results.get("audit"):
        raise DataError(f"{journal.name} belongs to another audit than {path.name}")
    if fingerprint(stored_identity(header)) != header["audit"]:
        raise DataError(
            f"{journal.name}'s header does not hash to its fingerprint {header['audit']}: its "
            "configuration, code, models or data were edited"
        )
    # What results.json says the audit was (its identity: configuration, code, models' sources,
    # weights and arguments, data files) must be what the chained header says.
    own, theirs = stored_identity(results), stored_identity(header)
    for key in ("code", "models", "data") if results.get("reread_from") else own:
        if own[key] != theirs[key]:
            raise DataError(f"{path.name}'s {key} is not the journal header's")
    problem = check_head(list(contents.hashes), chain, exact=True)
    if problem:
        raise DataError(problem)
    return (
        f"{journal.name}: {len(contents.hashes)} lines, chain whole, head "
        f"{contents.hashes[-1][:16]} matches {path.name}"
    )


def _files(path: Path, results: dict, expected: tuple[str, ...]) -> str:
    from mri_audit.errors import DataError
    from mri_audit.evidence.manifest import file_digests

    manifest = results.get("manifest")
    if not isinstance(manifest, dict):
        raise DataError("results.json records no manifest of the files it wrote")
    missing = [n for n in expected if n not in manifest]
    if missing:
        raise DataError(f"the manifest does not list {', '.join(missing)}")
    for name, digest in manifest.items():
        if "/" in name or not (path.parent / name).is_file():
            raise DataError(f"{name} is missing (the manifest lists it)")
        if file_digests(path.parent, [name])[name] != digest:
            raise DataError(f"{name} does not match the manifest (its SHA-256 differs)")
    verb = "matches" if len(manifest) == 1 else "match"
    return f"{', '.join(manifest)} {verb} the manifest's SHA-256"


def _read(path: Path, results: dict, into: list[dict]) -> str:
    """The journal's records (into ``into``), and that they cover the data: every model and
    attack has one record per slice."""
    from mri_audit.audit.reread import read_journal
    from mri_audit.errors import DataError

    reread = path.name != "results.json"
    if results.get("complete") is not True:
        raise DataError(f"{path.name} says complete: false: the audit's files were not finished")
    if reread != (results.get("reread_from") is not None):
        raise DataError(
            f"{path.name} is {'not ' if reread else ''}marked as a re-read: "
            "results.json is the audit's own, results.<criterion>.json its re-reads"
        )
    into.extend(read_journal(path, results))
    cells: dict[tuple, set] = {}
    for r in into:
        cells.setdefault((r["model"], r["attack"]), set()).add((r["volume"], int(r["slice"])))
    slices = (results.get("data") or {}).get("slices")
    names = [m.get("name") for m in results.get("models") or []]
    attacks = (results.get("config") or {}).get("attacks") or []
    for cell in ((m, a) for m in names for a in attacks):
        if len(cells.get(cell, ())) != slices:
            raise DataError(
                f"the journal holds {len(cells.get(cell, ()))} records of {cell[0]} "
                f"{cell[1]}, but the data has {slices} slices"
            )
    return f"{len(into)} records: one per model, attack and slice of the data"


def _records_csv(path: Path, results: dict, records: list[dict]) -> str:
    from mri_audit.errors import DataError
    from mri_audit.report.records_csv import records_csv_text

    name = (results.get("files") or {}).get("records")
    csv = path.parent / (name or "records.csv")
    rows = [{k: v for k, v in r.items() if k != "audit"} for r in records]
    want = records_csv_text(rows).splitlines()
    have = csv.read_text(encoding="utf-8").splitlines()
    if want[:1] != have[:1]:
        raise DataError(f"{csv.name}'s columns are not the journal's")
    if sorted(want[1:]) != sorted(have[1:]):
        extra = sorted(set(have[1:]) - set(want[1:]))
        row = f" (first: {extra[0][:80]})" if extra else ""
        raise DataError(f"{csv.name} does not hold exactly the journal's records{row}")
    return f"{csv.name} holds the journal's {len(want) - 1} records"


AGGREGATES = ("clean", "zero_filled", "attacks", "transfer", "paired", "verdict", "failures")


def _results(results: dict, records: list[dict]) -> str:
    from mri_audit.audit.aggregates import aggregate
    from mri_audit.audit.cautions import audit_warnings
    from mri_audit.audit.panels import worst_records
    from mri_audit.audit.result import WORST_CASE_FIELDS
    from mri_audit.errors import DataError
    from mri_audit.fnaf.criteria import criterion_of

    config = results.get("config") or {}
    names = [m.get("name") for m in results.get("models") or []]
    try:
        agg = json.loads(
            json.dumps(
                aggregate(
                    records,
                    criterion=criterion_of(config),
                    max_attack_rate=(results.get("verdict") or {}).get("max_attack_rate"),
                    primary=names[0] if names else None,
                ),
                default=float,
            )
        )
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"the records cannot be aggregated ({err!r})") from None
    for key in AGGREGATES:
        diff = first_difference(results.get(key), agg.get(key), key)
        if diff:
            raise MriAuditError(f"results.json differs from its records at {diff}")
    if results.get("reread_from") is None:
        cases = [{k: c.get(k) for k in WORST_CASE_FIELDS} for c in worst_records(records, names[0])]
        diff = first_difference(results.get("worst_cases"), json.loads(json.dumps(cases)), "")
        if diff:
            raise MriAuditError(f"results.json's worst cases differ from the records at {diff}")
        warnings = audit_warnings(
            models=results["models"],
            clean=agg["clean"],
            zero_filled=agg.get("zero_filled"),
            attacks=agg["attacks"],
            config=config,
            data=results.get("data") or {},
            max_attack_rate=agg["verdict"].get("max_attack_rate"),
        )
        if list(results.get("warnings") or []) != warnings:
            raise MriAuditError("results.json's warnings are not those its records give")
    n = sum(len(a) for a in (results.get("attacks") or {}).values())
    verdict = results.get("verdict") or {}
    gate = (
        f"; verdict {str(verdict.get('status')).upper()} under --max-attack-rate "
        f"{verdict['max_attack_rate']:g}"
        if verdict.get("max_attack_rate") is not None
        else ""
    )
    return (
        f"attack table ({n} row{'s' if n != 1 else ''}), intervals, paired tests, transfer, "
        f"verdict and failures recompute from the {len(records)} records{gate}"
    )


_DATA_URI = re.compile(rb"data:[a-z/+]+;base64,[A-Za-z0-9+/=]+")


def _matplotlib() -> str:
    import matplotlib

    return matplotlib.__version__


def _report(path: Path, results: dict) -> str:
    from mri_audit.audit.reread import render_reread

    name = Path((results.get("files") or {}).get("report") or "report.html").name
    report = path.parent / name
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(render_reread(path, Path(tmp) / name)).read_bytes()
    have = report.read_bytes()
    if have == fresh:
        return f"{name} is what {path.name} renders to, byte for byte"
    recorded = (results.get("versions") or {}).get("matplotlib")
    if _DATA_URI.sub(b"", have) == _DATA_URI.sub(b"", fresh) and recorded != _matplotlib():
        return (
            f"{name} renders from {path.name}; its figures' bytes differ (matplotlib "
            f"{recorded or 'unrecorded'} wrote them, this is {_matplotlib()})"
        )
    raise MriAuditError(f"{name} is not what {path.name} renders to (it was edited)")


def verify_folder(
    audit: str | Path,
    *,
    key: str | Path | None = None,
    replay: int | None = None,
    nonce: str = "",
    overrides: dict | None = None,
) -> list[Check]:
    """Every check of ``mri-audit verify`` on the audit (or map) ``audit``, in order.

    Args:
        audit: the audit folder or its ``results.json``.
        key: a public key: check ``signature.json`` with it.
        replay: re-run this many records through the model (None: no replay).
        nonce: the reviewer's text mixed into the choice of replayed records.
        overrides: ``model``/``weights``/``data`` given again for the replay.

    Raises:
        UsageError: a bad keyword, as ``verify``'s flag would be (exit 2).
        DataError: no readable ``results.json`` (exit 4).
    """
    from mri_audit.report.html import load_results, resolve_results
    from mri_audit.settings import VERIFY, check_settings

    given = dict(overrides or {})
    check_settings(  # the keywords are `verify`'s flags: one check
        VERIFY,
        {
            "key": key,
            "replay": replay,
            "nonce": nonce or None,
            "models": tuple(given.get("models") or ()),
            "weights": tuple(given.get("weights") or ()),
            "data": given.get("data"),
            "device": given.get("device") or "auto",
        },
    )
    path = resolve_results(audit)
    results = load_results(path)
    checks: list[Check] = []
    is_map = results.get("kind") == "map"
    if is_map:
        from mri_audit.evidence.manifest import MAP_OUTPUTS

        checks.append(
            Check("journal", None, "a map keeps no journal: its numbers cannot be replayed")
        )
        checks.append(_guard("files", BROKEN, lambda: _files(path, results, MAP_OUTPUTS)))
        checks.append(_guard("results", MISMATCH, lambda: _map_csv(path, results)))
    else:
        from mri_audit.evidence.manifest import AUDIT_OUTPUTS

        reread = path.name != "results.json"
        report_name = Path((results.get("files") or {}).get("report") or "report.html").name
        expected = (report_name,) if reread else AUDIT_OUTPUTS
        checks.append(_guard("journal", BROKEN, lambda: _journal(path, results)))
        checks.append(_guard("files", BROKEN, lambda: _files(path, results, expected)))
        records: list[dict] = []
        if checks[0].ok:
            checks.append(_guard("coverage", BROKEN, lambda: _read(path, results, records)))
        if checks[0].ok and checks[-1].ok:
            if not reread:
                checks.append(
                    _guard("records", BROKEN, lambda: _records_csv(path, results, records))
                )
            checks.append(_guard("results", MISMATCH, lambda: _results(results, records)))
        else:
            checks.append(Check("results", False, "not checked: the journal is broken"))
    other = _other_code(results)
    if other:
        checks.append(Check("report", None, other))
    else:
        checks.append(_guard("report", MISMATCH, lambda: _report(path, results)))
    if key is not None:
        from mri_audit.evidence.attest import check_signature

        checks.append(
            _guard("signature", MISMATCH, lambda: check_signature(path.parent, key, path.name))
        )
    elif (path.parent / "signature.json").is_file():
        checks.append(Check("signature", None, "signature.json present, not checked (--key)"))
    if replay:
        from mri_audit.evidence.replay import replay_checks

        if is_map:
            checks.append(Check("replay", False, "a map keeps no records to replay"))
        elif not all(c.ok is not False for c in checks):
            checks.append(Check("replay", False, "not run: an earlier check failed"))
        else:
            checks.extend(replay_checks(path, results, replay, nonce, given))
    return checks


def _other_code(results: dict) -> str | None:
    """Why the report cannot be compared byte for byte (another mri-audit code rendered it);
    None when this code is the audit's."""
    from mri_audit.audit.identity import code_digest
    from mri_audit.fnaf.registry import load_attack

    code = results.get("code") or {}
    try:
        attacks = [load_attack(a) for a in (results.get("config") or {}).get("attacks") or []]
    except MriAuditError:
        attacks = []
    if results.get("kind") == "map" or code.get("sha256") in (None, code_digest(attacks)):
        return None
    return (
        f"not compared: the audit was written by mri-audit {code.get('mri_audit')} with other "
        f"code (sha256 {str(code.get('sha256'))[:12]}); verify with that version to compare "
        "the report byte for byte"
    )


def _map_csv(path: Path, results: dict) -> str:
    from mri_audit.report.map_files import write_map_csv

    with tempfile.TemporaryDirectory() as tmp:
        write_map_csv(Path(tmp) / "map.csv", results["map"])
        fresh = (Path(tmp) / "map.csv").read_bytes()
    if (path.parent / "map.csv").read_bytes() != fresh:
        raise MriAuditError("map.csv is not the table results.json's map gives")
    return "map.csv is the table results.json's map gives"
