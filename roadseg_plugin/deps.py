"""Which Python packages RoadSeg needs, which are missing, and the command that installs them.

QGIS ships its own Python, so the packages RoadSeg needs (torch, rasterio, ...) are often absent
inside QGIS even when they are installed elsewhere. Nothing here imports those packages: the
check uses `importlib.util.find_spec`, so the plugin loads and can tell the user what to do.
Neither QGIS nor Qt is imported either; the dialog and the Processing algorithms show
`dependency_message()` themselves.
"""
from __future__ import annotations

import ctypes
import importlib
import importlib.util
import logging
import os
import shlex
import shutil
import sys
import sysconfig
from pathlib import Path

log = logging.getLogger(__name__)

# import name -> pip requirement; the pins match requirements.txt
REQUIRED: dict[str, str] = {
    "numpy": "numpy<2",
    "torch": "torch==2.13.0",
    "rasterio": "rasterio>=1.3",
    "geopandas": "geopandas>=0.14",
    "shapely": "shapely>=2.0",
    "pyogrio": "pyogrio>=0.7",
    "skimage": "scikit-image>=0.22",
    "scipy": "scipy>=1.11",
    "networkx": "networkx>=3.2",
    "sknw": "sknw>=0.15",
    "imageio": "imageio>=2.31",
    "matplotlib": "matplotlib>=3.7",
    "tqdm": "tqdm>=4.66",
}
# Faster CPU inference when present; RoadSeg works without it.
OPTIONAL: dict[str, str] = {"onnxruntime": "onnxruntime>=1.17", "onnx": "onnx>=1.16"}  # onnx reads the model metadata


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken parent package or a module with __spec__ None
        return False


def missing_dependencies() -> list[str]:
    """Import names of the required packages that this Python cannot import (empty when all are there)."""
    return [name for name in REQUIRED if not _installed(name)]


def missing_optional() -> list[str]:
    """Import names of the optional packages that are absent (they only make things faster)."""
    return [name for name in OPTIONAL if not _installed(name)]


def python_executable() -> str:
    """The Python interpreter QGIS (or this process) runs, as a path a shell can call.

    Inside QGIS `sys.executable` is often the QGIS program itself (`/usr/bin/qgis`,
    `qgis-bin.exe`, `QGIS.app/Contents/MacOS/QGIS`), which cannot run `-m pip`; the interpreter
    of the same installation is then looked up beside it.
    """
    exe = sys.executable or ""
    if Path(exe).name.lower().startswith("python"):
        return exe
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    prefix = Path(sys.exec_prefix)
    candidates = [
        prefix / "python.exe", prefix / "python3.exe",  # OSGeo4W / standalone Windows installers
        prefix / "bin" / f"python{version}", prefix / "bin" / "python3",  # Linux, macOS bundles
    ]
    if exe:
        candidates += [Path(exe).parent / "python3", Path(exe).parent / "bin" / "python3"]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(f"python{version}") or shutil.which("python3") or "python3"


def _quote(arg: str) -> str:
    if os.name == "nt":
        return f'"{arg}"' if any(c in arg for c in ' <>&|^') else arg
    return shlex.quote(arg)


def install_command(packages: list[str] | None = None) -> str:
    """The shell command that installs `packages` (import names; default: the missing ones) for this Python.

    Example: `/usr/bin/python3 -m pip install 'numpy<2' 'torch==2.13.0' scikit-image>=0.22`.
    numpy is always pinned below 2 because QGIS's own GDAL bindings are built against numpy 1.
    """
    names = missing_dependencies() if packages is None else list(packages)
    wanted = {**REQUIRED, **OPTIONAL}
    reqs = [wanted.get(name, name) for name in names]
    if reqs and REQUIRED["numpy"] not in reqs:
        reqs.insert(0, REQUIRED["numpy"])
    return " ".join([_quote(python_executable()), "-m", "pip", "install", *(_quote(r) for r in reqs)])


def _externally_managed() -> bool:
    """True for a distribution Python (Debian, Ubuntu) whose pip refuses system-wide installs (PEP 668)."""
    if sys.prefix != sys.base_prefix:  # a virtual environment is never externally managed
        return False
    stdlib = sysconfig.get_paths().get("stdlib", "")
    return bool(stdlib) and (Path(stdlib) / "EXTERNALLY-MANAGED").is_file()


