"""Temporary files beside their destination, for writes that are renamed into place when done.

`tempfile.mkstemp` creates files readable by their owner only; a finished output must get the
usual permissions (0666 minus the umask) like any file the user writes, so that colleagues and
the QGIS server account can read the model or mask a run produced.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


def temporary_sibling(dst: Path, suffix: str = ".tmp") -> Path:
    """An empty file in `dst`'s folder, named after it, with ordinary file permissions.

    Raises:
        OSError: the folder cannot be created or written.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=suffix, dir=dst.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)
    return Path(tmp)
