"""Reading weights files safely: ``torch.load(weights_only=True)`` and checkpoints from the field.

A weights file is a bare state dict, or a checkpoint dict holding one under ``state_dict``
(PyTorch Lightning, fastMRI's ``pl_modules``), ``model_state_dict``, ``model`` or ``net``.
Checkpoints carry metadata besides the tensors: a Lightning ``.ckpt`` holds ``hyper_parameters``
(fastMRI's include ``pathlib.PosixPath`` data paths; older ones an ``argparse.Namespace``),
optimizer and scheduler states, ``epoch``, ``global_step``, ``callbacks``, ``loops``...

``torch.load(weights_only=True)`` refuses every pickled class it does not know. When everything
it refused is in :data:`DATA_ONLY_GLOBALS` (a handful of data-only types, each checked below for
what unpickling it runs), the file is read again, still with ``weights_only=True``, with those
types allowed through ``torch.serialization.safe_globals``; only the state dict is kept. Anything
else is refused, without running it, with a one-line recipe to convert the file yourself if you
trust it. The refused names are found by disassembling the pickle
(``torch.serialization.get_unsafe_globals_in_checkpoint``), never by executing it. A pickle that
calls something that runs code (``os.system``, ``subprocess.*``, ``builtins.eval``, ...; see
:func:`mri_audit.models.archive.runs_code`) is refused as what it is, with no recipe to load it.

Before any of this, every member of the file's zip archive is checked against its CRC-32
(:func:`mri_audit.models.archive.check_archive`): a damaged file is refused, naming the member.
"""

from __future__ import annotations

import argparse
import datetime
import io
import logging
import pathlib
import pickle
import pickletools
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from mri_audit.errors import ModelError
from mri_audit.models.archive import (
    archive_pickle_globals,
    check_archive,
    runs_code,
    torch_output,
)

__all__ = ["Checkpoint", "read_checkpoint", "convert_recipe", "DATA_ONLY_GLOBALS", "STATE_KEYS"]

logger = logging.getLogger(__name__)

_MAX_KEYS = 5

STATE_KEYS = ("state_dict", "model_state_dict", "model", "net")
"""Entries of a checkpoint dict that may hold the state dict, in the order they are tried."""

LIGHTNING = "a PyTorch Lightning checkpoint"

# Pickled globals accepted besides torch's own weights-only set, by the name the pickle gives,
# with the object the unpickler gets for it. torch's weights-only unpickler does at most three
# things with an allowed global: call it (REDUCE), create it with ``cls.__new__(cls, *args)``
# (NEWOBJ) and set its state (BUILD: ``__setstate__``, else a ``__dict__`` update). For these:
# - pathlib paths pickle as ``(cls, parts)`` and are called with strings: the constructor only
#   joins and parses them, touching no file system. Every concrete path is read as its *pure*
#   counterpart, so a ``WindowsPath`` read on Linux (which cannot be instantiated there) or a
#   ``PosixPath`` read on Windows loads as well (Python 3.13 names the module ``pathlib._local``).
# - argparse.Namespace: ``object.__new__`` and a ``__dict__`` update (it has no __setstate__);
#   its values are unpickled under the same rules, so they are data again.
# - datetime's date, time, datetime, timedelta and timezone: C constructors called with bytes,
#   numbers or another allowed datetime object.
# Not here: collections.defaultdict (torch cannot fill one under weights_only anyway), numpy
# scalars and arrays, omegaconf containers, enums and any user class, whose __setstate__ or
# constructor can run arbitrary code; those files get the conversion recipe.
_PATHS = {
    "PosixPath": pathlib.PurePosixPath,
    "WindowsPath": pathlib.PureWindowsPath,
    "PurePosixPath": pathlib.PurePosixPath,
    "PureWindowsPath": pathlib.PureWindowsPath,
}
DATA_ONLY_GLOBALS: dict[str, object] = {
    **{
        f"{mod}.{name}": cls
        for name, cls in _PATHS.items()
        for mod in ("pathlib", "pathlib._local")
    },
    "argparse.Namespace": argparse.Namespace,
    **{
        f"datetime.{cls.__name__}": cls
        for cls in (
            datetime.date,
            datetime.time,
            datetime.datetime,
            datetime.timedelta,
            datetime.timezone,
        )
    },
}