def dependency_message() -> str:
    """One user-facing message: what is missing and the exact command to run; empty when nothing is."""
    missing = missing_dependencies()
    if not missing:
        return ""
    pips = ", ".join(REQUIRED[name].split("<")[0].split(">")[0].split("=")[0] for name in missing)
    lines = [
        f"RoadSeg needs Python packages that QGIS's Python ({python_executable()}) cannot import: {pips}.",
        "Install them with this command (in a terminal; on Windows the OSGeo4W Shell), then restart QGIS:",
        f"    {install_command(missing)}",
    ]
    if _externally_managed():
        lines.append("If pip answers 'externally-managed-environment', add --user --break-system-packages "
                     "or see docs/QGIS.md for the virtual-environment route.")
    return "\n".join(lines)


# Packages whose pip wheels bundle their own GEOS / GDAL / PROJ / image libraries (see below).
NATIVE_PACKAGES = ("shapely", "pyproj", "rasterio", "pyogrio", "PIL")
_QGIS_GLOBAL_SYMBOLS = ("GEOSversion", "GDALVersionInfo", "proj_info")


def _qgis_libraries_are_global() -> bool:
    """True inside the QGIS program or qgis_process: GEOS, GDAL and PROJ are in the global symbol scope."""
    try:
        scope = ctypes.CDLL(None)
    except OSError:
        return False
    return any(hasattr(scope, symbol) for symbol in _QGIS_GLOBAL_SYMBOLS)


def isolate_native_libraries(packages: tuple[str, ...] = NATIVE_PACKAGES) -> list[str]:
    """Import the compiled parts of shapely, pyproj, rasterio, pyogrio and Pillow so that they use
    the libraries their wheels bundle, not the (older) ones QGIS itself is linked with. Linux only.

    In the QGIS program and in qgis_process, QGIS's own GEOS, GDAL and PROJ are loaded into the
    global symbol scope before Python starts; a wheel's bundled copy then has some of its symbols
    resolved to QGIS's version (shapely fails with "WKB output dimension must be 2 or 3", then
    crashes). Loading the extension modules with RTLD_DEEPBIND makes each prefer its own
    libraries. Call this before anything imports those packages; packages already imported, or
    processes where QGIS's libraries are not global (plain Python, pytest), are left alone.

    Returns:
        The packages imported this way.
    """
    if not sys.platform.startswith("linux") or not hasattr(os, "RTLD_DEEPBIND") or not _qgis_libraries_are_global():
        return []
    import numpy  # noqa: F401  (numpy is shared by all of them; load it the ordinary way first)

    done = []
    flags = sys.getdlopenflags()
    sys.setdlopenflags(os.RTLD_NOW | os.RTLD_DEEPBIND)
    try:
        for package in packages:
            spec = None if package in sys.modules else importlib.util.find_spec(package)
            if spec is None or not spec.submodule_search_locations:
                continue
            root = Path(next(iter(spec.submodule_search_locations)))
            for lib in sorted(root.rglob("*.so")):  # every extension module: later imports reuse them
                parts = lib.relative_to(root.parent).with_name(lib.name.split(".")[0]).parts
                try:
                    importlib.import_module(".".join(parts))
                except Exception as exc:  # noqa: BLE001  (an optional extension; the package still works)
                    log.debug("not preloaded: %s (%s)", ".".join(parts), exc)
            done.append(package)
    finally:
        sys.setdlopenflags(flags)
    return done


def native_library_problem() -> str:
    """Why shapely cannot do geometry work in this process (after `isolate_native_libraries`), or "".

    A WKB round trip of one line: it fails when shapely was imported before the isolation (by
    another plugin, say) and its bundled GEOS clashes with QGIS's.
    """
    try:
        import shapely
    except ImportError:
        return ""  # reported by dependency_message()
    try:
        line = shapely.LineString([(0.0, 0.0), (1.0, 1.0)])
        if shapely.from_wkb(shapely.to_wkb(line)).length != line.length:
            raise ValueError("a WKB round trip changed the geometry")
        return ""
    except Exception as exc:  # noqa: BLE001  (any failure here means all geometry work fails)
        return (f"shapely {shapely.__version__} does not work inside this QGIS ({exc}): its bundled GEOS clashes "
                "with QGIS's because shapely was imported before RoadSeg could isolate it (by another plugin?). "
                "Restart QGIS and run RoadSeg first, or install a shapely built for QGIS's GEOS: "
                f"{_quote(python_executable())} -m pip install --force-reinstall --no-binary shapely 'shapely>=2.0'")


__all__ = ["NATIVE_PACKAGES", "OPTIONAL", "REQUIRED", "dependency_message", "install_command",
           "isolate_native_libraries", "missing_dependencies", "missing_optional", "native_library_problem",
           "python_executable"]
