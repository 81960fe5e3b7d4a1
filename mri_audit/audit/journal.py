"""The append-only record journal (``records.jsonl``) an audit writes as it goes.

Line 1 is the header: the audit's configuration, models, data and its fingerprint ``audit``
(:mod:`mri_audit.audit.identity`). Every later line is a record of one (model, attack, volume,
slice)
carrying the same fingerprint, or a ``time`` line (the seconds a run segment had worked when it
wrote its last batch, so a resumed audit's elapsed time sums every segment).

The journal is evidence, so it is never trusted blindly: every line is linked into a hash
chain (:mod:`mri_audit.audit.chain`: its sequence number and the SHA-256 of the line before), and
:func:`read_journal` refuses a line that breaks the chain (edited, dropped, inserted,
reordered), that is not a JSON object, a record of another audit, a record repeated, a second
header or a record of a model or attack the audit does not have, each with its line number.
Only a torn *last* line (a write cut by a crash) is dropped, as the one thing an interruption
can leave.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from mri_audit.audit.chain import (
    GENESIS,
    Head,
    Link,
    chained_lines,
    check_link,
    line_hash,
    tail_link,
    unlink,
)
from mri_audit.errors import DataError, write_failure

__all__ = [
    "Journal",
    "header_anchor",
    "JournalContents",
    "RECORD_KINDS",
    "read_journal",
    "read_audit_journal",
    "record_key",
]

logger = logging.getLogger(__name__)

RECORD_KINDS = frozenset({"fnaf", "degradation", "skipped", "error"})
_KEY_TYPES = {"model": str, "attack": str, "volume": str}


def record_key(rec: dict) -> tuple:
    """The identity of a record: (model, attack, volume, slice)."""
    return (rec["model"], rec["attack"], rec["volume"], int(rec["slice"]))


class JournalContents(NamedTuple):
    """A validated journal.

    Attributes:
        header: the header line (None for a journal with no lines).
        records: the records, in journal order (without their chain links).
        segments: seconds worked by each earlier run segment (segment id -> seconds).
        hashes: the SHA-256 of each line of the main journal, in order (its head is the last).
    """

    header: dict | None
    records: list[dict]
    segments: dict[int, float]
    hashes: tuple[str, ...] = ()

    @property
    def head(self) -> Head | None:
        """The main journal's head (line count, last line's hash); None when it is empty."""
        return Head(len(self.hashes), self.hashes[-1]) if self.hashes else None

    @property
    def elapsed(self) -> float:
        """Seconds worked by all segments that wrote a time line."""
        return float(sum(self.segments.values()))


class JournalError(DataError):
    """A journal line that cannot be trusted (exit 4), named by its line number."""


class _Validator:
    """Checks lines one by one against the header and the records seen before."""

    def __init__(self, hint: str) -> None:
        self.hint = hint
        self.header: dict | None = None
        self.audit: str | None = None
        self.models: set[str] = set()
        self.attacks: set[str] = set()
        self.seen: dict[tuple, str] = {}
        self.main: dict[tuple, dict] = {}
        self.in_shard = False
        self.records: list[dict] = []
        self.segments: dict[int, float] = {}
        self.link = Link(0, GENESIS)
        self.hashes: list[str] = []

    def fail(self, where: str, problem: str) -> JournalError:
        return JournalError(f"{where}: {problem}; {self.hint}")

    def set_header(self, obj: dict, where: str) -> None:
        if self.header is not None:
            raise self.fail(where, "a second header")
        self.header = obj
        self.audit = obj.get("audit")
        try:
            self.models = {m["name"] for m in obj["models"]}
            self.attacks = set(obj["config"]["attacks"])
        except (KeyError, TypeError):
            raise self.fail(where, "the header lacks the audit's models or attacks") from None

    def add(self, obj: object, where: str) -> None:
        if not isinstance(obj, dict):
            raise self.fail(where, f"is not a JSON object ({type(obj).__name__})")
        kind = obj.get("kind")
        if kind == "header":
            self.set_header(obj, where)
            return
        if self.header is None:
            raise self.fail(where, "comes before the journal's header (line 1 must be it)")
        if obj.get("audit") != self.audit:
            raise self.fail(
                where,
                f"belongs to another audit (fingerprint {obj.get('audit')}, "
                f"this audit {self.audit})",
            )
        if kind == "time":
            seg, sec = obj.get("segment"), obj.get("elapsed")
            ok = isinstance(seg, int) and isinstance(sec, (int, float)) and math.isfinite(sec)
            if not ok or sec < 0:
                raise self.fail(where, "a malformed time line")
            self.segments[seg] = max(self.segments.get(seg, 0.0), float(sec))
            return
        if kind not in RECORD_KINDS:
            raise self.fail(where, f"unknown kind {kind!r}")
        for field, typ in _KEY_TYPES.items():
            if not isinstance(obj.get(field), typ):
                raise self.fail(where, f"a record without a valid {field!r}")
        if not isinstance(obj.get("slice"), int) or isinstance(obj.get("slice"), bool):
            raise self.fail(where, "a record without a valid 'slice'")
        if obj["model"] not in self.models:
            raise self.fail(where, f"a record of model {obj['model']!r}, not in this audit")
        if obj["attack"] not in self.attacks:
            raise self.fail(where, f"a record of attack {obj['attack']!r}, not in this audit")
        key = record_key(obj)
        if key in self.seen:
            if self.in_shard and self.main.get(key) == obj:
                # A shard record already merged into the main journal (a run killed between
                # writing the merged journal and removing its shards): the same record, once.
                return
            raise self.fail(where, f"repeats the record of {self.seen[key]} {key}")
        self.seen[key] = where
        if not self.in_shard:
            self.main[key] = obj
        self.records.append(obj)


def _lines(path: Path, *, repair: bool) -> list[tuple[int, bytes]]:
    """(line number, bytes) of the non-empty lines; a torn last line is dropped (and cut from
    the file when ``repair``); a whole last line that lost only its newline gets it back
    (when ``repair``), so the next append starts on a line of its own."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    out = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    if out and not data.endswith(b"\n"):
        n, last = out[-1]
        try:
            json.loads(last)
            if repair:
                with path.open("ab") as fh:
                    fh.write(b"\n")
        except ValueError:
            out.pop()
            logger.warning("dropping a torn last line (line %d) of %s", n, path)
            if repair:
                with path.open("r+b") as fh:
                    fh.truncate(len(data) - len(lines[-1]))
    return out


