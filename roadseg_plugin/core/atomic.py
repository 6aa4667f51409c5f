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


NAME_TAG_BYTES = 100  # longer output names are shortened in temporary names (a name holds at most 255 bytes)


def name_tag(dst: Path) -> str:
    """`dst`'s name, or for a long one its start and a hash: temporaries of a 240-byte output name
    must still fit in a file name."""
    name = dst.name
    if len(os.fsencode(name)) <= NAME_TAG_BYTES:
        return name
    raw = os.fsencode(name)
    return raw[:NAME_TAG_BYTES - 12].decode("utf-8", "ignore") + "~" + hashlib.sha1(raw).hexdigest()[:10]


def _prefix(dst: Path, pid: int | None = None) -> str:
    return f".{name_tag(dst)}.{os.getpid() if pid is None else pid}-{HOST_TAG}."


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
    pattern = re.compile(re.escape(f".{name_tag(dst)}.") + r"(\d+)-" + re.escape(HOST_TAG) + r"\." + _RANDOM
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


# ------------------------------------------------------------------ which files a name reads

_DRIVER_PREFIX = re.compile(r"([A-Za-z][A-Za-z0-9_]+):(.+)", re.S)  # 2+ characters: never a drive letter
_ARCHIVES = ("/vsizip/", "/vsigzip/", "/vsitar/", "/vsi7z/", "/vsirar/", "/vsicached?/", "/vsisparse/")
_VRT_SOURCES = ("SourceFilename", "SourceDataset", "SourceFilenameOrDataset", "OverviewDataset")
_MAX_DEPTH = 16  # VRTs of VRTs...: deeper nesting is not followed (GDAL itself stops at a few levels)


def dataset_files(name: str | os.PathLike) -> list[Path]:
    """Every local file a GDAL dataset name reads: the one rule for "is this an input?".

    Understood: plain paths; `DRIVER:` prefixes in any case with the file anywhere after them
    (`GPKG:r.gpkg:table`, `gpkg:r.gpkg:table`, `GTIFF_DIR:1:in.tif`, `NETCDF:"f.nc":var`);
    `vrt://file?options`; `/vsizip/`, `/vsigzip/`, `/vsitar/`, `/vsisubfile/` ... over a local
    file; VRT files (and VRT XML given as the name) with their sources, followed recursively
    (relative sources against the VRT's folder). Remote names (`/vsicurl/`, `https://`, ...) and
    `/vsimem/` give nothing local.
    """
    found: dict[str, Path] = {}
    _collect(os.fspath(name), Path.cwd(), found, 0)
    if _is_file(os.fspath(name)):
        for extra in _gdal_file_list(os.fspath(name)):
            _collect(extra, Path.cwd(), found, 1)
    return list(found.values())


def _gdal_file_list(name: str) -> list[str]:
    """The files GDAL itself says the dataset uses (sidecars: .aux.xml, world files, .ovr, .msk);
    empty when rasterio is missing or the name does not open as a raster."""
    if name.lstrip().startswith("<") or len(name) > 4096:
        return []
    try:
        import rasterio

        with rasterio.Env(CPL_LOG="/dev/null" if os.name == "posix" else "NUL"), rasterio.open(name) as src:
            return [f for f in src.files if not f.startswith("/vsi")]
    except Exception:  # noqa: BLE001 - anything that does not open is judged by its name alone
        return []


def _collect(text: str, base: Path, found: dict[str, Path], depth: int) -> None:
    text = text.strip().strip('"')
    if depth > _MAX_DEPTH or not text:
        return
    if text.lstrip().startswith("<VRTDataset"):
        _vrt_sources(text, base, found, depth)
        return
    path = text if os.path.isabs(text) else os.path.join(base, text)
    if _is_file(path):
        key = os.path.realpath(path)
        if key not in found:
            found[key] = Path(path)
            if _looks_like_vrt(path):
                try:
                    with open(path, "rb") as fh:
                        xml = fh.read(64 << 20).decode("utf-8", "replace")
                except OSError:
                    return
                _vrt_sources(xml, Path(path).parent, found, depth)
        return
    lower = text.lower()
    if lower.startswith("vrt://"):
        _collect(text[6:].split("?", 1)[0], base, found, depth + 1)
    elif lower.startswith("/vsisubfile/"):  # /vsisubfile/offset_size,filename
        _collect(text[12:].split(",", 1)[-1], base, found, depth + 1)
    elif lower.startswith("/vsicrypt/"):  # /vsicrypt/key=...,file=filename
        _collect(text.split("file=", 1)[-1] if "file=" in text else "", base, found, depth + 1)
    elif lower.startswith(_ARCHIVES) or lower.startswith("/vsi") and not lower.startswith("/vsimem/"):
        inner = text[text.index("/", 1) + 1:]
        if inner.startswith("{") and "}" in inner:  # /vsizip/{path with .zip inside}/file
            _collect(inner[1:inner.index("}")], base, found, depth + 1)
        else:
            _longest_prefix(inner, "/", base, found, depth)
    elif match := _DRIVER_PREFIX.fullmatch(text):
        _longest_prefix(match.group(2), ":", base, found, depth)


def _longest_prefix(rest: str, sep: str, base: Path, found: dict[str, Path], depth: int) -> None:
    """The longest run of `sep`-separated parts of `rest` that names a file (or a dataset name)."""
    parts = rest.split(sep)
    spans = sorted(((i, j) for i in range(len(parts)) for j in range(i + 1, len(parts) + 1)),
                   key=lambda ij: ij[0] - ij[1])
    for i, j in spans:
        candidate = sep.join(parts[i:j]).strip().strip('"')
        if candidate and (_is_file(candidate if os.path.isabs(candidate) else os.path.join(base, candidate))
                          or candidate.lower().startswith(("/vsi", "vrt://"))):
            _collect(candidate, base, found, depth + 1)
            return


def _is_file(path: str) -> bool:
    try:
        return os.path.isfile(path)
    except (OSError, ValueError):  # a name too long, or with NUL
        return False


def _looks_like_vrt(path: str) -> bool:
    if path.lower().endswith(".vrt"):
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(64).lstrip().startswith(b"<VRTDataset")
    except OSError:
        return False


def _vrt_sources(xml: str, folder: Path, found: dict[str, Path], depth: int) -> None:
    import xml.etree.ElementTree as ElementTree

    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return
    for element in root.iter():
        if element.tag in _VRT_SOURCES and element.text:
            relative = element.get("relativeToVRT", "0") == "1" or element.get("relativetoVRT", "0") == "1"
            _collect(element.text, folder if relative else Path.cwd(), found, depth + 1)


def same_file(a: Path, b: Path) -> bool:
    """True when `a` and `b` are one file: the same path after `..` and symlinks, or hard links."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def reads_file(name: str | os.PathLike, path: str | os.PathLike) -> Path | None:
    """The file of dataset `name` (see `dataset_files`) that `path` is, or None."""
    return next((f for f in dataset_files(name) if same_file(Path(path), f)), None)
