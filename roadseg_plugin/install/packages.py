"""The Python packages RoadSeg needs, the folder it installs them into, and the pip commands.

QGIS ships its own Python without rasterio, ONNX Runtime or PyTorch. RoadSeg installs them into
a folder of its own in the QGIS profile, outside the plugin folder (updating or removing the
plugin keeps it), one per Python version, so a QGIS upgrade to another Python starts afresh:

    <profile>/python/roadseg-packages/py3.11

`activate()` puts that folder first on `sys.path` when the plugin loads (`classFactory`, which
the desktop and qgis_process both call), before anything imports numpy. Two sets:

- **CPU inference**: what Segment roads, roadseg:segmentroads, roadseg:vectorisemask and
  `python -m roadseg_plugin segment` need on CPU. The model runs in ONNX Runtime from the
  `.onnx` files beside the checkpoint; no torch.
- **Training and GPU**: adds PyTorch (the CPU build, or a CUDA build when an NVIDIA driver is
  found), onnx (exporting checkpoints), matplotlib and imageio (training plots).

Requirements are ranges, not pins (pip picks the newest release that fits the Python QGIS
ships), except numpy: it is pinned to the version QGIS's own Python has, because QGIS's GDAL
bindings are compiled against it and another plugin may have imported it first. `CONSTRAINTS`
keep pip from walking through releases that need a newer numpy than that pin (pandas 3 needs
numpy >= 1.26; with QGIS's 1.24 pip downloaded pandas 3 release after release before backing off).

A set is installed only for what it adds: with CPU inference in place, Training and GPU installs
PyTorch, onnx, matplotlib and imageio (`pip_commands(..., only=missing(TRAINING))`), not the CPU
set again (pip's `--target` ignores what the folder holds, so it would reinstall all of it).

Nothing here imports Qt, QGIS (the profile folder is an argument; `settings_dir` asks QGIS
only when it is already loaded) or any of the packages it installs.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

FOLDER = "roadseg-packages"
PYPI = "https://pypi.org/simple"
TORCH_INDEX = "https://download.pytorch.org/whl/{tag}"
# NVIDIA driver (major version) -> the newest CUDA wheel index of PyTorch it can run
CUDA_INDEXES = ((570, "cu128"), (525, "cu126"), (450, "cu118"))


@dataclass(frozen=True)
class Package:
    """One requirement: pip name, version range, the module imported to check it, and the
    download it costs (its wheel and the dependencies no other row brings; Linux x86_64,
    CPython 3.11, in MB, measured with `pip download`)."""

    name: str
    spec: str
    module: str
    download_mb: float

    @property
    def requirement(self) -> str:
        return f"{self.name}{self.spec}"


@dataclass(frozen=True)
class PackageSet:
    """A named set of packages; `installed_mb`: its `pip install --target` folder, measured."""

    key: str
    title: str
    purpose: str
    packages: tuple[Package, ...]
    installed_mb: int

    @property
    def download_mb(self) -> float:
        return sum(p.download_mb for p in self.packages)

    @property
    def modules(self) -> list[str]:
        return [p.module for p in self.packages]

    def size_text(self) -> str:
        return f"about {self.download_mb:.0f} MB download, {self.installed_mb / 1000:.1f} GB on disk"


CPU_PACKAGES = (
    Package("numpy", "<2", "numpy", 17),  # replaced by QGIS's own version, see numpy_requirement
    Package("rasterio", ">=1.3", "rasterio", 37),  # with affine, attrs, click, certifi
    Package("shapely", ">=2.0", "shapely", 3),
    Package("pyproj", ">=3.3", "pyproj", 10),
    Package("geopandas", ">=0.14", "geopandas", 14),  # with pandas
    Package("pyogrio", ">=0.7", "pyogrio", 33),
    Package("scikit-image", ">=0.22", "skimage", 21),  # with Pillow, imageio, tifffile
    Package("scipy", ">=1.11", "scipy", 38),
    Package("networkx", ">=3.2", "networkx", 2),
    Package("sknw", ">=0.15", "sknw", 64),  # with numba and llvmlite
    Package("onnxruntime", ">=1.17", "onnxruntime", 29),  # with protobuf, flatbuffers
    Package("tqdm", ">=4.66", "tqdm", 0.1),
)
TRAINING_PACKAGES = (
    Package("torch", ">=2.2,<3", "torch", 192),  # the CPU build with sympy, jinja2...; CUDA builds are GBs
    Package("onnx", ">=1.16", "onnx", 14),  # with ml_dtypes
    Package("matplotlib", ">=3.7", "matplotlib", 16),
    Package("imageio", ">=2.31", "imageio", 0.3),
)
# Extra requirements, each added when the package it bounds is pulled in by a listed one:
# {the listed package: requirement}. See the module notes.
CONSTRAINTS = {"geopandas": "pandas<3"}
CPU = PackageSet("cpu", "CPU inference", "Segment roads, vectorise masks and evaluate on the CPU (ONNX Runtime)",
                 CPU_PACKAGES, installed_mb=933)
TRAINING = PackageSet("training", "Training and GPU", "Adds PyTorch: train models, export them, run on an "
                      "NVIDIA GPU", CPU_PACKAGES + TRAINING_PACKAGES, installed_mb=1900)
SETS = {CPU.key: CPU, TRAINING.key: TRAINING}

# Run by `check_imports` (and the installer dialog) in a fresh interpreter: which modules import.
CHECK_SCRIPT = """
import importlib, json, sys
errors = {}
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except BaseException as exc:  # any failure (ImportError, OSError from a native library...)
        errors[name] = f"{type(exc).__name__}: {exc}"[:300]
