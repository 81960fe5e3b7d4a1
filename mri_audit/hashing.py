"""File hashes: the sha256 of a file's bytes, and a cache of them in the user's cache folder.

Data files and model sources are hashed for an audit's identity
(:mod:`mri_audit.audit.identity`); the cache is keyed by (resolved path, size, modification time),
so a large dataset is read once, not on every run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["cache_dir", "sha256_file", "state_sha256", "cached_sha256s", "cached_sha256"]

logger = logging.getLogger(__name__)


def sha256_file(path: str | os.PathLike) -> str:
    """Return the hex SHA-256 of a file's bytes (read in chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/mri-audit`` (or ``~/.cache/mri-audit``); created when missing."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = Path(base) / "mri-audit"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        path = Path(tempfile.gettempdir()) / f"mri-audit-{os.getuid()}"
        path.mkdir(parents=True, exist_ok=True)
    return path


def _cache_path() -> Path:
    return cache_dir() / "sha256.json"


def _read_cache() -> dict[str, str]:
    try:
        cache = json.loads(_cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def cached_sha256s(paths: Iterable[str | os.PathLike]) -> list[str]:
    """The sha256 of each file's bytes, cached by (resolved path, size, mtime in ns).

    The cache is one JSON file in :func:`cache_dir`, read once and written once per call; a
    cache that cannot be read or written is ignored (the hashes are then computed).
    """
    cache = _read_cache()
    out, changed = [], False
    for p in paths:
        path = Path(p).resolve()
        st = path.stat()
        key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
        hit = cache.get(key)
        if not (isinstance(hit, str) and len(hit) == 64):
            hit = sha256_file(path)
            for old in [k for k in cache if k.startswith(f"{path}|")]:
                del cache[old]
            cache[key], changed = hit, True
        out.append(hit)
    if changed:
        store = _cache_path()
        try:
            tmp = store.with_name(f".sha256.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache), encoding="utf-8")
            os.replace(tmp, store)
        except OSError as err:
            logger.debug("cannot write the hash cache %s: %s", store, err)
    return out


def cached_sha256(path: str | os.PathLike) -> str:
    """The sha256 of one file's bytes (see :func:`cached_sha256s`)."""
    return cached_sha256s([path])[0]


def state_sha256(state: Mapping[str, Any]) -> str:
    """A sha256 over a state dict's names, dtypes, shapes and values (bitwise)."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state):
        value = state[name]
        digest.update(name.encode() + b"\0")
        if isinstance(value, torch.Tensor):
            t = value.detach().to("cpu").contiguous().reshape(-1)
            digest.update(f"{t.dtype}{tuple(value.shape)}".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes())
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()
