"""Models exported from Python: ``torch.export`` programs (``.pt2``) and TorchScript files.

Both carry their code and weights, so ``--model file.pt2`` (or ``file.ts``) needs no ``:Name``
and takes no ``--model-arg``; ``--weights`` may still replace the weights. They are code: load
only files you trust (weights files, in contrast, are read with ``weights_only=True``).

**torch.export programs** (``torch.export.save(torch.export.export(model, args), path)``) are
the primary exchange format: TorchScript is deprecated in recent torch. A program is loaded with
``torch.export.load`` and run through ``.module()`` (gradients flow through it, so gradient
attacks work), wrapped in :class:`ExportedModel`, which

- fixes the mode: a program runs as it was exported (export in eval mode); ``eval()`` is
  accepted, ``train()`` refused;
- handles the batch dimension: an audit evaluates many candidates per batch, so export with a
  dynamic batch dimension (``torch.export.Dim``). A program exported with a fixed batch size
  ``n`` is run ``n`` samples at a time (the last group padded with copies of its last sample),
  with a warning: measured on a CPU, one sample at a time is 2-3x slower than a batch of 32,
  and far more on a GPU. A dynamic batch with an upper bound is run in groups of that bound;
- moves to a device with ``torch.export.passes.move_to_device_pass`` (a program may hold
  device-specific constants), keeping any weights loaded since;
- passes only the keyword arguments the program takes (a k-space program exported as
  ``(masked_kspace, mask)`` does not get ``num_low_frequencies``);
- turns an input the program's guards refuse (a fixed image size, say) into a ``ValueError``
  naming the shapes it was exported for.

The input domain is stored in the archive as the extra file ``mri_audit_input``
(``torch.export.save(program, path, extra_files={"mri_audit_input": "kspace"})``); without it,
``--input`` decides (default ``image``).

**TorchScript** files are loaded with ``torch.jit.load``; a class attribute ``mri_audit_input``
survives scripting when it is annotated ``Final[str]`` or set in ``__init__``.

torch's deprecation warnings for TorchScript are silenced where mri-audit itself calls
``torch.jit`` (:func:`quiet_torchscript`), and nowhere else.

Both files are zip archives: every member is checked against its CRC-32 before torch reads it
(:func:`mri_audit.models.archive.check_archive`), so a damaged file is refused, naming the member,
rather than loaded as another model. What torch logs while it loads one (``torch.export.load``
logs a whole traceback before raising) and warns is captured
(:func:`mri_audit.models.archive.torch_output`): the user sees one line on failure, and ``-v``
shows what torch said.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mri_audit.errors import ModelError
from mri_audit.models.archive import TorchOutput, check_archive, torch_output
from mri_audit.models.checkpoints import _one_line, _require_file, _zip_leaves

__all__ = [
    "ExportedModel",
    "PROGRAM_KINDS",
    "DOMAIN_FILE",
    "program_kind",
    "load_exported",
    "load_torchscript",
    "quiet_torchscript",
    "weights_target",
]

logger = logging.getLogger(__name__)

PROGRAM_KINDS = ("torchscript", "exported")
"""``LoadedModel.kind`` of models that carry their own code (no Python class to fine-tune)."""

DOMAIN_FILE = "mri_audit_input"
"""The extra file of a ``.pt2`` archive that holds the model's input domain."""

EXPORT_HINT = "export with dynamic dimensions (torch.export.Dim; see examples/export_model.py)"

# torch's messages: "`torch.jit.load` is deprecated. Please switch to `torch.export`." and the
# like for script, trace, save...
_JIT_DEPRECATED = r"`?torch\.jit\.[\w.]+`? is deprecated"


@contextlib.contextmanager
def quiet_torchscript() -> Iterator[None]:
    """Silence torch's TorchScript deprecation warnings (only those) inside the block."""
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", message=_JIT_DEPRECATED, category=category)
        yield


