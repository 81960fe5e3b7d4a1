"""Loading weights into a model: strict loading with one-line messages, key prefixes from the
field fitted, and file hashes for the results file.

Checkpoints from the field store the model's keys under a prefix: ``module.`` (DataParallel),
``unet.`` / ``varnet.`` (fastMRI's Lightning modules), ``model.`` or ``net.`` (other Lightning or
training-script wrappers), sometimes several (``module.model.``). When the keys do not fit the
model as stored, :func:`apply_weights` looks for the one prefix under which they fit *exactly*
(the same key set and shapes as the model), strips it and says so in a warning. Keys outside
that prefix (a Lightning module's loss buffers, such as fastMRI ``VarNetModule``'s ``loss.w``)
are left out and named. Reading the file itself is :mod:`mri_audit.models.checkpoints`.
"""

from __future__ import annotations

import inspect
import logging
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from mri_audit.errors import ModelError
from mri_audit.models.checkpoints import LIGHTNING, Checkpoint, _exc_text, _names, read_checkpoint

__all__ = ["load_state_dict", "apply_weights", "fit_state_dict"]

logger = logging.getLogger(__name__)

_MAX_HPARAMS = 6


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict with ``torch.load(weights_only=True)`` onto the CPU.

    Accepts a bare state dict or a checkpoint dict holding one (see
    :func:`mri_audit.models.checkpoints.read_checkpoint`); keys are returned as stored (a prefix is
    fitted to a model by :func:`apply_weights`).

    Args:
        path: the weights file.

    Returns:
        The state dict.

    Raises:
        ModelError: the file is missing, unreadable, holds pickled code, or holds no state dict.
    """
    return read_checkpoint(path).state


def _prefixes(keys: list[str]) -> Counter[str]:
    """How many keys lie under each dotted prefix (``"a."``, ``"a.b."``, ...)."""
    counts: Counter[str] = Counter()
    for key in keys:
        parts = key.split(".")[:-1]
        for i in range(1, len(parts) + 1):
            counts[".".join(parts[:i]) + "."] += 1
    return counts


def _under(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _problems(state: Mapping[str, object], own: Mapping[str, object]) -> list[str]:
    """Missing keys, unexpected keys and shape mismatches, as message parts (empty: fits)."""
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
    return [
        f"{kind}: {_names(keys)}"
        for kind, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatch", shapes),
        )
        if keys
    ]


def _why(prefix: str, origin: str) -> str:
    """Where a key prefix comes from, as ``" (a PyTorch Lightning checkpoint)"`` or ``""``."""
    if origin == LIGHTNING:
        return f" ({LIGHTNING})"
    return " (a DataParallel checkpoint)" if prefix.startswith("module.") else ""


def _hparams_hint(module: nn.Module, hparams: Mapping[str, object]) -> str:
    """The checkpoint's hyper-parameters that name constructor arguments of the model."""
    try:
        params = inspect.signature(type(module)).parameters
    except (TypeError, ValueError):
        return ""
    simple = (bool, int, float, str)
    given = [f"{k}={v!r}" for k, v in hparams.items() if k in params and isinstance(v, simple)]
    if not given:
        return ""
    return f"; its hyper_parameters give {_names(given, _MAX_HPARAMS)} (pass them with --model-arg)"


def fit_state_dict(
    checkpoint: Checkpoint, module: nn.Module, shown: str, label: str
) -> dict[str, torch.Tensor]:
    """Fit a checkpoint's keys to a model, stripping one key prefix when that makes them fit.

    Args:
        checkpoint: what :func:`mri_audit.models.checkpoints.read_checkpoint` read.
        module: the model.
        shown: the weights file's name, for messages.
        label: the model's display name, for messages.

    Returns:
        A state dict with exactly the model's keys and shapes.

    Raises:
        ModelError: no prefix makes the keys fit (naming what is missing, unexpected or of
            another shape, under the prefix that fits best), or two prefixes both fit.
    """
    state, own = checkpoint.state, module.state_dict()
    if not _problems(state, own):
        return state
    counts = _prefixes(list(state))
    fitting = [
        p for p, n in counts.items() if n == len(own) and not _problems(_under(state, p), own)
    ]
    if len(fitting) > 1:
        choices = " and ".join(repr(p) for p in sorted(fitting))
        raise ModelError(
            f"weights {shown} hold more than one model that fits {label} (the keys under "
            f"{choices}); save the one to audit as a plain state dict, without its key prefix, "
            "and pass that file"
        )
    if fitting:
        (prefix,) = fitting
        fitted = _under(state, prefix)
        left = [k for k in state if not k.startswith(prefix)]
        rest = f"; left out {len(left)} other key(s): {_names(left)}" if left else ""
        logger.warning("weights %s: stripped the key prefix %r%s to fit %s%s",
                       shown, prefix, _why(prefix, checkpoint.origin), label, rest)  # fmt: skip
        return fitted
    # Nothing fits: report against the prefix under which most keys match the model's.
    overlap = {p: len(set(_under(state, p)) & set(own)) for p in counts}
    best = max(overlap, key=lambda p: (overlap[p], -len(p)), default="")
    plain = len(set(state) & set(own))
    where = ""
    if best and overlap[best] > plain:
        problems = _problems(_under(state, best), own)
        why = _why(best, checkpoint.origin).strip(" ()")
        where = f" (with the key prefix {best!r} of {why} removed)" if why else ""
        where = where or f" (with the key prefix {best!r} removed)"
    else:
        problems = _problems(state, own)
        tops = {k.split(".")[0] for k in state}
        if len(tops) == 1 and "." in next(iter(state), "") and not plain:
            where = (
                f" (every checkpoint key starts with {next(iter(tops)) + '.'!r}, and no prefix "
                "makes them fit: were these weights trained for another model class?)"
            )
    hint = _hparams_hint(module, checkpoint.hyper_parameters) if any(
        p.startswith("shape mismatch") for p in problems
    ) else ""  # fmt: skip
    raise ModelError(f"weights {shown} do not fit {label}{where}: {'; '.join(problems)}{hint}")


def apply_weights(module: nn.Module, path: str | Path, label: str) -> None:
    """Load the weights file ``path`` into ``module`` with ``strict=True``.

    The keys are fitted to the model first (:func:`fit_state_dict`): a prefix under which they
    fit exactly is stripped, with a warning.

    Args:
        module: the model.
        path: the weights file (see :func:`mri_audit.models.checkpoints.read_checkpoint`).
        label: the model's display name, for messages.

    Raises:
        ModelError: unreadable weights, or keys/shapes that do not fit the model.
    """
    shown = Path(path).name
    state = fit_state_dict(read_checkpoint(path), module, shown, label)
    try:
        module.load_state_dict(state, strict=True)
    except Exception as exc:
        raise ModelError(f"weights {shown} do not fit {label}: {_exc_text(exc, True)}") from None
    logger.debug("loaded weights %s into %s", path, label)
