"""Importing a model file (``path/to/net.py:Name``) as its own module.

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
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import re
import sys
import traceback
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mri_audit.errors import ModelError
from mri_audit.models.checkpoints import _exc_text, _one_line

__all__ = ["import_model_file"]

logger = logging.getLogger(__name__)


def import_model_file(path: Path, target: str) -> tuple[types.ModuleType, tuple[Path, ...]]:
    """Import a model file as its own module (see the module docstring).

    Args:
        path: the resolved ``.py`` file.
        target: the path as the user gave it, for messages.

    Returns:
        The module, and its source files: the file and every module imported from its folder.

    Raises:
        ModelError: the file cannot be imported (syntax error, an exception while it runs).
    """
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
    return module, tuple(sorted({path, *sources}))


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


def _files_under(folder: Path, names: set[str]) -> list[Path]:
    """The files of the modules ``names`` that lie in ``folder`` (or below it)."""
    out = []
    for n in names:
        f = getattr(sys.modules.get(n), "__file__", None)
        if f and Path(f).resolve().is_relative_to(folder):
            out.append(Path(f).resolve())
    return out
