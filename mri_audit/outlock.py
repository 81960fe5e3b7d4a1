"""One writer per output folder: an exclusive ``fcntl.flock`` on ``<out>/.mri-audit.lock``.

``run`` and ``harden`` hold the lock for their whole life, so a second process started on the
same ``--out`` (a second ``--resume``, a batch job started twice) is refused with one line naming
the process that holds it, instead of interleaving its records with the first one's.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from mri_audit.errors import UsageError

__all__ = ["LOCK_NAME", "hold_lock"]

LOCK_NAME = ".mri-audit.lock"


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        return "another process"
    return f"process {text}" if text else "another process"


@contextlib.contextmanager
def hold_lock(
    out: str | os.PathLike,
    command: str = "mri-audit",
    *,
    name: str = LOCK_NAME,
    label: str | None = None,
) -> Iterator[Path]:
    """Hold the exclusive lock of ``out`` (created if missing) for the ``with`` block.

    Args:
        out: the folder locked.
        command: what holds the lock (written into the lock file for a refused process).
        name: the lock file's name in ``out`` (one per output when a folder holds several).
        label: what the error calls the locked output (default: ``out``).

    Raises:
        UsageError: another process holds the lock (exit 2), naming its pid and host.
    """
    import fcntl

    out = Path(out)
    path = out / name
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise UsageError(f"cannot write to --out {out}: {err.strerror or err}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(
                f"{label or out} is in use by {_holder(path)}; wait for it to finish (or stop it) "
                "before running another command on this --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} on {socket.gethostname()} ({command})\n".encode())
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock
