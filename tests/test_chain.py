"""The journal's hash chain (mri_audit.audit.chain, mri_audit.audit.journal): links, resumed
appends, per-rank shards, the head."""

from __future__ import annotations

import hashlib
import json

import pytest

from mri_audit.audit.chain import GENESIS, Link, chained_lines, check_head, line_hash, tail_link
from mri_audit.audit.journal import Journal, JournalError, header_anchor, read_audit_journal

HEADER = {
    "kind": "header",
    "audit": "a" * 16,
    "models": [{"name": "m"}],
    "config": {"attacks": ["fnaf-rs"]},
}


def _record(i: int) -> dict:
    return {"kind": "fnaf", "model": "m", "attack": "fnaf-rs", "volume": "v.h5", "slice": i}


def _journal(tmp_path, n: int = 3):
    path = tmp_path / "records.jsonl"
    j = Journal(path, audit=HEADER["audit"])
    j.write_header(HEADER)
    j.append([_record(i) for i in range(n)])
    return path


def test_lines_link_to_the_sha256_of_the_line_before(tmp_path):
    path = _journal(tmp_path)
    raw = path.read_bytes().splitlines()
    objs = [json.loads(x) for x in raw]
    assert [o["seq"] for o in objs] == [1, 2, 3, 4]
    assert objs[0]["prev"] == GENESIS
    for before, o in zip(raw, objs[1:], strict=False):
        assert o["prev"] == hashlib.sha256(before).hexdigest()
    contents = read_audit_journal(path)
    assert contents.head == (4, hashlib.sha256(raw[-1]).hexdigest())
    # The links belong to the file: the records read back carry none.
    assert all("seq" not in r and "prev" not in r for r in [contents.header, *contents.records])


def test_a_resumed_journal_continues_the_chain(tmp_path):
    path = _journal(tmp_path, 2)
    Journal(path, audit=HEADER["audit"]).append([_record(5)])  # a new process, as --resume
    assert len(read_audit_journal(path).records) == 3


def test_a_shard_links_to_its_journals_header(tmp_path):
    path = _journal(tmp_path, 1)
    shard = tmp_path / "records.rank1.jsonl"
    Journal(shard, audit=HEADER["audit"], anchor=header_anchor(path)).append([_record(7)])
    Journal(shard, audit=HEADER["audit"], anchor=header_anchor(path)).append([_record(8)])
    assert [r["slice"] for r in read_audit_journal(path).records] == [0, 7, 8]
    # A shard chained from anywhere else (another audit's header, or none) is refused.
    shard.write_bytes(chained_lines([_record(7)], Link(0, GENESIS))[0])
    with pytest.raises(JournalError, match="records.rank1.jsonl line 1: does not link"):
        read_audit_journal(path)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda ls: ls[:2] + ls[3:], "line 3: has sequence number 4, expected 3"),
        (lambda ls: ls[:3] + [ls[2]] + ls[3:], "line 4: has sequence number 3, expected 4"),
        (lambda ls: [ls[0], ls[2], ls[1], *ls[3:]], "line 2: has sequence number 3, expected 2"),
        (
            lambda ls: [ls[0], ls[1].replace(b'"slice": 0', b'"slice": 9'), *ls[2:]],
            "line 3: does not link to the line before it: line 2 was edited",
        ),
        (lambda ls: [ls[0], b'{"kind": "fnaf"}', *ls[1:]], "line 2: has no hash-chain link"),
    ],
    ids=["drop", "duplicate", "swap", "edit", "unlinked"],
)
def test_every_kind_of_damage_names_its_line(tmp_path, edit, message):
    path = _journal(tmp_path)
    path.write_bytes(b"\n".join(edit(path.read_bytes().splitlines())) + b"\n")
    with pytest.raises(JournalError, match=message):
        read_audit_journal(path)


def test_the_head_authenticates_the_last_line(tmp_path):
    path = _journal(tmp_path)
    head = read_audit_journal(path).head
    recorded = {"lines": head.lines, "head": head.sha256}
    lines = path.read_bytes().splitlines()
    lines[-1] = lines[-1].replace(b'"slice": 2', b'"slice": 3')  # no later line to notice
    path.write_bytes(b"\n".join(lines) + b"\n")
    hashes = list(read_audit_journal(path).hashes)  # the chain alone passes
    assert "line 4 of the journal does not match" in check_head(hashes, recorded, exact=True)
    assert "lines were dropped" in check_head(hashes[:2], recorded, exact=False)
    longer = [*[line_hash(x) for x in path.read_bytes().splitlines()], "f" * 64]
    longer[3] = head.sha256
    assert check_head(longer, recorded, exact=False) is None  # a resume may extend it
    assert "1 line(s) after" in check_head(longer, recorded, exact=True)


def test_the_chain_end_is_read_from_a_long_last_line(tmp_path):
    path = tmp_path / "j.jsonl"
    data, end = chained_lines([HEADER, {**_record(0), "pad": "x" * 200_000}])
    path.write_bytes(data)
    assert tail_link(path, Link(0, GENESIS)) == end
    assert tail_link(tmp_path / "missing.jsonl", Link(0, "s")) == Link(0, "s")
