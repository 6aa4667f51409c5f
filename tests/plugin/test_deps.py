"""roadseg_plugin.deps: what is missing and the exact command for this Python."""
from __future__ import annotations

import subprocess
import sys

import pytest

from roadseg_plugin import deps


def test_nothing_is_missing_in_the_project_environment() -> None:
    assert deps.missing_dependencies() == []
    assert deps.dependency_message() == ""


def test_checked_modules_cover_the_spec() -> None:
    for name in ("torch", "rasterio", "geopandas", "shapely", "pyogrio", "skimage", "scipy", "networkx", "sknw",
                 "imageio", "matplotlib", "tqdm"):
        assert name in deps.REQUIRED
    assert "onnxruntime" in deps.OPTIONAL and "onnxruntime" not in deps.REQUIRED


def test_install_command_is_for_this_python_with_pip_names_and_pins() -> None:
    command = deps.install_command(["torch", "skimage", "sknw"])
    assert command.startswith(f"{sys.executable} -m pip install ")
    assert "'numpy<2'" in command and "torch==2.13.0" in command
    assert "scikit-image" in command and "skimage" not in command.replace("scikit-image", "")


def test_install_command_runs_as_a_shell_command() -> None:
    """The command parses: pip itself accepts it (dry run, nothing is downloaded or installed)."""
    command = deps.install_command(["tqdm"]).replace(" -m pip install ", " -m pip install --dry-run --no-index "
                                                     "--no-deps --quiet ")
    done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=120)
    # tqdm is installed; with --no-index pip still resolves it from the environment
    assert done.returncode == 0, done.stderr


def test_missing_package_gives_one_message_with_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(deps.REQUIRED, "roadseg_absent_pkg", "roadseg-absent-pkg>=1")
    assert deps.missing_dependencies() == ["roadseg_absent_pkg"]
    message = deps.dependency_message()
    assert "roadseg-absent-pkg" in message
    assert deps.install_command() in message
    assert "'roadseg-absent-pkg>=1'" in deps.install_command()


def test_python_executable_inside_the_qgis_program(monkeypatch: pytest.MonkeyPatch) -> None:
    """In QGIS, sys.executable is the QGIS binary; the command must name a Python instead."""
    monkeypatch.setattr(sys, "executable", "/usr/bin/qgis")
    exe = deps.python_executable()
    assert "python" in exe.rsplit("/", 1)[-1]
    done = subprocess.run([exe, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
    assert done.stdout.strip() == str(sys.version_info[:2])


def test_import_does_not_pull_heavy_packages() -> None:
    code = ("import sys, roadseg_plugin.deps as d; d.missing_dependencies(); d.dependency_message(); "
            "print(sorted(m for m in ('torch', 'rasterio', 'geopandas', 'qgis') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=str(deps.__file__).rsplit("/roadseg_plugin/", 1)[0])
    assert done.stdout.strip() == "[]"


ISOLATION = """
import ctypes, ctypes.util, os, sys
ctypes.CDLL(ctypes.util.find_library("geos_c"), mode=os.RTLD_GLOBAL)  # what the QGIS program does
from roadseg_plugin import deps
if sys.argv[1] == "isolate":
    print(deps.isolate_native_libraries())
from shapely.geometry import LineString
try:
    print(len(LineString([(0, 0), (1, 1)]).wkb))
except Exception as exc:
    print(type(exc).__name__, exc)
print(repr(deps.native_library_problem()))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RTLD_DEEPBIND is Linux-only")
def test_bundled_geos_does_not_clash_with_qgis_geos() -> None:
    """Inside QGIS, the system GEOS is global; shapely's wheel must keep using its own copy."""
    import ctypes.util

    if not ctypes.util.find_library("geos_c"):
        pytest.skip("no system GEOS (libgeos_c) installed")
    root = str(deps.__file__).rsplit("/roadseg_plugin/", 1)[0]

    def run(mode: str) -> list[str]:
        done = subprocess.run([sys.executable, "-c", ISOLATION, mode], capture_output=True, text=True, cwd=root,
                              timeout=120)
        return done.stdout.strip().splitlines()

    isolated = run("isolate")
    assert "shapely" in isolated[0] and isolated[1] == "41" and isolated[2] == "''"
    plain = run("plain")  # the clash the isolation exists for (when the GEOS versions differ)
    if "GEOSException" in plain[0]:
        assert "--no-binary shapely" in plain[1]  # the late check explains it and gives the fix
    else:
        assert plain == ["41", "''"]


def test_isolation_is_a_no_op_in_plain_python() -> None:
    assert deps.isolate_native_libraries() == []
    assert deps.native_library_problem() == ""
