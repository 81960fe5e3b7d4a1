"""Turning command-line options into the objects a command works with (once, at the edge)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import click
import torch

from mri_audit.data.datasets import SliceBatch, collate, open_dataset, valid_indices
from mri_audit.device import resolve_device
from mri_audit.errors import DataError, MriAuditError
from mri_audit.models.entries import ModelEntry, with_arguments
from mri_audit.models.opening import OpenedModel, open_model
from mri_audit.mri.physics import MaskFunc, make_mask_func

logger = logging.getLogger(__name__)


def build_mask_func(mask_type: str, accel: float, center_fraction: float | None) -> MaskFunc:
    """The audit's mask function (per-volume masks are seeded from the volume name)."""
    return make_mask_func(mask_type, accel, center_fraction)


def probe_batch(dataset, source: str | None = None) -> SliceBatch:
    """A one-slice batch for the model dry run: the dataset's first *valid* slice.

    A slice with NaN/Inf or all-zero k-space would make a sound model look broken, so the dry
    run never uses one.

    Raises:
        DataError: the dataset has no valid slice.
    """
    valid = valid_indices(dataset)
    if not valid:
        raise DataError(f"no slice to audit in {source or 'the data'} (every slice is invalid)")
    return collate([dataset[valid[0]]])


def open_data(data: str | None, max_volumes: int | None, max_slices: int | None):
    """The dataset (every slice checked), and a one-slice probe batch for the model dry run."""
    dataset = open_dataset(data, max_volumes=max_volumes, max_slices=max_slices)
    if len(dataset) == 0:
        raise DataError(f"no slices to audit in {data or 'the built-in set'}")
    return dataset, probe_batch(dataset, data or "the built-in set")


def open_models(
    specs: Sequence[tuple[str, str | None]],
    *,
    model_args: Sequence[str],
    input_domain: str | None,
    normalize: str,
    device: torch.device,
    probe: SliceBatch,
    mask_func: MaskFunc,
    need_gradient: bool,
    names: Sequence[str | None] | None = None,
) -> list[OpenedModel]:
    """Open every ``(spec, weights)``; ``--model-arg`` and ``--input`` apply to the first
    (and to every model when all specs are the same model)."""
    entries = [
        ModelEntry(spec, names[i] if names else None, weights)
        for i, (spec, weights) in enumerate(specs)
    ]
    entries[0] = entries[0]._replace(input=input_domain)
    entries = with_arguments(entries, model_args)
    return open_entries(
        entries,
        normalize=normalize,
        device=device,
        probe=probe,
        mask_func=mask_func,
        need_gradient=need_gradient,
    )


def open_entries(
    entries: Sequence[ModelEntry],
    *,
    normalize: str,
    device: torch.device,
    probe: SliceBatch,
    mask_func: MaskFunc,
    need_gradient: bool,
) -> list[OpenedModel]:
    """Open, wrap and dry-run every model with its own settings; a model's error names it."""
    opened = []
    for i, entry in enumerate(entries):
        try:
            opened.append(
                open_model(
                    entry.spec,
                    weights=entry.weights,
                    model_args=dict(entry.args),
                    input_domain=entry.input,
                    normalize=entry.normalize or normalize,
                    device=device,
                    probe=probe,
                    mask_func=mask_func,
                    need_gradient=need_gradient,
                    name=entry.name,
                )
            )
        except MriAuditError as err:
            if len(entries) == 1 and entry.name is None:
                raise
            message = str(err)
            if i > 0:  # --model-arg KEY=VALUE reaches the main model only
                message = message.replace(
                    "(check --model-arg)",
                    f"(give its arguments with --model-arg {entry.name}:KEY=VALUE, or args in "
                    "its [[models]] table of --config)"
                    if entry.name
                    else "(name it with --compare NAME=SPEC and give its arguments with "
                    "--model-arg NAME:KEY=VALUE, or use a [[models]] table of --config)",
                )
            role = "main model" if i == 0 else f"model {i + 1}"
            new = type(err)(f"{role} {entry.label!r}: {message}")
            raise new from None
    return opened


def check_precision(precision: str, device) -> None:
    """``--precision bf16|fp16`` on a CPU: bf16 runs where the CPU computes it natively (AMX,
    AVX512-BF16: the example U-Net's forward took 0.51x the fp32 time here, see
    ``benchmarks/bench_precision.py``); elsewhere, and for fp16 on any CPU (1.13x the fp32 time
    even with AVX512-FP16), a warning says the search is slower than in fp32."""
    if precision == "fp32" or device.type != "cpu":
        return
    import torch

    native = False
    if precision == "bf16":
        check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        try:
            native = bool(check()) if check is not None else False
        except RuntimeError:
            native = False
    if not native:
        why = "has no native bf16 support" if precision == "bf16" else "runs fp16 slowly"
        click.echo(
            f"Warning: --precision {precision}: this CPU {why}, so the search is likely slower "
            "than in fp32 (the chosen features are still rescored in fp32); use --precision "
            f"{'fp32' if precision == 'bf16' else 'bf16 or fp32'} here",
            err=True,
        )


__all__ = [
    "build_mask_func",
    "check_precision",
    "open_data",
    "open_entries",
    "open_models",
    "probe_batch",
    "resolve_device",
]
