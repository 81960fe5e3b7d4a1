"""The journal's hash chain: every line carries its sequence number and the SHA-256 of the line
before it, so an edited, dropped, inserted or reordered line breaks the chain where it happened.

A line is linked by two fields written into its JSON object: ``seq`` (its line number in the
file, 1 for the first line) and ``prev`` (the hex SHA-256 of the previous line's bytes, without
the newline). The main journal's first line (the header) links to :data:`GENESIS`; a per-rank
shard's first line links to the main journal's header line, so a shard belongs to one audit.
The *head* of a journal is its line count and the hash of its last line: ``results.json``
records it, so the last line, which no later line authenticates, is checked too.

An unkeyed chain can be recomputed by whoever rewrites the whole file (Schneier & Kelsey): the
chain shows that nothing changed *after* the head was recorded; a signature (``--sign``) ties
the head to its signer, and ``mri-audit verify --replay`` ties the numbers to the model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from mri_audit.files import to_jsonable

__all__ = [
    "GENESIS",
    "LINK_FIELDS",
    "ChainBreak",
    "Head",
    "Link",
    "check_head",
    "check_link",
    "chained_lines",
    "dumps_linked",
    "line_hash",
    "tail_link",
    "unlink",
]

GENESIS = "0" * 64
"""The ``prev`` of a main journal's first line."""
LINK_FIELDS = ("seq", "prev")


def line_hash(line: bytes) -> str:
    """The hex SHA-256 of one journal line's bytes (a trailing newline is not hashed)."""
    return hashlib.sha256(line.rstrip(b"\r\n")).hexdigest()


def unlink(obj: dict) -> dict:
    """``obj`` without its chain fields (they belong to the file, not to the record)."""
    return {k: v for k, v in obj.items() if k not in LINK_FIELDS}


def dumps_linked(obj: dict, seq: int, prev: str) -> bytes:
    """One journal line (with its newline): ``obj`` linked as line ``seq`` after ``prev``."""
    linked = {**unlink(obj), "seq": seq, "prev": prev}
    text = json.dumps(to_jsonable(linked), sort_keys=True, allow_nan=False)
    return (text + "\n").encode("utf-8")


class Link(NamedTuple):
    """Where a chain ends: the last line's number and hash (``seq`` 0: an empty chain)."""

    seq: int
    prev: str


def chained_lines(objs: Iterable[dict], start: Link = Link(0, GENESIS)) -> tuple[bytes, Link]:
    """The bytes of ``objs`` as chained journal lines after ``start``, and the new end."""
    seq, prev = start
    parts = []
    for obj in objs:
        seq += 1
        line = dumps_linked(obj, seq, prev)
        parts.append(line)
        prev = line_hash(line)
    return b"".join(parts), Link(seq, prev)


def tail_link(path: Path, start: Link) -> Link:
    """The end of the chain in ``path`` (its last whole line), or ``start`` for an empty or
    missing file. Reads only the file's end."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            block = 1 << 16
            data = b""
            while True:
                back = min(size, len(data) + block)
                fh.seek(size - back)
                data = fh.read(back)
                lines = [x for x in data.split(b"\n") if x.strip()]
                if len(lines) >= 2 or back == size:
                    break
    except FileNotFoundError:
        return start
    if not lines:
        return start
    last = lines[-1]
    seq = json.loads(last).get("seq")
    if not isinstance(seq, int):
        raise ValueError(f"{path.name}: its last line has no chain link")
    return Link(seq, line_hash(last))


class ChainBreak(NamedTuple):
    """A broken link: what to say about line ``line`` of a file."""

    line: int
    problem: str


class Head(NamedTuple):
    """A journal's head: its line count and the hash of its last line."""

    lines: int
    sha256: str

    def to_dict(self, file: str = "records.jsonl") -> dict:
        return {"file": file, "lines": self.lines, "head": self.sha256}


def check_link(obj: dict, line_no: int, expected: Link) -> ChainBreak | None:
    """Check that ``obj`` (line ``line_no`` of its file) continues the chain ending at
    ``expected``; a :class:`ChainBreak` naming the line and what broke, else None."""
    seq, prev = obj.get("seq"), obj.get("prev")
    if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(prev, str):
        return ChainBreak(
            line_no,
            "has no hash-chain link (seq, prev): it was added by hand, or the journal was "
            "written by an mri-audit without chained journals",
        )
    want = expected.seq + 1
    if seq != want:
        if seq < want:
            what = "a line was duplicated, or lines were reordered"
        else:
            what = f"{seq - want} line(s) were dropped before it, or lines were reordered"
        return ChainBreak(line_no, f"has sequence number {seq}, expected {want}: {what}")
    if prev != expected.prev:
        if expected.seq == 0:
            what = "the file's first line does not start the chain (it was replaced or edited)"
        else:
            what = (
                f"line {line_no - 1} was edited, or a line was inserted, dropped or reordered there"
            )
        return ChainBreak(line_no, f"does not link to the line before it: {what}")
    return None


def check_head(hashes: list[str], head: dict | None, *, exact: bool) -> str | None:
    """Compare a journal's line hashes with the head ``results.json`` recorded.

    Args:
        hashes: the hash of each line of the main journal, in order.
        head: ``results.json``'s ``chain`` (``lines``, ``head``); None: nothing to compare.
        exact: the journal must end at the head (a finished audit); otherwise it may have
            grown after it (an audit resumed after its results were written).

    Returns:
        What does not match (one line), or None.
    """
    if not head:
        return None
    lines, want = head.get("lines"), head.get("head")
    if not isinstance(lines, int) or not isinstance(want, str) or lines < 1:
        return "results.json's chain head is malformed"
    if len(hashes) < lines:
        return (
            f"the journal has {len(hashes)} lines but results.json's chain head says {lines}: "
            "lines were dropped from its end"
        )
    if hashes[lines - 1] != want:
        return (
            f"line {lines} of the journal does not match results.json's chain head: the "
            "journal (or results.json) was edited after the audit"
        )
    if exact and len(hashes) > lines:
        return (
            f"the journal has {len(hashes) - lines} line(s) after results.json's chain head "
            f"(line {lines}): they were added after the audit's results were written"
        )
    return None
