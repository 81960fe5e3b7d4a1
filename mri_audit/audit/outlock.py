"""One writer per output folder: an exclusive ``fcntl.flock`` on ``<out>/.mri-audit.lock``.

``run`` and ``harden`` hold the lock for their whole life, so a second process started on the
same ``--out`` (a second ``--resume``, a batch job started twice) is refused with one line naming
the process that holds it, instead of interleaving its records with the first one's.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from mri_audit.errors import OutputError, UsageError, write_failure

__all__ = ["LOCK_NAME", "hold_lock"]

LOCK_NAME = ".mri-audit.lock"

logger = logging.getLogger(__name__)


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
    out = Path(out)
    path = out / name
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no flock
        logger.warning(
            "cannot lock %s on this system; make sure one process at a time uses it", out
        )
        yield path
        return
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
        except OSError as err:  # a file system without locks (NFS without lockd, some Lustre)
            if err.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise OutputError(f"cannot lock {path}: {err.strerror or err}") from None
            logger.warning(
                "the file system of %s does not support locks (%s); make sure one process at "
                "a time uses it",
                out,
                err.strerror,
            )
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} on {socket.gethostname()} ({command})\n".encode())
        except OSError as err:
            raise write_failure(path, err) from None
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock
