"""Opening a model for an audit: load, wrap, and dry-run it once before any work.

Every failure of the model contract becomes one :class:`ModelError` line naming the cause and
the fix, instead of a traceback in the middle of an audit.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch

from mri_audit.data.datasets import SliceBatch
from mri_audit.errors import DeviceError, ModelError, MriAuditError
from mri_audit.models import DOMAINS
from mri_audit.models.behaviour import probe_behaviour
from mri_audit.models.entries import ModelEntry, with_arguments
from mri_audit.models.estimator import Reconstructor
from mri_audit.models.loading import LoadedModel, load_model
from mri_audit.mri.physics import MaskFunc, mask_to_tensor

__all__ = [
    "OpenedModel",
    "forward_domain",
    "open_model",
    "open_entries",
    "open_models",
    "validate_reconstructor",
    "resolve_domain",
]

logger = logging.getLogger(__name__)


class OpenedModel(NamedTuple):
    """A loaded, wrapped and validated model."""

    loaded: LoadedModel
    estimator: Reconstructor
    parameters: int
    trainable: int


def forward_domain(module: torch.nn.Module) -> str | None:
    """``"kspace"`` when ``forward`` takes two or more required arguments (fastMRI's k-space
    models take ``(masked_kspace, mask, ...)``), ``"image"`` when it takes one, else None."""
    import inspect

    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError, AttributeError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p for p in params if p.kind in kinds and p.default is inspect.Parameter.empty]
    if len(required) >= 2:
        return "kspace"
    return "image" if len(required) == 1 else None


def resolve_domain(loaded: LoadedModel, requested: str | None) -> str:
    """``--input`` (or the model's ``input``) wins, then the class attribute
    ``mri_audit_input``, then the forward signature (see :func:`forward_domain`), then image."""
    domain = requested or loaded.input_domain
    if domain is None and loaded.kind in ("file", "module"):
        domain = forward_domain(loaded.module)
        if domain == "kspace":
            logger.info("%s: input domain kspace (forward takes two arguments)", loaded.name)
    domain = domain or "image"
    if domain not in DOMAINS:
        raise ModelError(
            f"{loaded.name} declares mri_audit_input = {domain!r}; use 'image' or 'kspace'"
        )
    return domain


def open_model(
    spec: str,
    *,
    weights: str | None,
    model_args: Mapping[str, object] | None,
    input_domain: str | None,
    normalize: str,
    device: torch.device,
    probe: SliceBatch,
    mask_func: MaskFunc,
    need_gradient: bool,
    name: str | None = None,
) -> OpenedModel:
    """Load a model, move it to ``device``, wrap it and dry-run it on ``probe`` (one slice)."""
    loaded = load_model(spec, model_args=model_args, weights=weights)
    domain = resolve_domain(loaded, input_domain)
    try:
        module = loaded.module.to(device)
    except RuntimeError as err:  # out of memory, bad device
        raise DeviceError(f"cannot move {loaded.name} to {device}: {err}") from err
    estimator = Reconstructor(
        module,
        input_domain=domain,
        target_shape=tuple(probe.target.shape[-2:]),
        normalize=normalize,
        device=device,
        name=name or loaded.name,
    )
    validate_reconstructor(estimator, probe.to(device), mask_func, need_gradient=need_gradient)
    params = list(module.parameters())
    return OpenedModel(
        loaded,
        estimator,
        sum(p.numel() for p in params),
        sum(p.numel() for p in params if p.requires_grad),
    )


def _hint(domain: str, shape: tuple[int, ...], target: tuple[int, int]) -> str:
    if domain == "image":
        return (
            f"image-domain models get (B, 1, {target[0]}, {target[1]}) and must return the same "
            "shape; for a k-space model pass --input kspace"
        )
    return (
        f"k-space models get forward(masked_kspace {(1, *shape[1:], 2)}, mask (1, 1, 1, "
        f"{shape[-1]}, 1)) and must return (B, H, W); for an image model pass --input image"
    )


def report_behaviour(estimator: Reconstructor) -> None:
    """Say how a stochastic or batch-coupled model will be run (one line each), and warn
    when its declaration contradicts the checks."""
    b = getattr(estimator, "behaviour", None)
    if b is None:
        return
    for line in b.warnings(estimator.name):
        logger.warning(line)
    if b.coupled:
        logger.warning(
            "%s couples batch items (a slice alone and in a batch differ by %s of the output's "
            "range): it runs one item per forward pass, so a batch of N costs N passes",
            estimator.name,
            "?" if b.coupled_gap is None else f"{b.coupled_gap:.1e}",
        )
    if b.stochastic:
        logger.warning(
            "%s is stochastic (two runs of one input differ by %.1e of the output's range): every "
            "forward runs under noise keyed by (seed, volume, slice, sample)%s",
            estimator.name,
            b.stochastic_gap,
            "" if b.generator else ", one item at a time (its forward takes no generator=)",
        )


def validate_reconstructor(
    estimator: Reconstructor, probe: SliceBatch, mask_func: MaskFunc, *, need_gradient: bool
) -> None:
    """Dry-run the model on one slice and turn every contract failure into a ModelError.

    Checks: the forward runs; the output is a real floating tensor on the input's device with
    the expected shape; it is finite; it depends on the input; and, when ``need_gradient``,
    gradients flow back to the input.
    """
    name, domain = estimator.name, estimator.input_domain
    kspace = probe.kspace[:1]
    m = mask_func(kspace.shape[-1], seed=tuple(map(ord, probe.volumes[0])))
    mask = mask_to_tensor(m.columns, device=kspace.device)
    masked = kspace * mask
    hint = _hint(domain, tuple(kspace.shape), estimator.target_shape)

    def forward(x: torch.Tensor) -> torch.Tensor:
        try:
            return estimator.reconstruct(x, mask, num_low_frequencies=m.num_low_frequencies)
        except torch.cuda.OutOfMemoryError as err:
            raise DeviceError(f"out of GPU memory running {name} on one slice: {err}") from err
        except (TypeError, ValueError, RuntimeError, IndexError, AttributeError) as err:
            msg = " ".join(str(err).split())[:300]
            raise ModelError(
                f"{name} failed on one {domain}-domain slice: {type(err).__name__}: {msg} ({hint})"
            ) from err

    raw: list[torch.Tensor] = []
    try:  # the model's own output, before de-normalisation (ScriptModules take no hooks)
        handle = estimator.model.register_forward_hook(
            lambda mod, args, output: raw.append(output.detach())
        )
    except (RuntimeError, AttributeError):
        handle = None
    with estimator.evaluation(), torch.no_grad():
        try:
            out = forward(masked)
            if not torch.isfinite(out).all():
                raise ModelError(
                    f"{name} returned NaN or Inf on a clean slice; check the weights, the "
                    "normalisation (--normalize) and the input domain (--input)"
                )
            other = forward(torch.flip(masked, dims=(-2,)) * 0.5 + masked.roll(7, dims=-2) * 0.5)
        finally:
            if handle is not None:
                handle.remove()
        same = torch.equal(raw[0], raw[1]) if len(raw) == 2 else torch.equal(out, other)
        if same:
            raise ModelError(
                f"{name} gives the same output for different inputs: it ignores its input "
                "(check that forward uses its argument)"
            )
        try:
            estimator.behaviour = probe_behaviour(estimator, masked, mask, m.num_low_frequencies)
        except (TypeError, ValueError, RuntimeError, IndexError) as err:
            msg = " ".join(str(err).split())[:300]
            raise ModelError(
                f"{name} failed when run on a batch of two slices (the batch-coupling check): "
                f"{type(err).__name__}: {msg}; a model must take any batch size"
            ) from err
    report_behaviour(estimator)
    if need_gradient:
        raw_grad: list[torch.Tensor] = []
        try:
            handle = estimator.model.register_forward_hook(
                lambda mod, args, output: raw_grad.append(output)
            )
        except (RuntimeError, AttributeError):
            handle = None
        with estimator.evaluation():
            x = masked.detach().clone().requires_grad_(True)
            try:
                out = forward(x)
                # The model's own output must carry the gradient, not just de-normalisation.
                target = raw_grad[0] if raw_grad else out
                grad = None
                if target.requires_grad:
                    (grad,) = torch.autograd.grad(target.square().sum(), x, allow_unused=True)
            except RuntimeError as err:
                grad = None
                logger.debug("gradient check failed: %s", err)
            finally:
                if handle is not None:
                    handle.remove()
            if grad is None or not torch.isfinite(grad).all() or not grad.abs().sum() > 0:
                raise ModelError(
                    f"{name} is not differentiable with respect to its input, which gradient "
                    "attacks (fnaf-pgd, kspace-pgd) need; choose --attacks fnaf-rs,fnaf-fd"
                )
    logger.info("validated %s (%s domain) on %s", name, domain, kspace.device)


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