def _parse(v: _Validator, path: Path, repair: bool, start: Link) -> list[str]:
    """Check every line of ``path`` (its chain from ``start``, then its content); returns the
    lines' hashes."""
    v.link, hashes = start, []
    for n, line in _lines(path, repair=repair):
        where = f"{path.name} line {n}"
        try:
            obj = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            raise v.fail(where, "is not valid JSON (a torn or edited line)") from None
        if isinstance(obj, dict):
            broken = check_link(obj, n, v.link)
            if broken is not None:
                raise v.fail(where, broken.problem)
            v.link = Link(obj["seq"], line_hash(line))
            obj = unlink(obj)
        hashes.append(line_hash(line))
        v.add(obj, where)
    return hashes


def read_journal(path: str | Path, *, repair: bool = False, hint: str | None = None):
    """Read and validate one journal.

    Args:
        path: the ``records.jsonl`` file (a missing file reads as empty), read with the
            per-rank shards beside it (``records.rank*.jsonl``) if an unfinished distributed
            run left any.
        repair: cut a torn last line from the file (a resume does; a re-read does not).
        hint: how to recover, appended to an error (defaults to a resume's advice).

    Returns:
        The :class:`JournalContents`.

    Raises:
        JournalError: a line that cannot be trusted, named by its number (exit 4).
    """
    return read_audit_journal(Path(path), shards=None, repair=repair, hint=hint)


