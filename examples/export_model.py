"""Export a model with its weights to a file mri-audit audits without its Python code.

Usage::

    python examples/export_model.py --model examples/unet.py:UNet \\
        --weights examples/weights/unet_4x.pt --out unet_4x.pt2
    mri-audit run --model unet_4x.pt2 --accel 4

``--out x.pt2`` (the default format) writes a ``torch.export`` program: the model is exported
with a **dynamic batch dimension** (an audit runs many candidates per batch; a program with a
fixed batch size still works, one group at a time, but more slowly) and dynamic image (or
k-space and coil) dimensions where the model allows them, and the input domain is stored in the
archive as the extra file ``mri_audit_input``, so ``mri-audit run --model x.pt2`` needs no
``--input``. In plain torch, for an image model::

    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(
        model.eval(),
        (torch.randn(2, 1, 320, 320),),
        dynamic_shapes={"image": {0: batch, 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}},
    )
    torch.export.save(program, "model.pt2", extra_files={"mri_audit_input": "image"})

(``"image"`` is the name of the model's ``forward`` argument.) A k-space model is exported with
``(masked_kspace (B, coils, H, W, 2), mask (B, 1, 1, W, 1))`` and the same batch ``Dim`` on both;
it then computes ``num_low_frequencies`` from the mask.

``--out x.ts`` writes TorchScript (``torch.jit.script``), which torch has deprecated; use it only
for tools that need it (``export_torchscript.py`` can also trace).

After exporting, the script reloads the file and checks that it reproduces the Python model on
inputs of another batch size and image size.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from mri_audit.models.exported import DOMAIN_FILE, quiet_torchscript
from mri_audit.models.loading import load_model, parse_model_args

__all__ = ["example_inputs", "export_program", "export_torchscript", "export", "main"]

logger = logging.getLogger("export_model")

BATCH = torch.export.Dim("batch", min=1, max=1 << 16)


def example_inputs(
    domain: str, batch: int = 2, size: tuple[int, int] = (160, 160), coils: int = 2
) -> tuple[torch.Tensor, ...]:
    """An example forward input of the given input domain.

    Args:
        domain: ``"image"`` or ``"kspace"``.
        batch: the batch size (export with at least 2, so the batch dimension can be dynamic).
        size: ``(H, W)`` of the image or k-space grid.
        coils: coils of the example k-space.

    Returns:
        ``(image (batch, 1, H, W),)`` or
        ``(masked_kspace (batch, coils, H, W, 2), mask (batch, 1, 1, W, 1))``.
    """
    gen = torch.Generator().manual_seed(0)
    height, width = size
    if domain == "image":
        return (torch.randn(batch, 1, height, width, generator=gen),)
    mask = torch.rand(batch, 1, 1, width, 1, generator=gen) < 0.3
    mask[:, :, :, width // 2 - 4 : width // 2 + 4] = True
    return torch.randn(batch, coils, height, width, 2, generator=gen) * mask, mask


def _dynamic_shapes(module: nn.Module, domain: str) -> dict[str, dict[int, object]]:
    """Dynamic batch (and, where the model allows, sizes) for each forward argument."""
    import inspect

    auto = torch.export.Dim.AUTO
    names = [
        n
        for n, p in inspect.signature(module.forward).parameters.items()
        if p.default is inspect.Parameter.empty
    ]
    if domain == "image":
        return {names[0]: {0: BATCH, 2: auto, 3: auto}}
    return {names[0]: {0: BATCH, 1: auto, 2: auto, 3: auto}, names[1]: {0: BATCH, 3: auto}}


def export_program(module: nn.Module, domain: str, out: Path, size: tuple[int, int]) -> None:
    """Export ``module`` with ``torch.export`` (dynamic batch) and save it with its domain."""
    program = torch.export.export(
        module, example_inputs(domain, size=size), dynamic_shapes=_dynamic_shapes(module, domain)
    )
    torch.export.save(program, str(out), extra_files={DOMAIN_FILE: domain})


def export_torchscript(module: nn.Module, domain: str, out: Path) -> None:
    """Script ``module`` to TorchScript (deprecated by torch) and save it."""
    with quiet_torchscript():
        scripted = torch.jit.script(module)
        if getattr(scripted, "mri_audit_input", None) != domain:
            logger.warning(
                "the TorchScript file does not keep mri_audit_input; audit it with --input %s "
                "(or set self.mri_audit_input in __init__)",
                domain,
            )
        scripted.save(str(out))


def _reload(out: Path) -> nn.Module:
    loaded = load_model(str(out))
    return loaded.module


def export(
    spec: str,
    out: str | Path,
    *,
    weights: str | Path | None = None,
    model_args: Mapping[str, object] | None = None,
    input_domain: str | None = None,
    size: tuple[int, int] = (160, 160),
) -> float:
    """Load a model as mri-audit does, export it (format from ``out``'s suffix) and check it.

    Args:
        spec: the model, as for ``mri-audit --model`` (``examples/unet.py:UNet``).
        out: ``*.pt2`` for a torch.export program, ``*.ts``/``*.pt`` for TorchScript.
        weights: a state dict (or checkpoint) for the model.
        model_args: constructor arguments (``--model-arg``).
        input_domain: ``"image"`` or ``"kspace"``; by default the model's ``mri_audit_input``.
        size: the example image size (use the size you audit at when the model needs one).

    Returns:
        The largest absolute difference between the exported and the Python model's outputs
        on a check input of another batch size (and, for a program, the same image size).
    """
    loaded = load_model(spec, model_args=model_args, weights=weights)
    module = loaded.module.eval()
    domain = input_domain or loaded.input_domain or "image"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".pt2":
        export_program(module, domain, out, size)
    else:
        export_torchscript(module, domain, out)
    check = example_inputs(domain, batch=3, size=size, coils=1)
    with torch.no_grad():
        diff = (_reload(out)(*check) - module(*check)).abs().max().item()
    logger.info("saved %s (%s domain) to %s; max |exported - python| = %.3g on a batch of 3",
                loaded.name, domain, out, diff)  # fmt: skip
    return diff


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="file.py:Name, module:Name")
    parser.add_argument("--weights", help="state dict (or checkpoint) to load")
    parser.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="constructor argument (repeatable)")  # fmt: skip
    parser.add_argument("--input", choices=("image", "kspace"), help="input domain override")
    parser.add_argument("--size", type=int, nargs=2, default=(160, 160), metavar=("H", "W"),
                        help="example image size (default 160 160)")  # fmt: skip
    parser.add_argument("--out", required=True, help="x.pt2 (torch.export) or x.ts (TorchScript)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    export(
        args.model,
        args.out,
        weights=args.weights,
        model_args=parse_model_args(args.model_arg),
        input_domain=args.input,
        size=tuple(args.size),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
