"""User-facing errors: each carries one clear line and a documented exit status.

Library code raises these; the CLI prints ``Error: <message>`` and exits with ``exit_code``.
Any other exception is a bug in mri-audit and keeps its traceback.
"""

from __future__ import annotations


class MriAuditError(Exception):
    """An error caused by the user's input, reported as one line with a non-zero exit."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        # Keep the message on one line whatever the cause text holds.
        super().__init__(" ".join(str(message).split()))


class UsageError(MriAuditError):
    """Bad option values or a bad configuration (exit 2, as click's own usage errors)."""

    exit_code = 2


class DataError(MriAuditError):
    """Missing, unreadable or malformed data (exit 4)."""

    exit_code = 4


class ModelError(MriAuditError):
    """A model that cannot be loaded, or that breaks the model contract (exit 5)."""

    exit_code = 5


class DeviceError(MriAuditError):
    """A device that is not available, or that ran out of memory (exit 6)."""

    exit_code = 6


class OutputError(MriAuditError):
    """The output folder cannot be written: read-only, disk full, an I/O error (exit 7)."""

    exit_code = 7


def write_failure(path: object, err: OSError, saved: str = "") -> OutputError:
    """One line for an ``OSError`` while writing ``path`` (disk full, read-only, ...)."""
    import errno

    reason = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
    }.get(err.errno, err.strerror or str(err))
    tail = f"; {saved}" if saved else ""
    return OutputError(f"cannot write {path}: {reason}{tail}")