class Checkpoint(NamedTuple):
    """The state dict of a weights file, and what held it.

    Attributes:
        state: parameter and buffer names to tensors, keys as stored.
        origin: ``"a state dict"``, ``"a PyTorch Lightning checkpoint"`` or, e.g.,
            ``"a checkpoint dict ('model' entry)"``, for messages.
        hyper_parameters: the checkpoint's ``hyper_parameters`` (Lightning), else empty.
        allowed: the data-only globals (:data:`DATA_ONLY_GLOBALS`) the file needed.
    """

    state: dict[str, torch.Tensor]
    origin: str
    hyper_parameters: Mapping[str, object]
    allowed: tuple[str, ...] = ()


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


def _require_file(path: Path, what: str, hint: str) -> None:
    if not path.is_file():
        problem = "is a directory, not a file" if path.is_dir() else "not found"
        raise ModelError(f"{what} {problem}: {path} ({hint})")


def _zip_leaves(path: Path) -> set[str]:
    """File names (without folders) inside a zip archive; empty if ``path`` is not a zip."""
    try:
        with zipfile.ZipFile(path) as zf:
            return {name.rsplit("/", 1)[-1] for name in zf.namelist()}
    except Exception:  # not a zip, or a damaged one: check_archive says which
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


def _pickle_strings(path: Path) -> set[str]:
    """The short strings in a torch.save file's pickle, read statically (nothing runs)."""
    try:
        with zipfile.ZipFile(path) as zf:
            name = next(n for n in zf.namelist() if n.endswith("data.pkl"))
            data = zf.read(name)
        return {arg for _, arg, _ in pickletools.genops(io.BytesIO(data)) if isinstance(arg, str)}
    except Exception:  # a legacy or damaged file: the recipe falls back to 'state_dict'
        return set()


def convert_recipe(path: Path) -> str:
    """The one-line command that converts a trusted checkpoint into a plain state dict file.

    Args:
        path: the checkpoint, as the user gave it.

    Returns:
        ``python -c "..."`` loading it with ``weights_only=False`` and saving its state dict
        beside it (``x.ckpt`` -> ``x.pt``; ``x.pt`` -> ``x.state_dict.pt``).
    """
    strings = _pickle_strings(path)
    key = next((k for k in STATE_KEYS if k in strings), "state_dict")
    out = path.with_suffix(".state_dict.pt" if path.suffix == ".pt" else ".pt")
    return (
        f'python -c "import torch; ck = torch.load({str(path)!r}, weights_only=False); '
        f'torch.save(ck[{key!r}], {str(out)!r})" and pass --weights {out}'
    )


def _refused_globals(path: Path, exc: BaseException) -> list[str]:
    """The globals ``weights_only`` refuses in ``path``, found without unpickling it."""
    scan = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if scan is not None:
        try:
            return sorted(scan(str(path)))
        except Exception as err:  # a legacy (non-zip) file: use the error message
            logger.debug("cannot scan %s for globals: %s", path, err)
    return re.findall(r"GLOBAL\s+([\w.]+)", str(exc))[:1]


def _runs_code_error(shown: str, named: Sequence[str]) -> ModelError | None:
    """The refusal of a file whose pickle calls something that runs code (no recipe to load
    it), or None when none of ``named`` does."""
    code = sorted({name for name in named if runs_code(name)})
    if not code:
        return None
    return ModelError(
        f"weights file {shown} would execute code when loaded: its pickle calls {_names(code)}, "
        "which runs commands or code on this machine; it was refused without running anything, "
        "and it must not be loaded, not even to convert it: get the weights from a source you "
        "trust"
    )


def _load(path: Path, shown: str, allowed: Sequence[str] = ()) -> object:
    """``torch.load(weights_only=True)``, what torch warns kept for ``-v`` (one line on error)."""
    with torch_output(shown):
        if not allowed:
            return torch.load(path, map_location="cpu", weights_only=True)
        safe = [(DATA_ONLY_GLOBALS[name], name) for name in allowed]
        with torch.serialization.safe_globals(safe):
            return torch.load(path, map_location="cpu", weights_only=True)


