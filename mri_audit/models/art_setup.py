"""The one place mri-audit imports ART (the Adversarial Robustness Toolbox).

Importing ART for the first time writes ``~/.art/config.json`` and a ``~/.art/data`` folder (its
``art/config.py`` reads ``os.path.expanduser("~")`` at import time), or ``/tmp/.art`` when the
home folder is read-only: files outside anything the user asked mri-audit to write. This module
imports ART with ``HOME`` pointed, for that import only, at mri-audit's cache folder
(``$XDG_CACHE_HOME/mri-audit/art``, else ``~/.cache/mri-audit/art``, else a private temporary
folder when those cannot be written), so ART's config and data folder land there; the
environment is restored exactly afterwards.

Every ART name mri-audit uses comes from here (``from mri_audit.models.art_setup import art`` or
one of
the classes below), never from ``import art`` directly: whichever module imports ART first, it
then goes through :func:`load_art`.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
import tempfile
import types
from pathlib import Path

__all__ = [
    "EvasionAttack",
    "LossGradientsMixin",
    "PyTorchEstimator",
    "art",
    "art_folder",
    "load_art",
]

logger = logging.getLogger(__name__)


def _usable(path: Path) -> bool:
    """Create ``path`` if needed; whether it is a folder this process can write."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError:
        return False
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def _private_temp() -> Path:
    """``<tmp>/mri-audit-<uid>/art`` if it is ours alone, else a fresh temporary folder."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    base = Path(tempfile.gettempdir()) / f"mri-audit-{uid}"
    try:
        base.mkdir(mode=0o700, exist_ok=True)
        info = base.lstat()
        if stat.S_ISDIR(info.st_mode) and info.st_uid == uid and _usable(base / "art"):
            return base / "art"
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix="mri-audit-art-"))


def art_folder() -> Path:
    """Where ART's config and data folder go: ``$XDG_CACHE_HOME/mri-audit/art`` (an absolute
    ``XDG_CACHE_HOME`` only, as the XDG spec says), else ``~/.cache/mri-audit/art``, else a
    private temporary folder when neither can be written."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    cache = Path(xdg) if os.path.isabs(xdg) else Path(os.path.expanduser("~")) / ".cache"
    folder = cache / "mri-audit" / "art"
    if _usable(folder):
        return folder
    fallback = _private_temp()
    logger.info("cache folder %s cannot be written; ART's files go to %s", folder, fallback)
    return fallback


def _write_config(home: Path, data: Path) -> None:
    """Pre-write ART's config so its import uses ``data`` (not ``<home>/.art/data``)."""
    config = home / ".art" / "config.json"
    try:
        config.parent.mkdir(parents=True, exist_ok=True)
        current = json.loads(config.read_text(encoding="utf-8")) if config.exists() else None
        if current != {"ART_DATA_PATH": str(data)}:
            config.write_text(json.dumps({"ART_DATA_PATH": str(data)}, indent=4), "utf-8")
    except (OSError, ValueError) as err:
        logger.debug("cannot write ART's config %s: %s", config, err)


def load_art() -> types.ModuleType:
    """Import ART (once) with its config and data folder in :func:`art_folder`.

    If ART was already imported by someone else, only its data folder is moved there.

    Returns:
        The ``art`` package.
    """
    if "art.config" in sys.modules:
        import art

        _set_data_path(art)
        return art
    home = art_folder()
    _write_config(home, home / "data")
    saved = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    try:
        import art
    finally:
        if saved is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = saved
    _set_data_path(art, home / "data")
    return art


def _set_data_path(art: types.ModuleType, data: Path | None = None) -> None:
    data = data or art_folder() / "data"
    try:
        if getattr(art.config, "ART_DATA_PATH", None) != str(data):
            art.config.set_data_path(str(data))
    except OSError as err:
        logger.debug("cannot set ART's data path to %s: %s", data, err)
    logger.debug("ART's data path: %s", getattr(art.config, "ART_DATA_PATH", None))


art = load_art()

from art.attacks.attack import EvasionAttack  # noqa: E402 - only after load_art()
from art.estimators.estimator import LossGradientsMixin  # noqa: E402
from art.estimators.pytorch import PyTorchEstimator  # noqa: E402
