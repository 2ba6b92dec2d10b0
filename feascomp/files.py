"""Writing files so that a failure never leaves a partial one."""
from __future__ import annotations

import os
import tempfile

from .errors import FeascompError


def atomic_write(path: str, write) -> None:
    """Call write(binary file) on a temporary file in path's folder, fsync it, then rename it
    over path: a failure never leaves a partial file."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(folder):
        raise FeascompError(f"cannot write {path}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=".feascomp-", suffix=os.path.splitext(path)[1], dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