def read_audit_journal(
    path: Path,
    *,
    shards: Iterable[Path] | None = None,
    repair: bool = False,
    hint: str | None = None,
) -> JournalContents:
    """Read and validate an audit's journal and its per-rank shards (``records.rank*.jsonl``,
    which hold records of the same audit and no header).

    Args:
        path: the main journal.
        shards: the shard files (default: every ``records.rank*.jsonl`` beside ``path``).
        repair: cut torn last lines from the files.
        hint: how to recover, appended to an error.
    """
    path = Path(path)
    hint = hint or (
        "the journal was edited, or written by two processes: restore it, delete that line, "
        "or start over with --force"
    )
    v = _Validator(hint)
    hashes: list[str] = []
    if path.exists():
        hashes = _parse(v, path, repair, Link(0, GENESIS))
    if shards is None:
        shards = sorted(path.parent.glob("records.rank*.jsonl"))
    for shard in shards:
        if v.header is None:
            raise v.fail(shard.name, f"a shard of an audit whose journal {path.name} is empty")
        before = v.header
        v.in_shard = True
        _parse(v, shard, repair, Link(0, hashes[0]))  # a shard links to the header line
        if v.header is not before:
            raise v.fail(shard.name, "a shard with a header of its own")
    return JournalContents(v.header, v.records, v.segments, tuple(hashes))


def header_anchor(path: Path) -> str:
    """The hash of a main journal's header line (what a rank's shard links its first line to)."""
    with Path(path).open("rb") as fh:
        return line_hash(fh.readline())


class Journal:
    """Append-only JSON-lines file; each append is flushed and fsync'ed.

    Args:
        path: the ``records.jsonl`` file (or a rank's shard).
        audit: the audit's fingerprint, stamped on every record appended.
        segment: this run segment's id; when given, each append also writes a ``time`` line
            with the seconds since ``started``.
        started: ``time.perf_counter()`` when the segment began.
        anchor: the hash the file's first line links to (:data:`GENESIS` for the main journal,
            the main journal's header line for a rank's shard: :func:`header_anchor`).

    Every line is linked into the file's hash chain (:mod:`mri_audit.audit.chain`); the chain's
    end is read from the file's last line at the first append, then kept.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        audit: str | None = None,
        segment: int | None = None,
        started: float | None = None,
        anchor: str = GENESIS,
    ) -> None:
        self.path = Path(path)
        self.audit = audit
        self.segment = segment
        self.started = started
        self.anchor = anchor
        self._end: Link | None = None

    def read(self) -> list[dict]:
        """Every line as a dict, validated (header first, then the records); see
        :func:`read_journal`."""
        contents = read_journal(self.path)
        return ([contents.header] if contents.header else []) + contents.records

    def write_header(self, header: dict) -> None:
        """Create the journal with its header, atomically (no empty journal is ever left)."""
        from mri_audit.files import atomic_write

        data, end = chained_lines([header], Link(0, self.anchor))
        atomic_write(self.path, data)
        self._end = end

    def append(self, records: Iterable[dict]) -> None:
        """Append records durably; on a failed write nothing of this call is left.

        Raises:
            OutputError: the disk is full or the file cannot be written (exit 7).
        """
        import time

        stamped = [{**r, "audit": self.audit} if self.audit else r for r in records]
        if not stamped:
            return
        if self.segment is not None and self.audit:
            elapsed = time.perf_counter() - (self.started or time.perf_counter())
            stamped.append(
                {"kind": "time", "audit": self.audit, "segment": self.segment, "elapsed": elapsed}
            )
        if self._end is None:
            self._end = tail_link(self.path, Link(0, self.anchor))
        data, end = chained_lines(stamped, self._end)
        size = self.path.stat().st_size if self.path.exists() else None
        try:
            with self.path.open("ab") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as err:
            self._undo(size)
            raise write_failure(
                self.path, err, "this batch was not kept; free space, then run again with --resume"
            ) from None
        self._end = end

    def _undo(self, size: int | None) -> None:
        """Cut a partly written append back to the journal's previous size."""
        try:
            if size is None:
                self.path.unlink(missing_ok=True)
            else:
                with self.path.open("r+b") as fh:
                    fh.truncate(size)
        except OSError as err:  # pragma: no cover - the disk refuses even a truncate
            logger.warning("could not cut a partial write from %s: %s", self.path, err)
