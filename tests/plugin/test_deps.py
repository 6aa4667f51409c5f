"""roadseg_plugin.install.deps: what is missing, the one-line message, the manual command, native-library isolation."""
from __future__ import annotations

import subprocess
import sys

import pytest

from roadseg_plugin.install import deps


def test_nothing_is_missing_in_the_project_environment() -> None:
    assert deps.missing_dependencies() == []
    assert deps.missing_optional() == []
    assert deps.dependency_message() == ""


def test_checked_modules_are_the_cpu_inference_set_and_training_adds_torch() -> None:
    for name in ("rasterio", "geopandas", "shapely", "pyogrio", "skimage", "scipy", "networkx", "sknw",
                 "onnxruntime", "tqdm", "numpy"):
        assert name in deps.REQUIRED
    assert "torch" not in deps.REQUIRED and "torch" in deps.OPTIONAL
    assert deps.REQUIRED["skimage"] == "scikit-image>=0.22"


def test_install_command_is_for_this_python_into_the_profile_folder(tmp_path) -> None:
    command = deps.install_command("cpu", tmp_path)
    target = tmp_path / "python" / "roadseg-packages" / f"py{sys.version_info[0]}.{sys.version_info[1]}"
    assert command.startswith(f"{deps.python_executable()} -m pip install --target {target} --upgrade ")
    import numpy

    assert f"numpy=={numpy.__version__}" in command  # QGIS's own numpy, never another one
    assert "'scikit-image>=0.22'" in command and "torch" not in command
    assert "'torch>=2.2,<3'" in deps.install_command("training", tmp_path)


def test_install_command_runs_as_a_shell_command(tmp_path) -> None:
    """The command parses: pip itself accepts it (dry run, nothing is downloaded or installed)."""
    command = deps.install_command("cpu", tmp_path)
    options = command.split(" --no-warn-script-location ")[0] + " --no-warn-script-location"
    done = subprocess.run(options + " --dry-run --no-index --no-deps --quiet tqdm", shell=True, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 or "tqdm" in done.stderr, done.stderr


def test_missing_package_gives_one_line_naming_it_and_the_menu_item(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(deps.REQUIRED, "roadseg_absent_pkg", "roadseg-absent-pkg>=1")
    assert deps.missing_dependencies() == ["roadseg_absent_pkg"]
    assert deps.dependency_message() == ("RoadSeg needs Python packages that are not installed: roadseg-absent-pkg. "
                                         "Install them with Plugins > RoadSeg > Install packages...")


def test_python_executable_inside_the_qgis_program(monkeypatch: pytest.MonkeyPatch) -> None:
    """In QGIS, sys.executable is the QGIS binary (or a pyenv shim): the command must name QGIS's Python."""
    for program in ("/usr/bin/qgis", "/root/.pyenv/shims/python3"):
        monkeypatch.setattr(sys, "executable", program)
        exe = deps.python_executable()
        assert "python" in exe.rsplit("/", 1)[-1] and exe != program
        done = subprocess.run([exe, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
        assert done.stdout.strip() == str(sys.version_info[:2])


def test_load_installed_imports_into_this_process() -> None:
    assert deps.load_installed(["json", "tqdm"]) == {}
    errors = deps.load_installed(["roadseg_absent_pkg"])
    assert list(errors) == ["roadseg_absent_pkg"] and "ModuleNotFoundError" in errors["roadseg_absent_pkg"]


def test_import_does_not_pull_heavy_packages() -> None:
    code = ("import sys, roadseg_plugin.install.deps as d; d.missing_dependencies(); d.dependency_message(); "
            "print(sorted(m for m in ('torch', 'rasterio', 'geopandas', 'numpy', 'qgis') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=str(deps.__file__).rsplit("/roadseg_plugin/", 1)[0])
    assert done.stdout.strip() == "[]"


ISOLATION = """
import ctypes, ctypes.util, os, sys
ctypes.CDLL(ctypes.util.find_library("geos_c"), mode=os.RTLD_GLOBAL)  # what the QGIS program does
from roadseg_plugin.install import deps
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
