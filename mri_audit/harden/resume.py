"""What makes a ``harden`` checkpoint resumable: the model, its weights and its data.

A checkpoint (``<out>.ckpt``) holds the training settings (checked by
:meth:`mri_audit.harden.trainer.Trainer.load_checkpoint`) and, written here, the run's *identity*:
the
``--model`` spec, the sha256 of the model's file and of every module loaded from its folder, the
constructor arguments, input domain and normalisation, the sha256 of the starting weights, and
the training and selection data (every file's sha256). ``harden --resume`` with any of those
changed is refused in one line naming what changed, instead of continuing another model's
training into a mixed result.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mri_audit.errors import UsageError

__all__ = [
    "checkpoint_entries",
    "checkpoint_identity",
    "harden_identity",
    "identity_changes",
    "identified_trainer",
]

_MAX_NAMED = 4


def _data_identity(dataset) -> dict[str, Any]:
    """The dataset's description without its path: files are named and hashed instead."""
    described = dict(dataset.describe())
    described.pop("source", None)
    files = described.pop("files", None)
    if files is not None:
        described["files"] = {f["name"]: f["sha256"] for f in files}
    return described


def harden_identity(c: Mapping[str, Any], opened, train, select) -> dict[str, Any]:
    """The identity of a ``harden`` run, stored in its checkpoint.

    Call it after the model is loaded (its sources are the modules it loaded) and, without
    ``weights``, after the starting weights are final.

    Args:
        c: the run's checked settings (by name; ``model_args`` as the constructor's dict).
        opened: the :class:`~mri_audit.models.opening.OpenedModel`.
        train: the training dataset.
        select: the held-out dataset the kept weights are chosen on.
    """
    from mri_audit.audit.identity import model_sources
    from mri_audit.hashing import sha256_file, state_sha256

    loaded, est = opened.loaded, opened.estimator
    src = loaded.source_path
    files = getattr(loaded, "sources", None) or ([src] if src else [])
    weights = c.get("weights")
    return {
        "model": {
            "spec": c["model"],
            "sources": model_sources(files, Path(src).parent if src else Path.cwd()),
            "model_args": {k: repr(v) for k, v in dict(c["model_args"]).items()},
            "input": est.input_domain,
            "normalize": est.normalize,
        },
        "weights_sha256": (
            sha256_file(weights) if weights else state_sha256(est.model.state_dict())
        ),
        "weights": str(weights) if weights else None,  # named in messages, not compared
        "data": {"train": _data_identity(train), "select": _data_identity(select)},
    }


def _changed(old: Mapping, new: Mapping) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _named(items: list[str]) -> str:
    more = f" and {len(items) - _MAX_NAMED} more" if len(items) > _MAX_NAMED else ""
    return ", ".join(items[:_MAX_NAMED]) + more


def identity_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two identities, as short phrases for a one-line error."""
    diffs: list[str] = []
    om, nm = old.get("model") or {}, new.get("model") or {}
    if om.get("spec") != nm.get("spec"):
        diffs.append(f"--model {om.get('spec')} -> {nm.get('spec')}")
    if om.get("sources") != nm.get("sources"):
        files = _changed(om.get("sources") or {}, nm.get("sources") or {})
        diffs.append(f"the model's source ({_named(files)})")
    if om.get("model_args") != nm.get("model_args"):
        diffs.append("--model-arg")
    for key, flag in (("input", "--input"), ("normalize", "--normalize")):
        if om.get(key) != nm.get(key):
            diffs.append(f"{flag} {om.get(key)} -> {nm.get(key)}")
    if old.get("weights_sha256") != new.get("weights_sha256"):
        ow, nw = old.get("weights"), new.get("weights")
        how = "sha256 differs" if ow and nw else f"--weights {ow or 'none'} -> {nw or 'none'}"
        diffs.append(f"the starting weights ({how})")
    od, nd = old.get("data") or {}, new.get("data") or {}
    for part, label in (("train", "training data"), ("select", "selection data")):
        o, n = od.get(part) or {}, nd.get(part) or {}
        if o == n:
            continue
        files = _changed(o.get("files") or {}, n.get("files") or {})
        detail = f"files {_named(files)}" if files else ", ".join(_changed(o, n))
        diffs.append(f"{label} ({detail})")
    return diffs


def checkpoint_identity(checkpoint: Path, identity: Mapping[str, Any]) -> int:
    """Check that ``checkpoint`` was made by this run's model, weights and data.

    Reads the checkpoint memory-mapped (its tensors are not loaded).

    Returns:
        The number of epochs the checkpoint holds.

    Raises:
        UsageError: the checkpoint is unreadable, not a harden checkpoint, records no identity
            (an older mri-audit) or another one; the line names what changed (exit 2).
    """
    import torch

    from mri_audit.models.archive import check_archive

    start_over = "use another --out (or remove the checkpoint) to start over"
    # A damaged checkpoint would resume from other weights than it saved: refused (exit 5).
    check_archive(Path(checkpoint), "harden checkpoint", str(checkpoint))
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - whatever the damage, one line
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise UsageError(
            f"cannot resume from {checkpoint}: it is not a readable checkpoint ({reason}); "
            f"{start_over}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != "mri-audit-harden-1":
        raise UsageError(
            f"cannot resume from {checkpoint}: it is not an mri-audit harden checkpoint; "
            f"{start_over}"
        )
    stored = state.get("identity")
    if not isinstance(stored, dict):
        diffs = ["it records no model, weights or data: it was made by an older mri-audit"]
    else:
        diffs = identity_changes(stored, identity)
    if diffs:
        raise UsageError(
            f"cannot resume from {checkpoint}: the checkpoint was made with other settings "
            f"({'; '.join(diffs)}); rerun with the same ones, or {start_over}"
        )
    epoch = state.get("epoch")
    return epoch if isinstance(epoch, int) else 0


def checkpoint_entries(checkpoint: Path) -> list[dict[str, Any]]:
    """The validation entries a checkpoint holds, in the order they were made: the start, each
    finished epoch, then the blends (once they are all done).

    Call it after :func:`checkpoint_identity` has accepted the checkpoint; reads it memory-mapped.
    """
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    start = [{"epoch": 0, **state["start"]}] if state.get("start") else []
    return [*start, *(state.get("history") or []), *(state.get("blends") or [])]


def identified_trainer(identity: Mapping[str, Any], on_save=None) -> type:
    """A :class:`~mri_audit.harden.trainer.Trainer` whose checkpoints hold ``identity``.

    Args:
        identity: from :func:`harden_identity`.
        on_save: called with the trainer after each checkpoint is written.
    """
    from mri_audit.harden.trainer import Trainer

    class IdentifiedTrainer(Trainer):
        """Writes the run's identity into every checkpoint."""

        def state(self) -> dict:
            return {**super().state(), "identity": dict(identity)}

        def save_checkpoint(self) -> None:
            super().save_checkpoint()
            if on_save is not None:
                on_save(self)

    return IdentifiedTrainer
