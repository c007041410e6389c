"""The errors a user can act on: each is printed by the command line as one line, ``error: ...``.

:class:`UserError` names the file or key at fault and the fix; :class:`DiskFullError` a full disk;
:class:`UndecodableImage` an image file that cannot be decoded.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path


class UserError(Exception):
    """An error caused by the user's input (file, key, value). Printed as one line by the CLI."""


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(UserError):
    """No space left (ENOSPC) or quota exceeded (EDQUOT) while writing ``path``."""

    def __init__(self, path, err: int = errno.ENOSPC):
        self.path, self.errno = Path(path), err
        super().__init__(disk_full_message(path, err))


def disk_full_message(path, err: int = errno.ENOSPC) -> str:
    return f"{path}: disk full ({os.strerror(err)}); free space and re-run"


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def _full_after_write_error(exc: BaseException, folder) -> bool:
    """torch.save reports ENOSPC as a RuntimeError ('file write failed', 'iostream error', 'unexpected
    pos'): on a RuntimeError while writing, a folder with under 1 MiB free is taken as full."""
    if not isinstance(exc, RuntimeError):
        return False
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < (1 << 20)


class UndecodableImage(UserError):
    """An image file that cannot be decoded; ``reason`` says why (without advice)."""

    def __init__(self, path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: cannot decode image ({reason}); "
                         "replace or remove the file, or set skip_bad_files: true")
