"""torch's zip archives: checked before torch reads them, loaded quietly, their pickles scanned.

Weights (``torch.save``), ``torch.export`` programs (``.pt2``) and TorchScript files are zip
archives, and every member carries the CRC-32 of its bytes. torch itself does not check it: a
byte changed in a tensor's storage loads silently as another model. :func:`check_archive` reads
every member once through :mod:`zipfile`, which checks each CRC-32, and refuses a damaged file
with one line naming it and its damaged member. A legacy (pre-zip) ``torch.save`` file carries no
checksum; it is left to the loader, as is any file that is not a zip archive.

:func:`torch_output` captures what torch logs and warns while it loads a file (``torch.export``
logs a whole traceback before it raises), so that a failure prints one line; ``-v`` shows it.

:func:`pickle_globals` lists the globals a pickle names, read statically (nothing runs), and
:func:`runs_code` tells which of them would run code when unpickled, so a checkpoint built to run
a command is refused as what it is, without a recipe that would load it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import pickletools
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from mri_audit.errors import ModelError

__all__ = [
    "Archive",
    "TorchOutput",
    "check_archive",
    "torch_output",
    "pickle_globals",
    "archive_pickle_globals",
    "runs_code",
]

logger = logging.getLogger(__name__)

ZIP_MAGIC = b"PK\x03\x04"
"""How a zip archive begins (torch reads a file as a zip archive exactly when it does)."""

_CHUNK = 1 << 20
_DOS_FOLDER = 0x10  # the MS-DOS "directory" bit of a member's external attributes
_FIX = "re-download or re-save it"


class Archive(NamedTuple):
    """The members of a checked zip archive.

    Attributes:
        names: the members' names, as stored (``archive/data.pkl``, ``archive/data/0``, ...).
    """

    names: tuple[str, ...]

    @property
    def leaves(self) -> set[str]:
        """The members' file names, without their folders."""
        return {name.rsplit("/", 1)[-1] for name in self.names}

    @property
    def pickled(self) -> bool:
        """Whether the archive's folder holds ``data.pkl`` (torch.save and TorchScript files)."""
        return any(name.count("/") == 1 and name.endswith("/data.pkl") for name in self.names)


def _member_problem(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if "CRC" in text:
        return "fails its CRC-32 check (the file was changed or truncated after it was saved)"
    return f"cannot be read ({text or type(exc).__name__}: the file was changed after it was saved)"


def check_archive(path: Path, what: str, shown: str) -> Archive | None:
    """Check every member of the zip archive ``path`` against its CRC-32, reading each fully.

    Args:
        path: the file.
        what: what the file is, for messages (``"weights file"``, ``"model file"``).
        shown: the path as the user gave it, for messages.

    Returns:
        The archive's members, or None when the file is not a zip archive (a legacy
        ``torch.save`` file, or no torch file at all: the loader says which).

    Raises:
        ModelError: a member fails its CRC-32 check or cannot be read, or the archive is cut
            short (its central directory, at its end, is missing or unreadable).
    """
    try:
        with path.open("rb") as f:
            if f.read(len(ZIP_MAGIC)) != ZIP_MAGIC:
                return None
    except OSError as exc:
        raise ModelError(f"cannot read {what} {shown} ({exc.strerror or exc})") from None
    try:
        archive = zipfile.ZipFile(path)
    except Exception as exc:  # anything zipfile cannot parse is a damaged archive
        text = " ".join(str(exc).split()) or type(exc).__name__
        detail = (
            "the zip directory at its end is missing: was a download or copy cut short?"
            if "not a zip file" in text
            else f"its zip directory cannot be read: {text}"
        )
        raise ModelError(
            f"cannot read {what} {shown}: it is truncated, corrupt or not a torch file (it "
            f"begins as a zip archive, but {detail}); {_FIX}"
        ) from None
    with archive:
        names = []
        for info in archive.infolist():
            folder = info.filename.endswith("/") or info.external_attr & _DOS_FOLDER
            if folder and (info.file_size or info.compress_size):
                # torch's zip reader reads a folder as empty: its tensor would be garbage
                raise ModelError(
                    f"{what} {shown} is damaged: its member {info.filename!r} is marked as a "
                    f"folder (the file was changed after it was saved); {_FIX}"
                )
            try:
                with archive.open(info) as member:
                    while member.read(_CHUNK):
                        pass
            except Exception as exc:  # BadZipFile (CRC-32, header), EOFError, zlib.error, ...
                raise ModelError(
                    f"{what} {shown} is damaged: its member {info.filename!r} "
                    f"{_member_problem(exc)}; {_FIX}"
                ) from None
            names.append(info.filename)
    logger.debug("%s %s: %d zip members pass their CRC-32 check", what, shown, len(names))
    return Archive(tuple(names))


@dataclass
class TorchOutput:
    """What torch logged and warned inside :func:`torch_output`."""

    records: list[logging.LogRecord] = field(default_factory=list)
    warned: list[warnings.WarningMessage] = field(default_factory=list)

    def error(self) -> BaseException | None:
        """The last exception torch logged with its traceback, if any."""
        found = [r.exc_info[1] for r in self.records if r.exc_info and r.exc_info[1]]
        return found[-1] if found else None


class _Keep(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__()
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def torch_output(target: str) -> Iterator[TorchOutput]:
    """Capture torch's log records and warnings inside the block instead of printing them.

    Every ``torch`` logger that prints (one with handlers, or one that does not propagate) gets
    a collecting handler instead for the block. Afterwards, what was captured is logged on
    this module's logger at INFO (shown with ``-v``).

    Args:
        target: the file being loaded, for the log lines.

    Yields:
        The captured records and warnings (filled when the block ends or raises).
    """
    out = TorchOutput()
    keep = _Keep(out.records)
    loggers = [logging.getLogger("torch")] + [
        log
        for name, log in list(logging.Logger.manager.loggerDict.items())
        if name.startswith("torch.") and isinstance(log, logging.Logger)
        and (log.handlers or not log.propagate)
    ]  # fmt: skip
    saved = [(log, log.handlers, log.propagate) for log in loggers]
    for log in loggers:
        log.handlers, log.propagate = [keep], False
    try:
        with warnings.catch_warnings(record=True) as caught:
            yield out
    finally:
        for log, handlers, propagate in saved:
            log.handlers, log.propagate = handlers, propagate
        out.warned.extend(caught)
        plain = logging.Formatter("%(levelname)s %(name)s: %(message)s")
        for record in out.records:
            logger.info("%s: torch logged while loading it: %s", target, plain.format(record))
        for warned in out.warned:
            logger.info("%s: torch warned while loading it: %s: %s", target,
                        warned.category.__name__, warned.message)  # fmt: skip


_MARK = object()


def pickle_globals(data: bytes) -> list[str]:
    """The globals (``module.name``) a pickle names, in order, read without running it.

    ``GLOBAL`` and ``INST`` name theirs inline; ``STACK_GLOBAL`` takes two strings from the stack,
    which is simulated (strings, memo puts and gets), so names built from memoized strings are
    found too. A malformed pickle yields the names found before the fault.

    Args:
        data: the pickle (a ``data.pkl`` member).

    Returns:
        The names, each once.
    """
    names: list[str] = []
    stack: list[object] = []
    memo: dict[object, object] = {}
    try:
        for op, arg, _ in pickletools.genops(io.BytesIO(data)):
            if op.name in ("GLOBAL", "INST"):
                module, _, qualname = str(arg).partition(" ")
                names.append(f"{module}.{qualname}")
                _simulate(stack, op, None)
            elif op.name == "STACK_GLOBAL":
                qualname = stack.pop() if stack else None
                module = stack.pop() if stack else None
                if isinstance(module, str) and isinstance(qualname, str):
                    names.append(f"{module}.{qualname}")
                stack.append(None)
            elif op.name == "MEMOIZE":
                memo[len(memo)] = stack[-1] if stack else None
            elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1] if stack else None
            elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(arg))
            elif op.name == "DUP":
                stack.append(stack[-1] if stack else None)
            else:
                _simulate(stack, op, arg if isinstance(arg, str) else None)
    except Exception as exc:  # a damaged or hostile pickle: what was found so far
        logger.debug("pickle scan stopped: %s", exc)
    return list(dict.fromkeys(names))


def _simulate(stack: list[object], op: pickletools.OpcodeInfo, value: str | None) -> None:
    """Apply an opcode's stack effect, pushing ``value`` (a string argument) or an opaque None."""
    before = op.stack_before
    if pickletools.markobject in before:
        while stack and stack.pop() is not _MARK:
            pass
        del stack[len(stack) - before.index(pickletools.markobject) :]
    elif before:
        del stack[len(stack) - len(before) :]
    for kind in op.stack_after:
        if kind is pickletools.markobject:
            stack.append(_MARK)
        else:
            stack.append(value)


def archive_pickle_globals(path: Path) -> list[str] | None:
    """The globals of a ``torch.save`` archive's ``data.pkl`` (None: not such an archive)."""
    try:
        with zipfile.ZipFile(path) as zf:
            name = next((n for n in zf.namelist() if n.endswith("/data.pkl")), None)
            return None if name is None else pickle_globals(zf.read(name))
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return None


# Callables that run a command or Python code, or reach any object of the interpreter, when a
# pickle calls them. A name is flagged when its module is in _CODE_MODULES (or below one), or
# when the (module, name) pair is listed in _CODE_CALLS.
_CODE_MODULES = ("subprocess", "_posixsubprocess", "_winapi", "asyncio.subprocess", "runpy",
                 "importlib", "code", "codeop", "pty", "ctypes", "_ctypes", "commands", "timeit",
                 "pdb", "bdb", "cProfile", "profile", "multiprocessing")  # fmt: skip
_SHELL = ("system", "popen", "startfile")
_SHELL_PREFIXES = ("exec", "spawn", "posix_spawn", "fork")
_BUILTINS = ("eval", "exec", "compile", "__import__", "getattr", "setattr", "delattr", "globals",
             "locals", "vars", "breakpoint", "open")  # fmt: skip
_CODE_CALLS: dict[str, tuple[str, ...]] = {
    "os": _SHELL,
    "posix": _SHELL,
    "nt": _SHELL,
    "builtins": _BUILTINS,
    "pickle": ("loads", "load", "Unpickler", "_loads", "_load", "_Unpickler"),
    "marshal": ("loads", "load"),
    "types": ("FunctionType", "CodeType", "LambdaType", "MethodType"),
    "operator": ("attrgetter", "methodcaller"),
    "platform": ("popen",),
    "webbrowser": ("open",),
    "torch": ("load",),
    "torch.serialization": ("load",),
    "numpy.testing._private.utils": ("runstring",),
}
_CODE_CALLS["__builtin__"] = _CODE_CALLS["builtins"]
_CODE_CALLS["_pickle"] = _CODE_CALLS["cPickle"] = _CODE_CALLS["dill"] = _CODE_CALLS["pickle"]


def runs_code(name: str) -> bool:
    """Whether the pickled global ``name`` (``module.name``) would run code when called.

    Args:
        name: e.g. ``"posix.system"``, ``"builtins.eval"``, ``"subprocess.Popen"``.

    Returns:
        True for a callable that runs a command or code (``os.system``, ``subprocess.*``,
        ``builtins.eval``, ``importlib.*``, ``pickle.loads``, ...), False for anything else.
    """
    parts = name.split(".")
    for i in range(1, len(parts)):
        module, attr = ".".join(parts[:i]), parts[i]
        if any(module == m or module.startswith(m + ".") for m in _CODE_MODULES):
            return True
        calls = _CODE_CALLS.get(module, ())
        if attr in calls or (calls is _SHELL and attr.startswith(_SHELL_PREFIXES)):
            return True
    return False