def _cause(exc: BaseException, said: TorchOutput) -> str:
    """The failure as ``"Type: message"``, preferring the error torch logged over a summary."""
    err = said.error() or exc
    text = re.sub(r"\[enforce fail at [^\]]*\]\s*\.?\s*", "", str(err))  # torch's C++ prefix
    text = _one_line(text.split(". ")[0])
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def program_kind(path: Path) -> str | None:
    """``"exported"`` for a ``.pt2`` archive, ``"torchscript"`` for TorchScript, else None."""
    leaves = _zip_leaves(path)
    if "constants.pkl" in leaves:
        return "torchscript"
    if "archive_format" in leaves or path.suffix.lower() == ".pt2":
        return "exported"
    return None


def weights_target(module: nn.Module) -> nn.Module:
    """The module whose state dict ``--weights`` replaces (the program inside a wrapper)."""
    return module.program if isinstance(module, ExportedModel) else module


def load_torchscript(path: Path, target: str) -> nn.Module:
    """Load a TorchScript file onto the CPU (torch's deprecation warnings silenced).

    Raises:
        ModelError: the file is a torch.save file, or not TorchScript.
    """
    archive = check_archive(path, "model file", target)
    leaves = archive.leaves if archive is not None else set()
    if "data.pkl" in leaves and "constants.pkl" not in leaves:
        raise ModelError(
            f"{target} is not TorchScript: it is a torch.save file (weights or a checkpoint); "
            f"use --model file.py:Name --weights {target}"
        )
    with torch_output(target) as said:
        try:
            with quiet_torchscript():  # TorchScript is a supported input, deprecated or not
                return torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            cause = _cause(exc, said)
    raise ModelError(
        f"cannot load {target} as TorchScript ({cause}); save a model with "
        f"torch.export.save(torch.export.export(model, args), 'model.pt2') (or "
        f"torch.jit.script(model).save(path)), or for weights use "
        f"--model file.py:Name --weights {target}"
    )


def load_exported(path: Path, target: str) -> tuple[ExportedModel, str | None]:
    """Load a ``torch.export`` program and wrap it for an audit.

    Args:
        path: the ``.pt2`` file.
        target: the path as the user gave it, for messages.

    Returns:
        The wrapped program (on the CPU) and its stored input domain (None when not stored).

    Raises:
        ModelError: the file is not a loadable torch.export program.
    """
    _require_file(path, "model file", "check the --model path")
    archive = check_archive(path, "model file", target)
    extra = {DOMAIN_FILE: ""}
    if archive is not None and archive.pickled and "archive_format" not in archive.leaves:
        cause = "it is a torch.save file: weights, a checkpoint or TorchScript"
    else:
        with torch_output(target) as said:
            try:
                program = torch.export.load(str(path), extra_files=extra)
                cause = ""
            except Exception as exc:
                cause = _cause(exc, said)
    if cause:
        raise ModelError(
            f"cannot load {target} as a torch.export program ({cause}); save one with "
            f"torch.export.save(torch.export.export(model, args, dynamic_shapes=...), "
            f"'model.pt2'), or for weights use --model file.py:Name --weights {target}"
        )
    domain = extra.get(DOMAIN_FILE)
    domain = domain.decode() if isinstance(domain, bytes) else domain
    model = ExportedModel(program, path.name)
    lo, hi = model.batch_range
    if lo == hi:
        logger.warning(
            "%s was exported with a fixed batch size of %d: mri-audit runs it %d sample(s) at a "
            "time, which is slower (2-3x on a CPU, more on a GPU); export it with a dynamic "
            "batch dimension (torch.export.Dim; see examples/export_model.py)",
            path.name, lo, lo,
        )  # fmt: skip
    return model, (domain or "").strip() or None


def _user_inputs(program: Any) -> list[Any]:
    """The example values (fake tensors, ints, None) of a program's user inputs, in order."""
    names = list(program.graph_signature.user_inputs)
    nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    return [nodes[n].meta.get("val") if n in nodes else None for n in names]


def _dim_range(program: Any, dim: object) -> tuple[int, float]:
    """The values a dimension may take: ``(n, n)`` when fixed, the program's range otherwise."""
    if isinstance(dim, int):
        return dim, dim
    try:
        bounds = program.range_constraints[dim.node.expr]
        lower = int(bounds.lower)
        upper = float(bounds.upper) if bounds.upper.is_finite else math.inf
    except (AttributeError, KeyError, TypeError, ValueError):
        return 1, math.inf
    return max(lower, 1), (upper if upper < 2**31 else math.inf)


