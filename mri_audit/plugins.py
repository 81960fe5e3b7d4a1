"""Loading user models: ``file.py:Name``, ``package.module:Name`` or a TorchScript file.

Every failure becomes a one-line :class:`~mri_audit.errors.ModelError` naming the cause and the
fix; no traceback reaches the user.

How a model file is imported (``path/to/net.py:Net``):

- The file's folder becomes a synthetic package ``mri_audit_user_<sha1(folder)[:12]>`` (a module
  object with ``__path__ = [folder]``, registered in :data:`sys.modules`), and the file is loaded
  as its submodule ``<package>.<stem>``. Two files called ``net.py`` in different folders therefore
  get different module names and never collide, and relative imports of siblings
  (``from . import helper``, ``from .helper import Block``) work.
- A plain ``import helper`` of a sibling also works: while the model file executes (and only
  then), a finder at the *end* of :data:`sys.meta_path` resolves top-level names that exist as
  ``helper.py`` or ``helper/__init__.py`` in the model's folder and that no other finder found.
  Such siblings are removed from :data:`sys.modules` again once the file has run (the model keeps
  its reference), so another folder's ``helper.py`` is found afresh. An installed module of the
  same name wins; a lazy ``import helper`` inside ``forward`` is not resolved. Prefer relative
  imports when in doubt.
- :data:`sys.path` is never modified.

A model declares its input domain with a class attribute ``mri_audit_input = "image"`` or
``"kspace"``. TorchScript keeps it only when it is annotated ``Final[str]`` or set in
``__init__``; otherwise the domain of a TorchScript model comes from ``--input``.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import re
import sys
import traceback
import types
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from mri_audit.errors import ModelError
from mri_audit.weights import (
    _exc_text,
    _names,
    _one_line,
    _require_file,
    _zip_leaves,
    apply_weights,
    load_state_dict,
    sha256_file,
)

__all__ = [
    "LoadedModel",
    "parse_model_args",
    "load_model",
    "load_state_dict",
    "apply_weights",
    "sha256_file",
    "imported_packages",
]

logger = logging.getLogger(__name__)

TORCHSCRIPT_SUFFIXES = (".pt", ".ts", ".pth")
INPUT_DOMAINS = ("image", "kspace")
_MAX_LISTED = 10
_MAX_KEYS = 5


class LoadedModel(NamedTuple):
    """A user model, constructed and (optionally) loaded with weights.

    Attributes:
        module: the model, on the CPU.
        spec: the ``--model`` value as the user gave it.
        name: display name, e.g. ``"unet.py:UNet"`` or ``"model.pt"`` for TorchScript.
        kind: ``"file"``, ``"module"`` or ``"torchscript"``.
        source_path: the ``.py`` or TorchScript file (``None`` for an installed module).
        weights_path: the weights file, if any.
        input_domain: the model's ``mri_audit_input`` (``"image"``/``"kspace"``), None if unset.
        sources: the model's source files: the file and every module imported from its folder
            while it loaded (a ``file.py:Name``), the package's loaded modules (a
            ``package.module:Name``) or the TorchScript file.
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
    spec: str,
    *,
    model_args: Mapping[str, object] | None = None,
    weights: str | Path | None = None,
) -> LoadedModel:
    """Load a user model from ``--model``, construct it and load its weights.

    Args:
        spec: ``path/to/file.py:Name``, ``package.module:Name`` or a TorchScript file
            (``.pt``/``.ts``/``.pth``, or any existing file given without ``:Name``).
        model_args: keyword arguments for ``Name`` (see :func:`parse_model_args`).
        weights: a state dict file for :func:`load_state_dict`, loaded with ``strict=True``.

    Returns:
        The loaded model (in eval mode is left to the caller; the module is on the CPU).

    Raises:
        ModelError: anything that prevents loading, as one line naming the cause and the fix.
    """
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
    elif suffix in TORCHSCRIPT_SUFFIXES or (not name and Path(target).is_file()):
        if name:
            raise ModelError(
                f"--model {spec}: a TorchScript file takes no ':Name'; pass just {target} "
                f"(or, for weights, --model file.py:Name --weights {target})"
            )
        loaded = _load_torchscript(spec, target, args)
    elif _is_module_path(target):
        if not name:
            raise ModelError(
                f"--model {spec} needs a class or factory name: {spec}:Name "
                "(or give a file.py:Name or a TorchScript file)"
            )
        loaded = _load_from_module(spec, target, name, args)
    else:
        raise ModelError(
            f"--model {spec!r} is not a file.py:Name, package.module:Name or TorchScript file "
            "(check the spelling and that the file exists)"
        )

    if weights is not None:
        wpath = Path(weights)
        apply_weights(loaded.module, wpath, loaded.name)
        loaded = loaded._replace(weights_path=wpath)
    logger.debug("loaded %s model %s, weights %s", loaded.kind, loaded.name, loaded.weights_path)
    return loaded


