"""Which Python packages RoadSeg is missing, the one line that says so, and native-library isolation.

The package sets, the folder RoadSeg installs them into and the pip commands live in
`packages`; this module answers what the plugin and the Processing algorithms ask: is the
CPU-inference set importable (`missing_dependencies`), the short message when it is not
(`dependency_message`, which points at **Plugins > RoadSeg > Install packages...**), and the
command for doing it by hand (`install_command`). Nothing here imports those packages (the
check uses `importlib.util.find_spec`), QGIS or Qt, so the plugin loads without them.
"""
from __future__ import annotations

import ctypes
import importlib
import importlib.util
import logging
import os
import sys
from pathlib import Path

from . import packages
from .packages import python_executable

log = logging.getLogger(__name__)

MENU_ITEM = "Plugins > RoadSeg > Install packages..."
# import name -> pip requirement: the CPU-inference set (Segment roads, segmentroads, vectorisemask)
REQUIRED: dict[str, str] = {p.module: p.requirement for p in packages.CPU.packages}
# import name -> pip requirement: what training, exporting and GPU inference add
OPTIONAL: dict[str, str] = {p.module: p.requirement for p in packages.TRAINING_PACKAGES}


def _installed(module: str) -> bool:
    return packages.installed(module)


def missing_dependencies() -> list[str]:
    """Import names of the CPU-inference packages this Python cannot import (empty when all are there)."""
    return [name for name in REQUIRED if not _installed(name)]


def missing_optional() -> list[str]:
    """Import names of the Training and GPU packages that are absent (torch, onnx, matplotlib, imageio)."""
    return [name for name in OPTIONAL if not _installed(name)]


def _pip_name(module: str) -> str:
    requirement = {**REQUIRED, **OPTIONAL}.get(module, module)
    return requirement.split("<")[0].split(">")[0].split("=")[0].split("!")[0].strip()


def dependency_message(missing: list[str] | None = None) -> str:
    """One line naming the missing packages and the menu item that installs them; "" when none are."""
    missing = missing_dependencies() if missing is None else missing
    if not missing:
        return ""
    names = ", ".join(_pip_name(name) for name in missing)
    return f"RoadSeg needs Python packages that are not installed: {names}. Install them with {MENU_ITEM}"


def training_message(what: str = "Training", missing: list[str] | None = None) -> str:
    """One line for work that needs the Training and GPU set (torch...); "" when it is installed."""
    missing = [*missing_dependencies(), *missing_optional()] if missing is None else missing
    if not missing:
        return ""
    names = ", ".join(_pip_name(name) for name in missing)
    return (f"{what} needs Python packages that are not installed: {names}. Install them with {MENU_ITEM} "
            f'"{packages.TRAINING.title}"')


def short_message(missing: list[str], shown: int = 3) -> str:
    """The message bar's line (beside its "Install packages..." button): at most `shown` names."""
    names = [_pip_name(name) for name in missing]
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"needs Python packages that are not installed ({', '.join(names[:shown])}{more})."


def install_command(kind: str = "cpu", profile: str | os.PathLike | None = None) -> str:
    """The shell command that installs a package set ("cpu" or "training") for this QGIS's Python
    into RoadSeg's package folder (see `packages.pip_commands`); for terminals and scripts."""
    python = python_executable()
    target = packages.packages_dir(profile)
    package_set = packages.SETS[kind]
    driver = packages.nvidia_driver() if kind == "training" else None
    numpy = qgis_numpy(python, target)
    return packages.command_line(packages.pip_commands(package_set, python, target, numpy, driver=driver))


def qgis_numpy(python: str, target: str | os.PathLike) -> str | None:
    """The version of QGIS's own numpy: the one this process loaded from outside RoadSeg's folder,
    else the one `python` imports without that folder (None: it has none)."""
    numpy = sys.modules.get("numpy")
    if numpy is not None and packages.FOLDER not in str(getattr(numpy, "__file__", "")):
        return str(numpy.__version__)
    return packages.qgis_numpy_version(python, target)


def load_installed(modules: list[str]) -> dict[str, str]:
    """Import freshly installed modules into this process: {module: error} of those that fail.

    The wheels' native libraries are isolated from QGIS's first (`isolate_native_libraries`),
    exactly as before a run. A module that fails here but imports in a fresh interpreter was
    loaded earlier from another copy: QGIS must be restarted.
    """
    for folder in sys.path:
        if packages.FOLDER in folder:
            packages.refresh(folder)
    errors = {}
    try:
        isolate_native_libraries()
    except Exception as exc:  # noqa: BLE001  (numpy itself failed: reported below)
        log.debug("isolation failed: %s", exc)
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001  (ImportError, OSError of a native library...)
            errors[name] = f"{type(exc).__name__}: {exc}"[:300]
    return errors


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
                + packages.command_line([[python_executable(), "-m", "pip", "install", "--target",
                                          str(packages.packages_dir()), "--upgrade", "--no-binary", "shapely",
                                          "shapely>=2.0"]]))


__all__ = ["MENU_ITEM", "NATIVE_PACKAGES", "OPTIONAL", "REQUIRED", "dependency_message", "install_command",
           "isolate_native_libraries", "load_installed", "missing_dependencies", "missing_optional",
           "native_library_problem", "python_executable", "qgis_numpy", "short_message", "training_message"]
