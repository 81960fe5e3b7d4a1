"""Reading weights: state dicts with ``torch.load(weights_only=True)``, strict loading with
one-line messages, and file hashes for the results file."""

from __future__ import annotations

import hashlib
import logging
import pickle
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from mri_audit.errors import ModelError

__all__ = ["load_state_dict", "apply_weights", "sha256_file"]

logger = logging.getLogger(__name__)

_MAX_KEYS = 5


def _one_line(text: object, limit: int = 300) -> str:
    """Collapse whitespace and cut ``text`` to ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _names(names: Sequence[str], limit: int = _MAX_KEYS) -> str:
    """Comma-separated ``names``, at most ``limit`` of them, then ``(+N more)``."""
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _exc_text(exc: BaseException, first_sentence: bool = False) -> str:
    """``"Type: message"`` on one line (just the type when the message is empty)."""
    msg = _one_line(str(exc).split(". ")[0] if first_sentence else exc)
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def sha256_file(path: str | Path) -> str:
    """Return the hex SHA-256 of a file's bytes (read in chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _require_file(path: Path, what: str, hint: str) -> None:
    if not path.is_file():
        problem = "is a directory, not a file" if path.is_dir() else "not found"
        raise ModelError(f"{what} {problem}: {path} ({hint})")


def _zip_leaves(path: Path) -> set[str]:
    """File names (without folders) inside a zip archive; empty if ``path`` is not a zip."""
    try:
        with zipfile.ZipFile(path) as zf:
            return {name.rsplit("/", 1)[-1] for name in zf.namelist()}
    except (OSError, zipfile.BadZipFile):
        return set()


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and all(
        isinstance(k, str) and (isinstance(v, torch.Tensor) or k.endswith("_extra_state"))
        for k, v in obj.items()
    )


def _describe(obj: object) -> str:
    if isinstance(obj, Mapping):
        return f"a dict with keys {_names([str(k) for k in obj])}" if obj else "an empty dict"
    return f"a {type(obj).__name__}"


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict with ``torch.load(weights_only=True)`` onto the CPU.

    Accepts a bare state dict or a checkpoint dict holding one under ``state_dict`` or ``model``;
    a ``module.`` prefix (DistributedDataParallel) on every key is removed.

    Args:
        path: the weights file.

    Returns:
        The state dict.

    Raises:
        ModelError: the file is missing, unreadable, holds pickled code, or holds no state dict.
    """
    path, shown = Path(path), str(path)
    _require_file(path, "weights file", "check --weights")
    resave = "save a state dict with torch.save(model.state_dict(), path)"
    if "constants.pkl" in _zip_leaves(path):
        raise ModelError(
            f"weights file {shown} is a TorchScript model, not a state dict; "
            f"pass it as --model {shown} (or save the state dict of the model)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = re.search(r"GLOBAL\s+([\w.]+)", text)
        if found or re.search(r"Unsupported (global|class)", text):
            what = f" ({found.group(1)})" if found else ""
            raise ModelError(
                f"weights file {shown} holds pickled Python objects{what}, which are refused for "
                f"safety (weights_only=True); {resave}"
            ) from None
        raise ModelError(
            f"weights file {shown} is corrupt or not a PyTorch file (cannot unpickle it); {resave}"
        ) from None
    except Exception as exc:
        raise ModelError(
            f"cannot read weights file {shown} ({_exc_text(exc, True)}): "
            f"it is truncated, corrupt or not a torch.save file; {resave}"
        ) from None
    state = obj
    if not _is_state_dict(state):
        for key in ("state_dict", "model"):
            if isinstance(obj, Mapping) and _is_state_dict(obj.get(key)):
                state = obj[key]
                break
        else:
            raise ModelError(
                f"weights file {shown} is not a state dict (it holds {_describe(obj)}, and no "
                f"'state_dict' or 'model' entry of tensors); {resave}"
            )
    state = dict(state)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    logger.debug("read %d tensors from %s", len(state), path)
    return state


def apply_weights(module: nn.Module, path: str | Path, label: str) -> None:
    """Load the weights file ``path`` into ``module`` with ``strict=True``.

    Args:
        module: the model.
        path: the weights file (see :func:`load_state_dict`).
        label: the model's display name, for messages.

    Raises:
        ModelError: unreadable weights, or keys/shapes that do not fit the model.
    """
    state = load_state_dict(path)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} (checkpoint {list(v.shape)} vs model {list(own[k].shape)})"
        for k, v in state.items()
        if k in own
        and isinstance(v, torch.Tensor)
        and isinstance(own[k], torch.Tensor)
        and v.shape != own[k].shape
    ]
    problems = [
        f"{kind}: {_names(keys)}"
        for kind, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatch", shapes),
        )
        if keys
    ]
    shown = Path(path).name
    if problems:
        raise ModelError(f"weights {shown} do not fit {label}: {'; '.join(problems)}")
    try:
        module.load_state_dict(state, strict=True)
    except Exception as exc:
        raise ModelError(f"weights {shown} do not fit {label}: {_exc_text(exc, True)}") from None
    logger.debug("loaded weights %s into %s", path, label)
