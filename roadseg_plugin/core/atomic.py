"""Temporary files and folders beside their destination, for writes that are renamed into place when done.

Every temporary name says whose it is: `.<output name>.<pid>-<host>.<random><suffix>` (suffix
`.tmp` unless the writer needs another), where `pid` is the writing process and `host` a short
tag of the machine's name. A run killed outright (SIGKILL, power cut, out of memory) cannot
delete its temporaries, so the next run for the same output calls `remove_stale_temporaries`,
which deletes those of this machine whose process is gone. Temporaries of live processes, of
other machines (a shared network folder) and anything not named this way are never touched.

`tempfile.mkstemp` creates files readable by their owner only; a finished output must get the
usual permissions (0666 minus the umask) like any file the user writes, so that colleagues and
the QGIS server account can read the model or mask a run produced.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

_UMASK = os.umask(0)
os.umask(_UMASK)
HOST_TAG = hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]
_RANDOM = r"[a-z0-9_]{8}"  # tempfile's random part


def _prefix(dst: Path, pid: int | None = None) -> str:
    return f".{dst.name}.{os.getpid() if pid is None else pid}-{HOST_TAG}."


def temporary_sibling(dst: Path, suffix: str = ".tmp") -> Path:
    """An empty file in `dst`'s folder, named after it and this process, with ordinary permissions.

    Raises:
        OSError: the folder cannot be created or written.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(dst), suffix=suffix, dir=dst.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)
    return Path(tmp)


def temporary_folder(dst: Path) -> Path:
    """An empty folder in `dst`'s folder, named after it and this process (removed by the caller).

    Raises:
        OSError: the folder cannot be written.
    """
    return Path(tempfile.mkdtemp(prefix=_prefix(dst), suffix=".tmp", dir=dst.parent))


def process_alive(pid: int) -> bool:
    """True when process `pid` runs on this machine (or cannot be checked: never guess "dead")."""
    if pid <= 0:
        return True
    if pid == os.getpid():
        return True
    if sys.platform == "win32":  # os.kill would terminate it there
        return _windows_process_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, under another user
        return True
    return True


def _windows_process_alive(pid: int) -> bool:
    import ctypes

    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return kernel32.GetLastError() != 87  # ERROR_INVALID_PARAMETER: no such process
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def stale_temporaries(dst: Path) -> list[Path]:
    """The temporaries of `dst` (files or folders beside it) left by dead processes of this machine."""
    pattern = re.compile(re.escape(f".{dst.name}.") + r"(\d+)-" + re.escape(HOST_TAG) + r"\." + _RANDOM
                         + r"(\.[A-Za-z0-9_.]+)?")
    try:
        entries = list(os.scandir(dst.parent))
    except OSError:
        return []
    stale = []
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match and not process_alive(int(match.group(1))):
            stale.append(Path(entry.path))
    return sorted(stale)


def remove_stale_temporaries(dst: str | os.PathLike) -> list[Path]:
    """Delete what `stale_temporaries(dst)` finds; returns the paths removed.

    Failures (a file locked elsewhere, no permission) are logged and skipped: a stale temporary
    wastes space but never harms the run.
    """
    removed = []
    for path in stale_temporaries(Path(dst)):
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError as exc:
            log.warning("%s: cannot remove this stale temporary (%s)", path, exc.strerror or exc)
            continue
        log.info("%s: removed a temporary left by a run that was killed", path)
        removed.append(path)
    return removed


def dataset_file(name: str | os.PathLike) -> Path | None:
    """The local file behind a raster name: a path, or the file of `DRIVER:file:layer` names.

    The file part may hold colons itself (GPKG:C:\\data\\r.gpkg:table), so the longest part
    after the driver that names an existing file wins.
    """
    text = os.fspath(name)
    if os.path.exists(text):
        return Path(text)
    driver, sep, rest = text.partition(":")
    if sep and driver.isupper():  # GPKG:/data/r.gpkg:layer, NETCDF:"f.nc":var
        parts = rest.split(":")
        for end in range(len(parts), 0, -1):
            candidate = ":".join(parts[:end]).strip('"')
            if candidate and os.path.exists(candidate):
                return Path(candidate)
    return None


def same_file(a: Path, b: Path) -> bool:
    """True when `a` and `b` are one file: the same path after `..` and symlinks, or hard links."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
