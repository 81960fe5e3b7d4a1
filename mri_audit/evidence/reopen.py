"""The models and data an audit names, opened again for ``verify --replay`` and checked
against the hashes ``results.json`` records."""

from __future__ import annotations

import ast
from pathlib import Path

from mri_audit.errors import UsageError

__all__ = ["entries_of", "recorded_source", "same_data", "same_model"]


def recorded_source(data: dict):
    if data.get("kind") == "synthetic":
        return None
    source = data.get("source")
    if not source:
        raise UsageError("the audit records no data source; give it again with --data")
    return source


def same_data(recorded: dict, found: dict, given) -> None:
    """Refuse data that is not the audit's (files and their hashes, or the phantoms' seed)."""
    keys = ("kind", "split", "seed", "volumes", "slices", "kspace_shapes", "noise", "files")
    for key in keys:
        if recorded.get(key) != found.get(key):
            what = (
                f"--data {given}"
                if given is not None
                else f"the recorded data {found.get('source')}"
            )
            raise UsageError(
                f"{what} is not the audit's data (its {key} differ from what results.json "
                "records); give the audit's data with --data"
            )


def _recorded_spec(m: dict):
    """The model's spec as recorded; a file spec given relative to the audit's folder of work
    is found again through the absolute source path results.json records."""
    spec = m.get("spec")
    if not isinstance(spec, str) or ":" not in spec or spec.endswith((".pt", ".pt2")):
        return spec
    file, _, name = spec.rpartition(":")
    if file.endswith(".py") and not Path(file).is_file() and m.get("source"):
        if Path(m["source"]).is_file():
            return f"{m['source']}:{name}"
    return spec


def entries_of(models: list[dict], overrides: dict) -> list:
    """The audit's models as entries to open (``--model``/``--weights`` given again win)."""
    from mri_audit.models.entries import ModelEntry

    specs, weights = overrides.get("models") or [], overrides.get("weights") or []
    if len(specs) > len(models) or len(weights) > len(models):
        raise UsageError(
            f"the audit has {len(models)} model(s); --model and --weights give them again in "
            "that order"
        )
    out = []
    for i, m in enumerate(models):
        spec = specs[i] if i < len(specs) else _recorded_spec(m)
        if m.get("kind") == "object" and i >= len(specs):
            raise UsageError(
                f"model {m['name']!r} was a Python object given to mri_audit.audit(); give "
                "its spec with --model to replay it"
            )
        try:
            args = {k: ast.literal_eval(v) for k, v in (m.get("model_args") or {}).items()}
        except (ValueError, SyntaxError):
            raise UsageError(
                f"model {m['name']!r}'s constructor arguments cannot be read back from results.json"
            ) from None
        w = weights[i] if i < len(weights) else m.get("weights")
        if w and i >= len(weights) and not Path(w).is_file():
            raise UsageError(
                f"model {m['name']!r}'s weights {w} (as recorded) are not found from here; give "
                "them again with --weights"
            )
        out.append(ModelEntry(spec, m["name"], w, args, m.get("domain"), m.get("normalize")))
    return out


def same_model(opened, entry, recorded: dict) -> None:
    from mri_audit.audit.run_setup import model_info

    found = model_info(opened, entry, recorded["name"])
    for key, what in (
        ("weights_sha256", "weights"),
        ("source_sha256", "source file"),
        ("sources", "source files"),
    ):
        if found.get(key) != recorded.get(key):
            raise UsageError(
                f"model {recorded['name']!r}: its {what} differ from the audit's (the SHA-256 "
                "results.json records); give the audited model with --model/--weights"
            )