class _SiblingFinder(importlib.abc.MetaPathFinder):
    """Resolve plain ``import helper`` to ``helper.py`` in one folder (see module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.loaded: list[str] = []

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if "." in fullname or path is not None:
            return None
        if not (
            (self.folder / f"{fullname}.py").is_file()
            or (self.folder / fullname / "__init__.py").is_file()
        ):
            return None
        found = importlib.machinery.PathFinder.find_spec(fullname, [str(self.folder)])
        if found is not None:
            logger.debug("resolving 'import %s' to %s", fullname, found.origin)
            self.loaded.append(fullname)
        return found


@contextlib.contextmanager
def _sibling_imports(folder: Path) -> Iterator[None]:
    finder = _SiblingFinder(folder)
    sys.meta_path.append(finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for top in finder.loaded:
            for mod_name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
                sys.modules.pop(mod_name, None)


def _folder_package(folder: Path) -> str:
    """Register (once) a synthetic package for ``folder`` and return its name."""
    pkg_name = "mri_audit_user_" + hashlib.sha1(str(folder).encode()).hexdigest()[:12]
    if pkg_name not in sys.modules:
        pkg_spec = importlib.machinery.ModuleSpec(pkg_name, None, is_package=True)
        pkg_spec.submodule_search_locations = [str(folder)]
        package = importlib.util.module_from_spec(pkg_spec)
        package.__path__ = [str(folder)]
        sys.modules[pkg_name] = package
    return pkg_name


def _error_location(exc: BaseException, path: Path) -> str:
    """``" (line N)"`` for the model file's frame, plus the innermost other user frame."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "<frozen" not in f.filename]
    own = [f for f in frames if f.filename and Path(f.filename).resolve() == path]
    parts = []
    if own:
        parts.append(f"line {own[-1].lineno}")
    if frames and (not own or frames[-1] is not own[-1]):
        parts.append(f"in {Path(frames[-1].filename).name} line {frames[-1].lineno}")
    return f" ({', '.join(parts)})" if parts else ""


def _syntax_error(exc: SyntaxError, shown: str, path: Path) -> ModelError:
    where = shown
    if exc.filename and Path(exc.filename).resolve() != path:
        where = f"{exc.filename} (imported by {shown})"
    return ModelError(f"syntax error in model file {where} line {exc.lineno}: {_one_line(exc.msg)}")


def _load_from_file(spec: str, target: str, name: str, args: dict[str, object]) -> LoadedModel:
    path = Path(target)
    _require_file(path, "model file", "check the path before ':'")
    path = path.resolve()
    pkg_name = _folder_package(path.parent)
    stem = re.sub(r"\W", "_", path.stem)
    if stem != path.stem or not stem.isidentifier():
        stem = f"m_{stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    mod_name = f"{pkg_name}.{stem}"
    mod_spec = importlib.util.spec_from_file_location(mod_name, path)
    if mod_spec is None or mod_spec.loader is None:
        raise ModelError(f"cannot load model file {target} as Python (is it a .py file?)")
    module = importlib.util.module_from_spec(mod_spec)
    before = set(sys.modules)
    sys.modules[mod_name] = module
    try:
        with _sibling_imports(path.parent):
            mod_spec.loader.exec_module(module)
            sources = _files_under(path.parent, set(sys.modules) - before)
    except SyntaxError as exc:
        sys.modules.pop(mod_name, None)
        raise _syntax_error(exc, target, path) from None
    except (Exception, SystemExit) as exc:
        sys.modules.pop(mod_name, None)
        raise ModelError(
            f"error importing model file {target}{_error_location(exc, path)}: {_exc_text(exc)}"
        ) from None
    logger.debug("imported model file %s as module %s", path, mod_name)
    shown = path.name
    if not name:
        raise ModelError(
            f"--model {spec} needs a class or factory name: {target}:Name "
            f"({shown} {_describe_names(module)})"
        )
    loaded = _loaded(_build(module, name, shown, args), spec, f"{shown}:{name}", "file", path)
    return loaded._replace(sources=tuple(sorted({path, *sources})))


def _files_under(folder: Path, names: set[str]) -> list[Path]:
    """The files of the modules ``names`` that lie in ``folder`` (or below it)."""
    out = []
    for n in names:
        f = getattr(sys.modules.get(n), "__file__", None)
        if f and Path(f).resolve().is_relative_to(folder):
            out.append(Path(f).resolve())
    return out


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
    dists = metadata.packages_distributions()
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


def _loaded(module: nn.Module, spec: str, name: str, kind: str, source: Path | None) -> LoadedModel:
    """Bundle the result, reading and checking the model's ``mri_audit_input``."""
    domain = getattr(module, "mri_audit_input", None)
    if domain is not None and domain not in INPUT_DOMAINS:
        raise ModelError(f"{name}: mri_audit_input is {domain!r}; set it to 'image' or 'kspace'")
    return LoadedModel(module, spec, name, kind, source, None, domain)


def _load_torchscript(spec: str, target: str, args: dict[str, object]) -> LoadedModel:
    path = Path(target)
    _require_file(path, "model file", "check the --model path")
    if args:
        raise ModelError(
            f"--model-arg does not apply to TorchScript model {path.name}: its constructor "
            "already ran; remove --model-arg"
        )
    leaves = _zip_leaves(path)
    if "data.pkl" in leaves and "constants.pkl" not in leaves:
        raise ModelError(
            f"{target} is not TorchScript: it is a torch.save file (weights or a checkpoint); "
            f"use --model file.py:Name --weights {target}"
        )
    try:
        with warnings.catch_warnings():  # TorchScript is a supported input, deprecated or not
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise ModelError(
            f"cannot load {target} as TorchScript ({_exc_text(exc, True)}); "
            f"save a model with torch.jit.script(model).save(path), or for weights use "
            f"--model file.py:Name --weights {target}"
        ) from None
    loaded = _loaded(module, spec, path.name, "torchscript", path.resolve())
    return loaded._replace(sources=(path.resolve(),))
