"""Writing files safely: atomic replacement, JSON without NaN, the results schema version.

Every final file of mri-audit (``results.json``, ``records.csv``, the report, checkpoints' cards)
is written to a temporary file in the same folder, synced, then renamed over the old one, so a
crash or a full disk never leaves a half-written file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

__all__ = ["SCHEMA_VERSION", "to_jsonable", "atomic_write", "write_json"]

SCHEMA_VERSION = 2
"""Version of ``results.json`` (2: threat model version 2, DESIGN §4)."""


def to_jsonable(value):
    """NaN and infinities become None (JSON has no NaN); everything else is left as is."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over ``path``.

    Raises:
        OutputError: the folder cannot be written (disk full, read-only, ...); nothing is left
            behind, and the old ``path`` (if any) is untouched.
    """
    from mri_audit.errors import write_failure

    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise write_failure(path, err, f"{path.name} was not changed") from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: dict) -> None:
    """``obj`` as indented JSON (NaN and infinities as null), written atomically."""
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=False, allow_nan=False)
    atomic_write(path, (text + "\n").encode("utf-8"))
