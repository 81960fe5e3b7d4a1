"""The identity of an audit: one fingerprint over everything that makes its numbers.

An audit's numbers are a function of its configuration, mri-audit's code, the model's source
(the named file and every module loaded from its folder), the weights and the data files'
contents. :func:`audit_identity` collects those as plain data and :func:`fingerprint` hashes
them; the journal's header holds both and every record carries the fingerprint, so a resume of a
different audit, or a record from another audit, is refused instead of mixed in.

File hashes are cached by (path, size, modification time) in the user's cache directory, so a
large dataset is hashed once, not on every run.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mri_audit import __version__
from mri_audit.hashing import sha256_file

__all__ = [
    "AUDIT_ID_LENGTH",
    "audit_identity",
    "code_digest",
    "describe_changes",
    "fingerprint",
    "model_sources",
    "stored_identity",
]

logger = logging.getLogger(__name__)

AUDIT_ID_LENGTH = 16
_PACKAGE_DIR = Path(__file__).resolve().parent.parent
MODEL_KEYS = (
    "name",
    "target",
    "kind",
    "sources",
    "weights_sha256",
    "model_args",
    "domain",
    "normalize",
    "packages",
)
"""What of a model's record is part of the audit's identity (not the spec as typed: a path
spelled another way is the same model; ``target`` is its file name and class, ``sources`` the
content of its code)."""
_NOT_IDENTITY = {"config": ("batch_size",), "data": ("source",)}
"""Settings that do not change the numbers: the batch size changes speed only (records agree to
float rounding), and the data's folder as typed (each file's name and sha256 are kept)."""


def model_sources(files: Iterable[str | os.PathLike], root: str | os.PathLike) -> dict[str, str]:
    """``{path relative to root: sha256}`` of a model's source files.

    Args:
        files: the model file and every module file loaded from its folder.
        root: the model file's folder (names are relative to it).
    """
    root = Path(root).resolve()
    out = {}
    for f in sorted({Path(f).resolve() for f in files}):
        if f.is_file():
            try:
                name = f.relative_to(root).as_posix()
            except ValueError:
                name = str(f)
            out[name] = sha256_file(f)
    return out


def code_digest(attack_classes: Iterable[type] = ()) -> str:
    """A sha256 over mri-audit's own modules and the source files of the attacks used."""
    files = sorted(_PACKAGE_DIR.rglob("*.py"))
    for cls in attack_classes:
        for base in cls.__mro__:  # an attack's own file and those of the classes it extends
            try:
                files.append(Path(inspect.getsourcefile(base) or "").resolve())
            except TypeError:
                continue
    digest = hashlib.sha256()
    parent = _PACKAGE_DIR.parent
    for f in dict.fromkeys(files):
        if f.is_file():
            name = f.relative_to(parent) if f.is_relative_to(parent) else Path(f.name)
            digest.update(name.as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()


def audit_identity(
    *,
    config: Mapping[str, Any],
    models: list[Mapping[str, Any]],
    data: Mapping[str, Any],
    attack_classes: Iterable[type] = (),
) -> dict[str, Any]:
    """The plain-data identity of an audit (what :func:`fingerprint` hashes).

    Args:
        config: the audit's settings (``AuditConfig.to_dict()``).
        models: each model's record (spec, sources, weights' sha256, constructor arguments,
            input domain, normalisation).
        data: the dataset's description, with every file's sha256.
        attack_classes: the attacks run (their source files are part of the code digest).
    """
    import torch

    return {
        "config": _without(config, "config"),
        "code": {
            "mri_audit": __version__,
            "sha256": code_digest(attack_classes),
            "torch": torch.__version__,
        },
        "models": [{k: m.get(k) for k in MODEL_KEYS} for m in models],
        "data": _without(data, "data"),
    }


def stored_identity(header: Mapping[str, Any]) -> dict[str, Any]:
    """The identity held by a journal's header (same layout as :func:`audit_identity`)."""
    return {
        "config": _without(header.get("config") or {}, "config"),
        "code": header.get("code") or {},
        "models": [{k: m.get(k) for k in MODEL_KEYS} for m in header.get("models") or []],
        "data": _without(header.get("data") or {}, "data"),
    }


def _without(part: Mapping[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in part.items() if k not in _NOT_IDENTITY[name]}


def fingerprint(identity: Mapping[str, Any]) -> str:
    """The sha256 of an identity's canonical JSON (first :data:`AUDIT_ID_LENGTH` hex digits)."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:AUDIT_ID_LENGTH]


def _changed_keys(old: Mapping, new: Mapping) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def describe_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two identities, as short phrases for a one-line error."""
    diffs: list[str] = []
    if old.get("config") != new.get("config"):
        keys = _changed_keys(old.get("config") or {}, new.get("config") or {})
        diffs.append("configuration (" + ", ".join(keys) + ")")
    oc, nc = old.get("code") or {}, new.get("code") or {}
    if oc.get("mri_audit") != nc.get("mri_audit"):
        diffs.append(f"mri-audit version ({oc.get('mri_audit')} -> {nc.get('mri_audit')})")
    elif oc.get("sha256") != nc.get("sha256"):
        diffs.append("mri-audit's code or an attack's code")
    if oc.get("torch") != nc.get("torch"):
        diffs.append(f"torch version ({oc.get('torch')} -> {nc.get('torch')})")
    old_models = {m.get("name"): m for m in old.get("models") or []}
    for m in new.get("models") or []:
        o = old_models.pop(m.get("name"), None)
        if o is None:
            diffs.append(f"model {m.get('name')} (not in the earlier audit)")
            continue
        if o.get("target") != m.get("target"):
            diffs.append(f"model {m.get('name')} ({o.get('target')} -> {m.get('target')})")
        os_, ns = o.get("sources") or {}, m.get("sources") or {}
        if os_ != ns:
            files = _changed_keys(os_, ns)
            diffs.append(f"source of {m.get('name')} ({', '.join(files[:4])})")
        if o.get("weights_sha256") != m.get("weights_sha256"):
            diffs.append(f"weights of {m.get('name')} (sha256 differs)")
        if o.get("model_args") != m.get("model_args"):
            diffs.append(f"constructor arguments of {m.get('name')} (--model-arg)")
        if o.get("packages") != m.get("packages"):
            keys = _changed_keys(o.get("packages") or {}, m.get("packages") or {})
            diffs.append(f"packages of {m.get('name')} ({', '.join(keys[:4])})")
        for k in ("kind", "domain", "normalize"):
            if o.get(k) != m.get(k):
                diffs.append(f"{k} of {m.get('name')} ({o.get(k)} -> {m.get(k)})")
    diffs += [f"model {name} (dropped)" for name in old_models]
    od, nd = old.get("data") or {}, new.get("data") or {}
    if od != nd:
        of = {f.get("name"): f.get("sha256") for f in od.get("files") or []}
        nf = {f.get("name"): f.get("sha256") for f in nd.get("files") or []}
        files = _changed_keys(of, nf)
        detail = f"files {', '.join(files[:4])}" if files else ", ".join(_changed_keys(od, nd))
        diffs.append(f"data ({detail})")
    return diffs
