"""Edit a journal as a forger would: re-link its hash chain after the edit, so the checks behind
the chain (another audit's line, a repeated record, ...) are what a test meets."""

from __future__ import annotations

import json

from mri_audit.audit.chain import GENESIS, dumps_linked, line_hash

__all__ = ["rechain", "line_hash"]


def rechain(lines: list[str], anchor: str = GENESIS) -> str:
    """``lines`` (JSON lines, each with its newline) with their ``seq``/``prev`` recomputed in
    order from ``anchor`` (a shard's: the hash of its journal's header line); a line that is not
    a JSON object is kept as it is (and breaks the chain there)."""
    out, prev, seq = [], anchor, 0
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            out.append(line)
            continue
        if not isinstance(obj, dict):
            out.append(line)
            continue
        seq += 1
        text = dumps_linked(obj, seq, prev)
        prev = line_hash(text)
        out.append(text.decode("utf-8"))
    return "".join(out)
