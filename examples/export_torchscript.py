"""Export an example model (or any mri-audit model spec) with its weights to TorchScript.

TorchScript is deprecated in recent torch: prefer ``export_model.py``, which writes a
``torch.export`` program (``.pt2``). This script remains for tools that need TorchScript, and
for models that only trace.

Usage::

    python examples/export_torchscript.py --model examples/unet.py:UNet \\
        --weights examples/weights/unet_4x.pt --out unet_4x.ts
    mri-audit run --model unet_4x.ts --accel 4

The model is loaded exactly as mri-audit loads it (:func:`mri_audit.models.loading.load_model`),
put in
eval mode and compiled with ``torch.jit.script``. When scripting fails, it is traced instead with
an example input of the model's domain (a traced model is fixed to that control flow: prefer
scripting). The ``mri_audit_input`` attribute is kept on the exported module so
``mri-audit run --model file.ts`` knows its input domain without ``--input``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from mri_audit.models.exported import quiet_torchscript
from mri_audit.models.loading import load_model, parse_model_args

__all__ = ["export", "example_inputs", "main"]

logger = logging.getLogger("export_torchscript")


def example_inputs(domain: str, size: int = 64, coils: int = 1) -> tuple[torch.Tensor, ...]:
    """An example forward input for tracing a model of the given input domain.

    Args:
        domain: ``"image"`` or ``"kspace"``.
        size: side of the square example image / k-space grid.
        coils: coils of the example k-space.

    Returns:
        ``(image (1, 1, size, size),)`` or
        ``(masked_kspace (1, coils, size, size, 2), mask (1, 1, 1, size, 1))``.
    """
    gen = torch.Generator().manual_seed(0)
    if domain == "image":
        return (torch.randn(1, 1, size, size, generator=gen),)
    mask = torch.rand(1, 1, 1, size, 1, generator=gen) < 0.3
    mask[:, :, :, size // 2 - 4 : size // 2 + 4] = True
    kspace = torch.randn(1, coils, size, size, 2, generator=gen) * mask
    return kspace, mask


def _keep_domain(scripted: torch.jit.ScriptModule, domain: str) -> None:
    """Make sure the exported module carries ``mri_audit_input`` (saved with the file)."""
    if getattr(scripted, "mri_audit_input", None) == domain:
        return
    try:
        scripted._c._register_attribute("mri_audit_input", torch._C.StringType.get(), domain)
    except (RuntimeError, AttributeError) as err:  # private API; the CLI's --input still works
        logger.warning("could not store mri_audit_input=%r on the export (%s); pass --input %s "
                       "when auditing it", domain, err, domain)  # fmt: skip


def export(
    spec: str,
    out: str | Path,
    *,
    weights: str | Path | None = None,
    model_args: Mapping[str, object] | None = None,
    input_domain: str | None = None,
    trace: bool = False,
) -> torch.jit.ScriptModule:
    """Load a model, compile it to TorchScript and save it.

    Args:
        spec: the model, as for ``mri-audit --model`` (``examples/unet.py:UNet``).
        out: the TorchScript file to write.
        weights: a state dict for the model.
        model_args: constructor arguments (``--model-arg``).
        input_domain: ``"image"`` or ``"kspace"``; by default the model's ``mri_audit_input``
            (``"image"`` when it has none).
        trace: trace instead of script.

    Returns:
        The compiled module (in eval mode), as saved.
    """
    loaded = load_model(spec, model_args=model_args, weights=weights)
    module: nn.Module = loaded.module.eval()
    domain = input_domain or loaded.input_domain or "image"
    scripted = None
    with quiet_torchscript():  # torch.jit is deprecated in recent torch, and still works
        if not trace:
            try:
                scripted = torch.jit.script(module)
            except Exception as err:
                logger.warning("torch.jit.script failed (%s); tracing instead",
                               " ".join(str(err).split())[:300])  # fmt: skip
        if scripted is None:
            with torch.no_grad():
                scripted = torch.jit.trace(module, example_inputs(domain), check_trace=False)
        _keep_domain(scripted, domain)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        scripted.save(str(out))
    logger.info("saved %s (%s domain) to %s", loaded.name, domain, out)
    return scripted


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="file.py:Name, module:Name")
    parser.add_argument("--weights", help="state dict to load")
    parser.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="constructor argument (repeatable)")  # fmt: skip
    parser.add_argument("--input", choices=("image", "kspace"), help="input domain override")
    parser.add_argument("--trace", action="store_true", help="trace instead of script")
    parser.add_argument("--out", required=True, help="TorchScript file to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    export(
        args.model,
        args.out,
        weights=args.weights,
        model_args=parse_model_args(args.model_arg),
        input_domain=args.input,
        trace=args.trace,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