class ExportedModel(nn.Module):
    """A ``torch.export`` program as a module an audit can run (see the module docstring).

    Args:
        program: the loaded ``ExportedProgram``.
        name: the file's name, for messages.

    Attributes:
        program: the program's ``.module()``, holding its parameters and buffers.
        batch_range: the batch sizes the program accepts, ``(lo, hi)`` (``hi`` may be inf).
    """

    def __init__(self, program: Any, name: str) -> None:
        super().__init__()
        self._program = program
        self.name = name
        self.program = program.module()
        self.training = False
        self._device = next((t.device for t in self.program.state_dict().values()), None)
        inputs = _user_inputs(program)
        tensors = [v for v in inputs if isinstance(v, torch.Tensor) and v.ndim > 0]
        self.batch_range = _dim_range(program, tensors[0].shape[0]) if tensors else (1, math.inf)
        self.input_shapes = [
            "(" + ", ".join(str(d) if isinstance(d, int) else "*" for d in t.shape) + ")"
            for t in tensors
        ]
        try:
            self._keywords = set(inspect.signature(self.program.forward).parameters)
        except (TypeError, ValueError):
            self._keywords = set()

    def train(self, mode: bool = True) -> ExportedModel:
        """Accept eval mode; refuse training mode (a program runs as it was exported)."""
        if mode:
            raise ModelError(
                f"{self.name} is a torch.export program: it runs as exported, in eval mode, and "
                "cannot be trained; fine-tune the Python model (path/to/file.py:Name --weights)"
            )
        return self

    def to(self, *args: Any, **kwargs: Any) -> ExportedModel:
        """Move to a device, rewriting the program's device-specific constants too."""
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        try:
            from torch.export.passes import move_to_device_pass as mover
        except ImportError:  # torch < 2.6: parameters and buffers move, constants stay
            mover = None
        if device is not None and mover is not None and torch.device(device) != self._device:
            state = self.program.state_dict()  # weights loaded since, if any
            self._program = mover(self._program, torch.device(device))  # (in place)
            self.program = self._program.module()
            self.program.load_state_dict(state)
            self._device = torch.device(device)
        return super().to(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the program, in groups that fit its batch range when needed."""
        kwargs = {k: v for k, v in kwargs.items() if k in self._keywords}
        batch = next((a.shape[0] for a in args if isinstance(a, torch.Tensor) and a.ndim), None)
        lo, hi = self.batch_range
        if batch is None or lo <= batch <= hi:
            return self._call(args, kwargs)
        step = int(min(hi, max(lo, batch)))
        outs = []
        for start in range(0, batch, step):
            n = min(step, batch - start)
            group = [_rows(a, batch, start, n, lo) for a in args]
            out = self._call(group, kwargs)
            if not isinstance(out, torch.Tensor):
                return out  # the Reconstructor reports what it got
            outs.append(out[:n])
        return torch.cat(outs)

    def _call(self, args: Any, kwargs: dict[str, Any]) -> Any:
        try:
            return self.program(*args, **kwargs)
        except (AssertionError, RuntimeError, ValueError) as err:
            text = " ".join(str(err).split())
            if not any(w in text for w in ("Guard failed", "Expected input", "input tree spec",
                                           "keyword mismatch")):  # fmt: skip
                raise
            given = ", ".join(str(tuple(a.shape)) for a in args if isinstance(a, torch.Tensor))
            raise ValueError(
                f"{self.name} was exported for inputs {', '.join(self.input_shapes)} (* is "
                f"dynamic) and refuses {given} ({text[:160]}); {EXPORT_HINT}"
            ) from None


def _rows(value: Any, batch: int, start: int, n: int, lo: int) -> Any:
    """Rows ``start:start+n`` of a batched tensor, padded to ``lo`` rows with the last one."""
    if not isinstance(value, torch.Tensor) or value.ndim == 0 or value.shape[0] != batch:
        return value
    rows = value[start : start + n]
    if n < lo:
        rows = torch.cat([rows, rows[-1:].expand(lo - n, *rows.shape[1:])])
    return rows