def _read(path: Path, shown: str) -> tuple[object, tuple[str, ...]]:
    """``torch.load(weights_only=True)``, allowing the data-only globals the file needs."""
    resave = "save a state dict with torch.save(model.state_dict(), path)"
    allowed: tuple[str, ...] = ()
    scanned: list[str] | None = None  # the globals data.pkl names, read once, statically
    # A legacy (non-zip) file cannot be scanned, and a scan misses globals built while unpickling:
    # each retry allows what the last error named.
    for _ in range(len(DATA_ONLY_GLOBALS) + 1):
        try:
            return _load(path, shown, allowed), allowed
        except pickle.UnpicklingError as exc:
            text = str(exc)
            if scanned is None:
                scanned = archive_pickle_globals(path) or []
            code = _runs_code_error(shown, [*scanned, *re.findall(r"GLOBAL\s+([\w.]+)", text)])
            if code is not None:
                raise code from None
            if not (re.search(r"GLOBAL\s+[\w.]+|Unsupported (global|class)", text) or allowed):
                raise ModelError(
                    f"weights file {shown} is corrupt or not a PyTorch file (cannot unpickle it); "
                    f"{resave}"
                ) from None
            refused = [g for g in _refused_globals(path, exc) if g not in allowed]
            unsafe = [g for g in refused if g not in DATA_ONLY_GLOBALS]
            if unsafe or not refused or not hasattr(torch.serialization, "safe_globals"):
                what = _names(unsafe or refused or [_one_line(text.split("error:")[-1], 120)])
                raise ModelError(
                    f"weights file {shown} holds pickled Python objects ({what}), which are "
                    f"refused for safety (weights_only=True); if you trust the file, convert it "
                    f"once with: {convert_recipe(path)}"
                ) from None
            allowed = (*allowed, *refused)
            logger.debug("reading %s again, allowing data-only %s", shown, _names(refused))
        except Exception as exc:
            raise ModelError(
                f"cannot read weights file {shown} ({_exc_text(exc, True)}): "
                f"it is truncated, corrupt or not a torch.save file; {resave}"
            ) from None
    raise ModelError(
        f"weights file {shown} cannot be read with weights_only=True; if you trust the file, "
        f"convert it once with: {convert_recipe(path)}"
    )


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read the state dict of a weights file with ``torch.load(weights_only=True)``, on the CPU.

    Args:
        path: a bare state dict, or a checkpoint dict holding one under one of
            :data:`STATE_KEYS` (a PyTorch Lightning ``.ckpt`` included).

    Returns:
        The state dict (keys as stored: prefixes are fitted to the model by
        :func:`mri_audit.models.weights.apply_weights`) and what held it.

    Raises:
        ModelError: the file is missing, unreadable, a model rather than weights, holds pickled
            code (with the recipe to convert it), or holds no state dict.
    """
    path, shown = Path(path), str(path)
    _require_file(path, "weights file", "check --weights")
    archive = check_archive(path, "weights file", shown)
    leaves = archive.leaves if archive is not None else set()
    if "constants.pkl" in leaves:
        raise ModelError(
            f"weights file {shown} is a TorchScript model, not a state dict; "
            f"pass it as --model {shown} (or save the state dict of the model)"
        )
    if "archive_format" in leaves and "data.pkl" not in leaves:
        raise ModelError(
            f"weights file {shown} is a torch.export program (.pt2), not a state dict; "
            f"pass it as --model {shown}"
        )
    obj, allowed = _read(path, shown)
    lightning = isinstance(obj, Mapping) and (
        "pytorch-lightning_version" in obj or {"state_dict", "hyper_parameters"} <= set(obj)
    )
    if _is_state_dict(obj):
        state, origin = obj, "a state dict"
    else:
        key = next(
            (k for k in STATE_KEYS if isinstance(obj, Mapping) and _is_state_dict(obj.get(k))),
            None,
        )
        if key is None:
            entries = " or ".join(repr(k) for k in STATE_KEYS)
            raise ModelError(
                f"weights file {shown} is not a state dict (it holds {_describe(obj)}, and no "
                f"{entries} entry of tensors); save a state dict with "
                "torch.save(model.state_dict(), path)"
            )
        state = obj[key]
        origin = LIGHTNING if lightning else f"a checkpoint dict ({key!r} entry)"
    hparams = obj.get("hyper_parameters") if isinstance(obj, Mapping) else None
    if allowed:
        logger.info("weights %s: read the state dict of %s (its metadata holds %s, read as data)",
                    shown, origin, _names(list(allowed)))  # fmt: skip
    logger.debug("read %d tensors from %s (%s)", len(state), path, origin)
    return Checkpoint(
        dict(state), origin, dict(hparams) if isinstance(hparams, Mapping) else {}, allowed
    )
