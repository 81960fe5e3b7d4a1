"""``records.csv``: one row per record, spreadsheet-safe, and its reading back.

Transfer replays become ``transfer_*:<model>`` columns and each criterion's pick
``<criterion>:<field>`` columns, so the CSV holds everything the journal does except the
feature's pixels (kept as JSON in ``feature``).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from mri_audit.files import atomic_write

__all__ = [
    "records_frame",
    "spreadsheet_safe",
    "spreadsheet_unsafe",
    "records_csv_text",
    "read_records_csv",
    "write_csv",
]


def records_frame(records: Sequence[dict]) -> pd.DataFrame:
    """One row per (slice, model, attack); transfer replays become ``transfer_*:<model>``."""
    rows = []
    for r in records:
        row = {k: v for k, v in r.items() if k not in ("transfer", "feature", "criteria", "budget")}
        row["feature"] = json.dumps(r.get("feature")) if r.get("feature") else ""
        for target, replay in (r.get("transfer") or {}).items():
            row[f"transfer_hit:{target}"] = None if replay is None else bool(replay["hit"])
            for q in ("score", "r", "r0", "e"):
                row[f"transfer_{q}:{target}"] = None if replay is None else replay.get(q)
        for name, pick in (r.get("criteria") or {}).items():
            for k, v in pick.items():
                row[f"{name}:{k}"] = v
        rows.append(row)
    frame = pd.DataFrame(rows)
    first = [
        "model",
        "attack",
        "kind",
        "volume",
        "slice",
        "criterion",
        "hit",
        "score",
        "r",
        "r0",
        "e",
        "rho",
        "loss",
        "ip",
        "region_nmse",
        "control",
        "control_hit",
        "found",
        "evaluated",
        "accepted",
        "row",
        "col",
    ]
    ordered = [c for c in first if c in frame.columns]
    return frame[ordered + [c for c in frame.columns if c not in ordered]]


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Text cells a spreadsheet would run as a formula (starting with ``= + - @``, tab or CR)
    get a leading ``'``; numbers, negative ones included, stay plain numbers."""
    frame = frame.copy()
    for col in _text_columns(frame):
        frame[col] = frame[col].map(
            lambda v: "'" + v if isinstance(v, str) and v.startswith(_FORMULA_START) else v
        )
    return frame


def _text_columns(frame: pd.DataFrame) -> list:
    types = pd.api.types
    return [
        c
        for c in frame.columns
        if not (types.is_numeric_dtype(frame[c]) or types.is_bool_dtype(frame[c]))
    ]


def spreadsheet_unsafe(frame: pd.DataFrame) -> pd.DataFrame:
    """The inverse of :func:`spreadsheet_safe` (for reading ``records.csv`` back)."""
    frame = frame.copy()
    for col in _text_columns(frame):
        frame[col] = frame[col].map(
            lambda v: (
                v[1:]
                if isinstance(v, str) and v.startswith("'") and v[1:].startswith(_FORMULA_START)
                else v
            )
        )
    return frame


def records_csv_text(records: Sequence[dict]) -> str:
    """The text of ``records.csv``: spreadsheet-safe (:func:`spreadsheet_safe`), CRLF rows (RFC
    4180: a CR or LF inside a text cell is then quoted, never a row break)."""
    frame = spreadsheet_safe(records_frame(records))
    return frame.to_csv(index=False, lineterminator="\r\n")


def read_records_csv(source: str | Path | io.StringIO) -> pd.DataFrame:
    """``records.csv`` (a path, or its text in a :class:`io.StringIO`) read back as a frame: the
    report and :attr:`mri_audit.audit.result.AuditResult.records` read it the same way."""
    frame = pd.read_csv(source, dtype={"model": str, "attack": str, "volume": str})
    return spreadsheet_unsafe(frame)


def write_csv(path: str | Path, records: Sequence[dict]) -> None:
    """``records.csv``: one row per record (:func:`records_csv_text`), written atomically."""
    atomic_write(path, records_csv_text(records).encode("utf-8"))