print("ROADSEG-CHECK " + json.dumps(errors))
"""


# ---- where ------------------------------------------------------------------------------------
def settings_dir() -> Path:
    """The active QGIS profile folder: QGIS's own answer when QGIS is loaded, else the default
    profile of this platform."""
    core = sys.modules.get("qgis.core")
    if core is not None and hasattr(core, "QgsApplication"):
        found = core.QgsApplication.qgisSettingsDirPath()
        if found:
            return Path(found)
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "QGIS" / "QGIS3" / "profiles" / "default"


def packages_dir(profile: str | os.PathLike | None = None, version: str | None = None) -> Path:
    """`<profile>/python/roadseg-packages/py<major.minor>` (default: this Python's version)."""
    version = version or f"{sys.version_info.major}.{sys.version_info.minor}"
    return Path(profile or settings_dir()) / "python" / FOLDER / f"py{version}"


def activate(profile: str | os.PathLike | None = None) -> Path:
    """Put the package folder first on `sys.path` (once; also before it exists, so packages
    installed later import without a restart); returns it."""
    folder = packages_dir(profile)
    entry = str(folder)
    if entry in sys.path:
        sys.path.remove(entry)
    sys.path.insert(0, entry)
    refresh(folder)
    return folder


def refresh(folder: str | os.PathLike) -> None:
    """Forget what the import system cached about `folder` (call after installing into it)."""
    sys.path_importer_cache.pop(str(folder), None)
    importlib.invalidate_caches()


# ---- which Python -----------------------------------------------------------------------------
def python_executable(executable: str | None = None, prefixes: tuple[str, ...] | None = None,
                      windows: bool = os.name == "nt", version: str | None = None) -> str:
    """The Python interpreter of this process's installation, as a path a shell can call.

    Inside QGIS `sys.executable` is often the QGIS program itself (`/usr/bin/qgis`,
    `qgis-bin.exe`, `QGIS.app/Contents/MacOS/QGIS`) or whatever `python3` came first on PATH
    (a pyenv shim), neither of which runs QGIS's Python. The interpreter is looked up under
    `sys.prefix`: `bin/python3.X` on Linux and macOS (QGIS.app's framework), `python.exe` on
    Windows (OSGeo4W and the standalone installer: `apps\\Python3X\\python.exe`). The arguments
    default to this process's own values (tests pass others).
    """
    executable = sys.executable if executable is None else executable
    prefixes = prefixes or (sys.prefix, sys.exec_prefix, sys.base_prefix)
    version = version or f"{sys.version_info.major}.{sys.version_info.minor}"
    roots = list(dict.fromkeys(os.path.abspath(p) for p in prefixes))
    exe = os.path.abspath(executable) if executable else ""
    candidates = []
    if Path(exe).name.lower().startswith("python") and any(
            os.path.dirname(exe) in (root, os.path.join(root, "bin")) for root in roots):
        candidates.append(Path(exe))
    for root in map(Path, roots):
        if windows:
            candidates += [root / "python.exe", root / "python3.exe"]
        else:
            candidates += [root / "bin" / f"python{version}", root / "bin" / "python3"]
    if exe and not windows:
        candidates += [Path(exe).parent / "bin" / "python3"]  # QGIS.app/Contents/MacOS/bin/python3 (older builds)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(f"python{version}") or shutil.which("python3") or "python3"


def default_qgis_python() -> str:
    """From outside QGIS (scripts, make): the interpreter a local QGIS runs. Linux: the system
    /usr/bin/python3 (distribution packages of QGIS use it); macOS: the one inside QGIS.app;
    otherwise (Windows: run from the OSGeo4W Shell) this process's own."""
    for candidate in ("/usr/bin/python3", "/Applications/QGIS.app/Contents/MacOS/bin/python3"):
        if sys.platform != "win32" and Path(candidate).is_file():
            if sys.platform == "darwin" and candidate.startswith("/usr/"):
                continue
            return candidate
    return python_executable()


def python_version(python: str) -> str:
    """"3.11" for an interpreter (runs it)."""
    done = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


def ensure_pip(python: str) -> str:
    """Make sure `python -m pip` works, bootstrapping it with ensurepip when it does not.

    Returns:
        "" when pip works, else what to do (a Linux distribution may ship pip separately).
    """
    def works() -> bool:
        try:
            return subprocess.run([python, "-m", "pip", "--version"], capture_output=True, timeout=120).returncode == 0
        except OSError:
            return False

    if works():
        return ""
    try:
        subprocess.run([python, "-m", "ensurepip", "--upgrade", "--user"], capture_output=True, timeout=600)
    except OSError:
        pass
    if works():
        return ""
    return (f"{python} has no pip and ensurepip could not install it; install pip for it first "
            "(Debian/Ubuntu: sudo apt install python3-pip; Windows: the OSGeo4W installer's python3-pip)")


# ---- what is missing --------------------------------------------------------------------------
def installed(module: str) -> bool:
    """Whether this process can find `module` (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken parent package or a module with __spec__ None
        return False


def missing(package_set: PackageSet = CPU) -> list[Package]:
    """The packages of the set this process cannot find."""
    return [p for p in package_set.packages if not installed(p.module)]


def check_imports(python: str, target: str | os.PathLike | None, modules: list[str],
                  timeout: float = 600) -> dict[str, str]:
    """Import `modules` in a fresh `python` with `target` first on its path: {module: error} of
    those that fail (empty: all import). A real import, so broken native libraries count."""
    command, env = check_command(python, target, modules)
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    return parse_check(done.stdout, done.stderr, modules)


def check_command(python: str, target: str | os.PathLike | None, modules: list[str]) -> tuple[list[str], dict]:
    """The command and environment of `check_imports` (the installer dialog runs it in a QProcess)."""
    env = dict(os.environ)
    paths = [str(target)] if target else []
    paths += [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in paths]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return [python, "-c", CHECK_SCRIPT, *modules], env


def parse_check(stdout: str, stderr: str, modules: list[str]) -> dict[str, str]:
    """{module: error} from the output of CHECK_SCRIPT; every module fails when it did not run."""
    for line in stdout.splitlines():
        if line.startswith("ROADSEG-CHECK "):
            return json.loads(line[len("ROADSEG-CHECK "):])
    reason = (stderr.strip().splitlines() or ["the check did not run"])[-1][:300]
    return {name: reason for name in modules}


# ---- how to install ---------------------------------------------------------------------------
def nvidia_driver() -> str | None:
    """The NVIDIA driver version ("550.54.15") when one is installed, else None."""
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.split()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    try:  # Linux without nvidia-smi on PATH
        found = re.search(r"Kernel Module\s+(?:for \S+\s+)?([\d.]+)", Path("/proc/driver/nvidia/version").read_text())
        return found.group(1) if found else "0"
    except OSError:
        return None


def torch_index(platform: str = sys.platform, driver: str | None = None) -> str | None:
    """The PyTorch wheel index for this machine, or None for PyPI's default build.

    Linux: the CPU index (PyPI's Linux torch is a multi-GB CUDA build) unless an NVIDIA driver
    is found, then the newest CUDA index the driver runs. Windows: PyPI (CPU) or a CUDA index.
    macOS: PyPI (CPU and Apple GPU).
    """
    if platform == "darwin":
        return None
    if driver:
        head = driver.split(".")[0]
        major = int(head) if head.isdigit() else 0
        for minimum, tag in CUDA_INDEXES:
            if major >= minimum:
                return TORCH_INDEX.format(tag=tag)
    return None if platform == "win32" else TORCH_INDEX.format(tag="cpu")


def numpy_requirement(qgis_numpy: str | None, python: str = f"{sys.version_info[0]}.{sys.version_info[1]}") -> str:
    """numpy pinned to QGIS's own version (its GDAL bindings are built against it); without one,
    numpy<2 where numpy 1 has wheels (Python < 3.13)."""
    if qgis_numpy:
        return f"numpy=={qgis_numpy}"
    return "numpy<2" if tuple(int(x) for x in python.split(".")[:2]) < (3, 13) else "numpy"


def qgis_numpy_version(python: str, target: str | os.PathLike | None = None) -> str | None:
    """The numpy version `python` imports without the package folder, or None."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    kept = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and (not target or p != str(target))]
    if kept:
        env["PYTHONPATH"] = os.pathsep.join(kept)
    try:
        done = subprocess.run([python, "-c", "import numpy; print(numpy.__version__)"], capture_output=True,
                              text=True, timeout=120, env=env)
    except (OSError, subprocess.SubprocessError):
        return None
    version = done.stdout.strip()
    return version if done.returncode == 0 and re.fullmatch(r"[\w.+]+", version) else None


def pip_commands(package_set: PackageSet, python: str, target: str | os.PathLike, qgis_numpy: str | None = None,
                 platform: str = sys.platform, driver: str | None = None,
                 only: Iterable[Package] | None = None) -> list[list[str]]:
    """The pip commands (argv lists, run in order) that install the set into `target`.

    `pip install --target DIR --upgrade`: pip then ignores whatever the interpreter already has
    and leaves QGIS's own site-packages alone (and PEP 668 "externally managed" Pythons allow
    it). torch comes first, from its own index (see `torch_index`); the rest from PyPI. `only`:
    the packages of the set to install (those `missing` finds), so a set is installed only for
    what it adds to what is there; numpy stays pinned in every command, as the packages' own
    dependencies would otherwise pull in another one. No command when nothing is to install.
    """
    base = [python, "-m", "pip", "install", "--target", str(target), "--upgrade", "--no-input", "--prefer-binary",
            "--progress-bar", "off", "--no-warn-script-location"]
    chosen = list(package_set.packages if only is None else only)
    names = {p.name for p in chosen}
    numpy = numpy_requirement(qgis_numpy, _major_minor(target))
    reqs = [p.requirement for p in chosen if p.name not in ("torch", "numpy")]
    reqs += [CONSTRAINTS[name] for name in CONSTRAINTS if name in names]
    commands = []
    torch = next((p for p in chosen if p.name == "torch"), None)
    if torch is not None:
        index = torch_index(platform, driver)
        commands.append(base + (["--index-url", index] if index else []) + [torch.requirement])
    if reqs or "numpy" in names:
        commands.append(base + [numpy] + reqs)
    return commands


def _major_minor(target: str | os.PathLike) -> str:
    found = re.search(r"py(\d+\.\d+)$", str(target))
    return found.group(1) if found else f"{sys.version_info[0]}.{sys.version_info[1]}"


def command_line(commands: list[list[str]], platform: str = sys.platform) -> str:
    """The commands as one line for a terminal (Windows: the OSGeo4W Shell), joined with &&."""
    def quote(arg: str) -> str:
        if platform == "win32":
            return f'"{arg}"' if any(c in arg for c in ' <>&|^') else arg
        return shlex.quote(arg)

    return " && ".join(" ".join(quote(a) for a in command) for command in commands)


def install(package_set: PackageSet, python: str, target: str | os.PathLike, log=print) -> dict[str, str]:
    """Install the set into `target` with `python`'s pip (blocking; `scripts/install_plugin.py`
    uses it, the installer dialog runs the same commands in a QProcess).

    Returns:
        {module: error} of the modules that still do not import afterwards (empty: all do).

    Raises:
        RuntimeError: pip is unavailable or a pip command failed (its exit status).
    """
    problem = ensure_pip(python)
    if problem:
        raise RuntimeError(problem)
    Path(target).mkdir(parents=True, exist_ok=True)
    for command in pip_commands(package_set, python, target, qgis_numpy_version(python, target),
                                driver=nvidia_driver() if any(p.name == "torch" for p in package_set.packages)
                                else None):
        log("running: " + command_line([command]))
        done = subprocess.run(command)
        if done.returncode != 0:
            raise RuntimeError(f"pip failed (exit status {done.returncode}): {command_line([command])}")
    return check_imports(python, target, package_set.modules)


__all__ = ["CPU", "SETS", "TRAINING", "Package", "PackageSet", "activate", "check_imports", "command_line",
           "ensure_pip", "install", "installed", "missing", "numpy_requirement", "nvidia_driver", "packages_dir",
           "pip_commands", "python_executable", "qgis_numpy_version", "settings_dir", "torch_index"]
