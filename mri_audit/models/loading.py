"""Loading user models: ``file.py:Name``, ``package.module:Name``, or a model file that carries
its own code: a ``torch.export`` program (``.pt2``) or a TorchScript file (see
:mod:`mri_audit.models.exported`).

Every failure becomes a one-line :class:`~mri_audit.errors.ModelError` naming the cause and the
fix; no traceback reaches the user.

How a model file is imported (its own module, sibling imports, no :data:`sys.path` edits) is
:mod:`mri_audit.models.pyimport`.

A model declares its input domain with a class attribute ``mri_audit_input = "image"`` or
``"kspace"``. A ``.pt2`` program stores it as an extra file of its archive, TorchScript only
when it is annotated ``Final[str]`` or set in ``__init__``; otherwise the domain of such a model
comes from ``--input``.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import logging
import os
import sys
import traceback
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from torch import nn

from mri_audit.errors import ModelError
from mri_audit.models import DOMAINS
from mri_audit.models.checkpoints import _exc_text, _names, _one_line, _require_file
from mri_audit.models.exported import load_exported, load_torchscript, program_kind, weights_target
from mri_audit.models.pyimport import import_model_file
from mri_audit.models.weights import apply_weights, load_state_dict

__all__ = [
    "LoadedModel",
    "parse_model_args",
    "load_model",
    "load_state_dict",
    "apply_weights",
    "imported_packages",
]

logger = logging.getLogger(__name__)

PROGRAM_SUFFIXES = (".pt2", ".pt", ".ts", ".pth")
_MAX_LISTED = 10
_MAX_KEYS = 5


class LoadedModel(NamedTuple):
    """A user model, constructed and (optionally) loaded with weights.

    Attributes:
        module: the model, on the CPU.
        spec: the ``--model`` value as the user gave it.
        name: display name, e.g. ``"unet.py:UNet"``, or ``"model.pt2"`` for a model file.
        kind: ``"file"``, ``"module"``, ``"object"`` (a constructed module), ``"exported"``
            (a torch.export program) or
            ``"torchscript"``; the last two are :data:`mri_audit.models.exported.PROGRAM_KINDS`.
        source_path: the ``.py``, ``.pt2`` or TorchScript file (``None`` for an installed
            module).
        weights_path: the weights file, if any.
        input_domain: the model's ``mri_audit_input`` (``"image"``/``"kspace"``), None if unset.
        sources: the model's source files: the file and every module imported from its folder
            while it loaded (a ``file.py:Name``), the package's loaded modules (a
            ``package.module:Name``) or the ``.pt2``/TorchScript file.
    """

    module: nn.Module
    spec: str
    name: str
    kind: str
    source_path: Path | None
    weights_path: Path | None
    input_domain: str | None
    sources: tuple[Path, ...] = ()


def parse_model_args(pairs: Sequence[str]) -> dict[str, object]:
    """Parse ``--model-arg key=value`` pairs into constructor keyword arguments.

    Values are Python literals when :func:`ast.literal_eval` accepts them (``8``, ``0.5``,
    ``True``, ``[1, 2]``, ``None``) and plain strings otherwise (``name=foo`` gives ``"foo"``).

    Args:
        pairs: strings of the form ``key=value``.

    Returns:
        The keyword arguments, in the given order.

    Raises:
        ModelError: a pair without ``=``, with a key that is not a Python identifier, or a key
            given twice.
    """
    args: dict[str, object] = {}
    for pair in pairs:
        key, sep, raw = str(pair).partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ModelError(
                f"bad --model-arg {pair!r}: expected key=value with a Python identifier as key "
                "(e.g. --model-arg chans=32)"
            )
        if key in args:
            raise ModelError(f"--model-arg {key} is given twice; give each argument once")
        try:
            value: object = ast.literal_eval(raw)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            value = raw
        args[key] = value
    return args


def _is_module_path(text: str) -> bool:
    return bool(text) and all(part.isidentifier() for part in text.split("."))


def load_model(
    spec: str | nn.Module,
    *,
    model_args: Mapping[str, object] | None = None,
    weights: str | Path | None = None,
) -> LoadedModel:
    """Load a user model from ``--model``, construct it and load its weights.

    Args:
        spec: ``path/to/file.py:Name``, ``package.module:Name``, a torch.export program
            (``.pt2``) or a TorchScript file (``.pt``/``.ts``/``.pth``, or any existing file
            given without ``:Name``; the file's content decides which), or a constructed
            ``nn.Module`` (the library's ``audit(model)``: used as it is, kind ``"object"``,
            its class's source file recorded when there is one).
        model_args: keyword arguments for ``Name`` (see :func:`parse_model_args`).
        weights: a state dict or checkpoint file, read with ``weights_only=True`` and loaded
            with ``strict=True`` after fitting its key prefix (:func:`apply_weights`).

    Returns:
        The loaded model (in eval mode is left to the caller; the module is on the CPU).

    Raises:
        ModelError: anything that prevents loading, as one line naming the cause and the fix.
    """
    if isinstance(spec, nn.Module):
        loaded = _load_object(spec, model_args)
        if weights is not None:
            apply_weights(weights_target(loaded.module), Path(weights), loaded.name)
            loaded = loaded._replace(weights_path=Path(weights))
        return loaded
    spec = str(spec).strip()
    args = dict(model_args or {})
    target, sep, name = spec.rpartition(":")
    if not sep or (len(target) == 1 and target.isalpha()):  # no name (or only a drive letter)
        target, name = spec, ""
    target = target.strip()
    name = name.strip()
    suffix = Path(target).suffix.lower()

    if suffix == ".py":
        loaded = _load_from_file(spec, target, name, args)
    elif suffix in PROGRAM_SUFFIXES or (not name and Path(target).is_file()):
        if name:
            what = "torch.export program" if suffix == ".pt2" else "TorchScript file"
            raise ModelError(
                f"--model {spec}: a {what} takes no ':Name'; pass just {target} "
                f"(or, for weights, --model file.py:Name --weights {target})"
            )
        loaded = _load_program(spec, target, args)
    elif _is_module_path(target):
        if not name:
            raise ModelError(
                f"--model {spec} needs a class or factory name: {spec}:Name "
                "(or give a file.py:Name or a TorchScript file)"
            )
        loaded = _load_from_module(spec, target, name, args)
    else:
        raise ModelError(
            f"--model {spec!r} is not a file.py:Name, package.module:Name, .pt2 program or "
            "TorchScript file (check the spelling and that the file exists)"
        )

    if weights is not None:
        wpath = Path(weights)
        apply_weights(weights_target(loaded.module), wpath, loaded.name)
        loaded = loaded._replace(weights_path=wpath)
    logger.debug("loaded %s model %s, weights %s", loaded.kind, loaded.name, loaded.weights_path)
    return loaded


def _load_object(module: nn.Module, model_args: Mapping[str, object] | None) -> LoadedModel:
    """A model constructed by the caller: no spec to load; its class names it."""
    if model_args:
        raise ModelError(
            f"model arguments ({', '.join(model_args)}) do not apply to a constructed "
            f"{type(module).__name__}: its constructor already ran"
        )
    cls = type(module)
    try:
        source = Path(inspect.getsourcefile(cls) or "").resolve()
    except (TypeError, OSError):
        source = None
    source = source if source is not None and source.is_file() else None
    name = f"{source.name}:{cls.__qualname__}" if source else f"{cls.__module__}.{cls.__qualname__}"
    loaded = _loaded(module, name, name, "object", source)
    return loaded._replace(sources=(source,) if source else ())


def _load_from_file(spec: str, target: str, name: str, args: dict[str, object]) -> LoadedModel:
    path = Path(target)
    _require_file(path, "model file", "check the path before ':'")
    path = path.resolve()
    module, sources = import_model_file(path, target)
    shown = path.name
    if not name:
        raise ModelError(
            f"--model {spec} needs a class or factory name: {target}:Name "
            f"({shown} {_describe_names(module)})"
        )
    loaded = _loaded(_build(module, name, shown, args), spec, f"{shown}:{name}", "file", path)
    return loaded._replace(sources=sources)


def imported_packages(model: nn.Module) -> dict[str, str]:
    """The installed distributions (name -> version) a model's code imports, for provenance.

    Looks at the modules of the model's class and its bases, and at what those modules import
    (modules, or names imported from them); the standard library and the plugin file itself
    have no distribution and are left out.
    """
    import importlib.metadata as metadata
    import types

    tops: set[str] = set()
    for cls in type(model).__mro__:
        mod = sys.modules.get(cls.__module__)
        if mod is None:
            continue
        tops.add(cls.__module__.split(".")[0])
        for value in vars(mod).values():
            if isinstance(value, types.ModuleType):
                tops.add(value.__name__.split(".")[0])
            elif isinstance(getattr(value, "__module__", None), str):
                tops.add(value.__module__.split(".")[0])
    dists = _distributions(_path_state())
    out: dict[str, str] = {}
    for top in sorted(tops):
        for dist in dists.get(top, []):
            try:
                out[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                continue
    return dict(sorted(out.items()))


def _load_from_module(spec: str, target: str, name: str, args: dict[str, object]) -> LoadedModel:
    try:
        module = importlib.import_module(target)
    except SyntaxError as exc:
        where = Path(exc.filename).name if exc.filename else target
        raise ModelError(
            f"cannot import module '{target}': syntax error in {where} line {exc.lineno}: "
            f"{_one_line(exc.msg)}"
        ) from None
    except ModuleNotFoundError as exc:
        hint = ""
        if exc.name and (target == exc.name or target.startswith(exc.name + ".")):
            hint = " (is it installed? check the name before ':', or give a file.py:Name)"
        raise ModelError(f"cannot import module '{target}': {_exc_text(exc)}{hint}") from None
    except (Exception, SystemExit) as exc:
        frames = traceback.extract_tb(exc.__traceback__)
        where = f" ({Path(frames[-1].filename).name} line {frames[-1].lineno})" if frames else ""
        raise ModelError(f"cannot import module '{target}'{where}: {_exc_text(exc)}") from None
    source = Path(module.__file__) if getattr(module, "__file__", None) else None
    loaded = _loaded(_build(module, name, target, args), spec, f"{target}:{name}", "module", source)
    top = target.split(".")[0]
    files = [
        Path(m.__file__).resolve()
        for n, m in list(sys.modules.items())
        if (n == top or n.startswith(top + ".")) and str(getattr(m, "__file__", "")).endswith(".py")
    ]
    return loaded._replace(sources=tuple(sorted(set(files))))


def _is_module_class(obj: object) -> bool:
    return isinstance(obj, type) and issubclass(obj, nn.Module)


def _candidates(module: types.ModuleType) -> tuple[list[str], list[str]]:
    """nn.Module classes and other callables a module offers (public names only)."""
    classes, others = [], []
    for key, obj in vars(module).items():
        if key.startswith("_"):
            continue
        if _is_module_class(obj):
            if not obj.__module__.startswith("torch."):
                classes.append(key)
        elif callable(obj) and getattr(obj, "__module__", None) == module.__name__:
            others.append(key)
    return classes, others


def _describe_names(module: types.ModuleType) -> str:
    classes, others = _candidates(module)
    parts = [f"nn.Module classes: {_names(classes, _MAX_LISTED)}"] if classes else []
    parts += [f"other callables: {_names(others, _MAX_LISTED)}"] if others else []
    return "defines " + "; ".join(parts) if parts else "defines no nn.Module classes or callables"


def _call_args(args: Mapping[str, object]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())


def _build(module: types.ModuleType, name: str, shown: str, args: dict[str, object]) -> nn.Module:
    """Look ``name`` up in ``module`` and construct the model."""
    obj: object = module
    for part in name.split("."):
        if not hasattr(obj, part):
            classes, others = _candidates(module)
            close = difflib.get_close_matches(name, classes + others, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ModelError(f"no '{name}' in {shown}; it {_describe_names(module)}{hint}")
        obj = getattr(obj, part)
    label = f"{shown}:{name}"
    if isinstance(obj, nn.Module):
        if args:
            raise ModelError(
                f"{label} is a model instance, so --model-arg does not apply; "
                "remove --model-arg or name its class or a factory"
            )
        return obj
    if not callable(obj) or (isinstance(obj, type) and not _is_module_class(obj)):
        what = f"class {obj.__name__}" if isinstance(obj, type) else type(obj).__name__
        raise ModelError(
            f"{label} is not a torch.nn.Module subclass or a factory returning one (it is {what})"
        )
    try:
        result = obj(**args)
    except Exception as exc:
        raise ModelError(
            f"constructing {label}({_call_args(args)}) failed: {_exc_text(exc)} (check --model-arg)"
        ) from None
    if not isinstance(result, nn.Module):
        raise ModelError(
            f"{label} is not a torch.nn.Module subclass or a factory returning one "
            f"(it returned {type(result).__name__})"
        )
    return result


def _loaded(
    module: nn.Module,
    spec: str,
    name: str,
    kind: str,
    source: Path | None,
    domain: str | None = None,
) -> LoadedModel:
    """Bundle the result, reading and checking the model's ``mri_audit_input``."""
    domain = domain if domain is not None else getattr(module, "mri_audit_input", None)
    if domain is not None and domain not in DOMAINS:
        raise ModelError(f"{name}: mri_audit_input is {domain!r}; set it to 'image' or 'kspace'")
    return LoadedModel(module, spec, name, kind, source, None, domain)


def _load_program(spec: str, target: str, args: dict[str, object]) -> LoadedModel:
    """A model file that carries its code: a torch.export program or a TorchScript file."""
    path = Path(target)
    _require_file(path, "model file", "check the --model path")
    kind = program_kind(path) or "torchscript"
    what = "a torch.export program" if kind == "exported" else "TorchScript model"
    if args:
        raise ModelError(
            f"--model-arg does not apply to {what} {path.name}: its constructor already ran; "
            "remove --model-arg"
        )
    if kind == "exported":
        module, domain = load_exported(path, target)
    else:
        module, domain = load_torchscript(path, target), None
    loaded = _loaded(module, spec, path.name, kind, path.resolve(), domain)
    return loaded._replace(sources=(path.resolve(),))


def _path_state() -> tuple:
    """``sys.path`` with each folder's modification time: an install or removal changes it."""
    state = []
    for entry in sys.path:
        try:
            state.append((entry, os.stat(entry or ".").st_mtime_ns))
        except OSError:
            state.append((entry, None))
    return tuple(state)


@functools.lru_cache(maxsize=4)
def _distributions(path_state: tuple) -> Mapping[str, list[str]]:
    """Top-level module -> distributions, read once per state of ``sys.path`` (0.1 s a read)."""
    import importlib.metadata as metadata

    return metadata.packages_distributions()
