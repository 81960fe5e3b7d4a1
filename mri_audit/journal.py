"""The append-only record journal (``records.jsonl``) an audit writes as it goes."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["Journal", "record_key", "to_jsonable"]

logger = logging.getLogger(__name__)


def record_key(rec: dict) -> tuple:
    """The identity of a record: (model, attack, volume, slice)."""
    return (rec["model"], rec["attack"], rec["volume"], int(rec["slice"]))


def to_jsonable(value):
    """NaN and infinities become None (JSON has no NaN); everything else is left as is."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


class Journal:
    """Append-only JSON-lines file; each append is flushed and fsync'ed.

    Args:
        path: the ``records.jsonl`` file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def read(self) -> list[dict]:
        """All complete records; a torn last line (an interrupted write) is dropped."""
        if not self.path.exists():
            return []
        records = []
        with self.path.open("rb") as fh:
            lines = fh.read().split(b"\n")
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if i == len(lines) - 1:
                    logger.warning("dropping a torn last line of %s", self.path)
                    self._truncate_torn(len(line))
                    continue
                raise
        return records

    def _truncate_torn(self, nbytes: int) -> None:
        size = self.path.stat().st_size
        with self.path.open("r+b") as fh:
            fh.truncate(size - nbytes)

    def append(self, records: Iterable[dict]) -> None:
        """Append records durably."""
        lines = "".join(
            json.dumps(to_jsonable(r), sort_keys=True, allow_nan=False) + "\n" for r in records
        )
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(lines)
            fh.flush()
            os.fsync(fh.fileno())
