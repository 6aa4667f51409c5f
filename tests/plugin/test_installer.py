"""Installing RoadSeg's Python packages: `packages` (sets, folder, interpreter, pip commands per
platform, what is missing, the re-check), the installer dialog's widgets and pip runs, the
plugin's one message bar line, and (slow) the whole flow in the real QGIS desktop.

The slow test is what a real user does: a fresh profile whose package folder is empty, QGIS's own
Python (which cannot see this virtual environment), the plugin loads and shows one line with an
"Install packages..." button; the installer downloads the CPU-inference set with pip; then
Segment roads runs on a georeferenced tile and adds a styled road layer, without restarting QGIS.
ROADSEG_SCREENSHOTS=DIR keeps its two screenshots there (docs/screenshot_installer.png,
docs/screenshot_after_install.png).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from roadseg_plugin.install import deps, packages
from roadseg_plugin.install.packages import CPU, TRAINING

ROOT = Path(__file__).resolve().parents[2]
FAKE_PIP = "import time; print('Collecting numpy'); print('Installing collected packages: numpy'); " \
           "print('Successfully installed numpy')"


# ---- packages: the sets -----------------------------------------------------------------------
def test_the_cpu_set_has_no_torch_and_the_training_set_adds_it():
    cpu = {p.name for p in CPU.packages}
    assert "torch" not in cpu and {"rasterio", "onnxruntime", "sknw", "geopandas", "numpy"} <= cpu
    assert {p.name for p in TRAINING.packages} == cpu | {"torch", "onnx", "matplotlib", "imageio"}
    for package_set in (CPU, TRAINING):
        assert len(set(package_set.modules)) == len(package_set.packages)
        assert all(p.spec == "" or p.spec[0] in "<>=!" for p in package_set.packages)
    assert not [p for p in TRAINING.packages if "==" in p.spec], "ranges, no pins"
    assert 200 < CPU.download_mb < TRAINING.download_mb < 700 and CPU.installed_mb < TRAINING.installed_mb
    assert CPU.size_text().startswith("about ") and "MB download" in CPU.size_text()


def test_deps_check_the_cpu_set_and_report_training_separately():
    assert set(deps.REQUIRED) == set(CPU.modules)
    assert set(deps.OPTIONAL) == {"torch", "onnx", "matplotlib", "imageio"}


# ---- packages: where --------------------------------------------------------------------------
def test_package_folder_is_per_profile_and_python_version(tmp_path):
    assert packages.packages_dir(tmp_path, "3.12") == tmp_path / "python" / "roadseg-packages" / "py3.12"
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert packages.packages_dir(tmp_path).name == f"py{here}"


def test_activate_puts_the_folder_first_once(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    folder = packages.activate(tmp_path)
    packages.activate(tmp_path)
    assert sys.path[0] == str(folder) and sys.path.count(str(folder)) == 1
    (folder / "roadseg_probe_module.py").parent.mkdir(parents=True)
    (folder / "roadseg_probe_module.py").write_text("VALUE = 7\n")
    packages.refresh(folder)  # what the installer does after pip: importable without a restart
    import roadseg_probe_module

    assert roadseg_probe_module.VALUE == 7
    sys.modules.pop("roadseg_probe_module")


# ---- packages: which Python -------------------------------------------------------------------
def _touch_exe(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    path.chmod(0o755)
    return path


def test_interpreter_inside_qgis_is_the_installations_python_not_the_program_or_a_shim(tmp_path):
    usr = tmp_path / "usr"
    python = _touch_exe(usr / "bin" / "python3.11")
    for program in ("/usr/bin/qgis", str(tmp_path / ".pyenv" / "shims" / "python3")):
        assert packages.python_executable(program, (str(usr),), windows=False, version="3.11") == str(python)


def test_interpreter_on_windows_osgeo4w_and_macos_bundle(tmp_path):
    osgeo = tmp_path / "OSGeo4W"
    python = _touch_exe(osgeo / "apps" / "Python312" / "python.exe")
    found = packages.python_executable(str(osgeo / "bin" / "qgis-bin.exe"), (str(python.parent),), windows=True,
                                       version="3.12")
    assert found == str(python)
    app = tmp_path / "QGIS.app" / "Contents"
    framework = app / "Frameworks" / "Python.framework" / "Versions" / "3.12"
    mac_python = _touch_exe(framework / "bin" / "python3.12")
    assert packages.python_executable(str(app / "MacOS" / "QGIS"), (str(framework),), windows=False,
                                      version="3.12") == str(mac_python)
    old_bundle = _touch_exe(tmp_path / "Old.app" / "Contents" / "MacOS" / "bin" / "python3")
    assert packages.python_executable(str(old_bundle.parent.parent / "QGIS"), (str(tmp_path / "none"),),
                                      windows=False, version="3.9") == str(old_bundle)


def test_interpreter_of_this_process_runs_this_python():
    exe = packages.python_executable()
    assert packages.python_version(exe) == f"{sys.version_info[0]}.{sys.version_info[1]}"


# ---- packages: the pip commands ---------------------------------------------------------------
@pytest.mark.parametrize(("platform", "driver", "index"), [
    ("linux", None, "https://download.pytorch.org/whl/cpu"),
    ("linux", "550.54.15", "https://download.pytorch.org/whl/cu126"),
    ("linux", "575.51", "https://download.pytorch.org/whl/cu128"),
    ("linux", "470.256", "https://download.pytorch.org/whl/cu118"),
    ("linux", "390.1", "https://download.pytorch.org/whl/cpu"),
    ("win32", None, None),
    ("win32", "560.94", "https://download.pytorch.org/whl/cu126"),
    ("darwin", None, None),
])
def test_torch_index_per_platform_and_driver(platform, driver, index):
    assert packages.torch_index(platform, driver) == index


def test_cpu_command_is_one_pip_target_install_with_numpy_pinned_to_qgis(tmp_path):
    target = tmp_path / "py3.11"
    (command,) = packages.pip_commands(CPU, "/usr/bin/python3", target, "1.24.2", platform="linux")
    assert command[:9] == ["/usr/bin/python3", "-m", "pip", "install", "--target", str(target), "--upgrade",
                           "--no-input", "--prefer-binary"]
    assert "numpy==1.24.2" in command and "numpy<2" not in command
    assert "rasterio>=1.3" in command and "onnxruntime>=1.17" in command and not [a for a in command if "torch" in a]
    assert packages.numpy_requirement(None, "3.11") == "numpy<2" and packages.numpy_requirement(None, "3.13") == "numpy"
    # pandas 3 needs a newer numpy than QGIS's: bounded, or pip downloads release after release of it
    assert "pandas<3" in command


def test_a_set_is_installed_only_for_what_it_adds(tmp_path):
    adds = [p for p in TRAINING.packages if p not in CPU.packages]
    torch_cmd, rest = packages.pip_commands(TRAINING, "python3", tmp_path / "py3.11", "1.24.2", platform="linux",
                                            only=adds)
    assert torch_cmd[-1] == "torch>=2.2,<3"
    assert rest[rest.index("--no-warn-script-location") + 1:] == [
        "numpy==1.24.2", "onnx>=1.16", "matplotlib>=3.7", "imageio>=2.31"]  # numpy pinned, no CPU package, no pandas
    (only_torch,) = packages.pip_commands(TRAINING, "python3", tmp_path / "py3.11", "1.24.2", platform="linux",
                                          only=[p for p in adds if p.name == "torch"])
    assert only_torch[-1] == "torch>=2.2,<3"
    assert packages.pip_commands(CPU, "python3", tmp_path / "py3.11", only=[]) == []


def test_training_commands_take_torch_from_its_index_first(tmp_path):
    torch_cmd, rest = packages.pip_commands(TRAINING, "python3", tmp_path / "py3.11", None, platform="linux")
    assert torch_cmd[-3:] == ["--index-url", "https://download.pytorch.org/whl/cpu", "torch>=2.2,<3"]
    assert "torch>=2.2,<3" not in rest and {"onnx>=1.16", "matplotlib>=3.7", "numpy<2"} <= set(rest)
    cuda, _ = packages.pip_commands(TRAINING, "python3", tmp_path / "py3.11", None, platform="linux",
                                    driver="550.1")
    assert "https://download.pytorch.org/whl/cu126" in cuda
    windows, _ = packages.pip_commands(TRAINING, "python.exe", tmp_path / "py3.12", None, platform="win32")
    assert "--index-url" not in windows and windows[-1] == "torch>=2.2,<3"


def test_command_line_quotes_for_the_shell_of_each_platform(tmp_path):
    commands = packages.pip_commands(TRAINING, "C:\\Program Files\\QGIS 3.36\\apps\\Python312\\python.exe",
                                     "C:\\Users\\me\\py3.12", None, platform="win32")
    line = packages.command_line(commands, "win32")
    assert line.startswith('"C:\\Program Files\\QGIS 3.36\\apps\\Python312\\python.exe" -m pip install')
    assert '"torch>=2.2,<3" && ' in line and '"numpy<2"' in line
    posix = packages.command_line(packages.pip_commands(CPU, "/usr/bin/python3", "/p/py3.11", None), "linux")
    assert "'numpy<2'" in posix and "'rasterio>=1.3'" in posix and "&&" not in posix


def test_the_command_parses_for_pip(tmp_path):
    """pip itself accepts the command line (dry run of one installed package, no index)."""
    (command,) = packages.pip_commands(CPU, sys.executable, tmp_path / "py3.11", None)
    options = [a for a in command[:command.index("--no-warn-script-location") + 1]]
    done = subprocess.run([*options, "--dry-run", "--no-index", "--no-deps", "--quiet", "tqdm"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 or "tqdm" in done.stderr, done.stderr[-2000:]


def test_nvidia_driver_from_nvidia_smi(tmp_path, monkeypatch):
    smi = _touch_exe(tmp_path / "nvidia-smi")
    smi.write_text("#!/bin/sh\necho 550.54.15\n")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert packages.nvidia_driver() == "550.54.15"
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert packages.nvidia_driver() in (None, *(["0"] if Path("/proc/driver/nvidia/version").exists() else []))


# ---- packages: what is missing, re-check ------------------------------------------------------
def test_missing_lists_what_this_python_cannot_find():
    fake = packages.PackageSet("x", "X", "x", (packages.Package("tqdm", "", "tqdm", 0),
                                               packages.Package("absent-pkg", ">=1", "roadseg_absent_pkg", 1)), 1)
    assert [p.name for p in packages.missing(fake)] == ["absent-pkg"]
    assert packages.missing(CPU) == []  # the project environment has everything


def test_check_imports_runs_a_fresh_interpreter_with_the_folder_first(tmp_path):
    (tmp_path / "roadseg_ok_mod.py").write_text("")
    (tmp_path / "roadseg_broken_mod.py").write_text("raise OSError('libfoo.so: cannot open shared object')")
    errors = packages.check_imports(sys.executable, tmp_path, ["roadseg_ok_mod", "roadseg_broken_mod", "json"])
    assert list(errors) == ["roadseg_broken_mod"] and "libfoo.so" in errors["roadseg_broken_mod"]
    assert packages.parse_check("", "Traceback\nSyntaxError: bad", ["a"]) == {"a": "SyntaxError: bad"}


def test_ensure_pip(tmp_path):
    assert packages.ensure_pip(sys.executable) == ""
    broken = _touch_exe(tmp_path / "python3")
    broken.write_text("#!/bin/sh\nexit 1\n")
    assert "has no pip" in packages.ensure_pip(str(broken))


def test_qgis_numpy_version_ignores_the_package_folder(tmp_path):
    import numpy

    assert packages.qgis_numpy_version(sys.executable, tmp_path) == numpy.__version__


# ---- the messages -----------------------------------------------------------------------------
def test_one_line_messages_name_the_packages_and_the_menu_item():
    line = deps.dependency_message(["rasterio", "skimage", "sknw"])
    assert line == ("RoadSeg needs Python packages that are not installed: rasterio, scikit-image, sknw. "
                    "Install them with Plugins > RoadSeg > Install packages...")
    assert "\n" not in line and deps.dependency_message([]) == ""
    short = deps.short_message(["rasterio", "shapely", "geopandas", "skimage", "sknw"])
    assert short == "needs Python packages that are not installed (rasterio, shapely, geopandas and 2 more)."


# ---- the dialog -------------------------------------------------------------------------------
qgis_core = pytest.importorskip("qgis.core")


@pytest.fixture
def dialog(qgis_app, tmp_path, monkeypatch):
    from roadseg_plugin.gui.installer_dialog import InstallerDialog

    monkeypatch.setattr(packages, "nvidia_driver", lambda: None)
    dlg = InstallerDialog(python=sys.executable, target=tmp_path / "py3.11")
    yield dlg
    dlg.cancel_install()
    dlg.close()


def wait_until(condition, timeout: float = 120.0) -> bool:
    from qgis.core import QgsApplication

    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        QgsApplication.processEvents()
        time.sleep(0.02)
    return condition()


def test_dialog_offers_both_sets_with_sizes_and_the_manual_command(dialog, qgis_app):
    from qgis.PyQt.QtGui import QGuiApplication

    assert [r.text() for r in dialog.radios.values()] == [f"{s.title} ({s.size_text()})" for s in (CPU, TRAINING)]
    assert dialog.selected() is TRAINING  # nothing is missing here, so the bigger set is offered
    assert "torch" in dialog.command_view.toPlainText()
    dialog.radios["cpu"].setChecked(True)
    assert dialog.command_view.toPlainText() == dialog.command_text() and "torch" not in dialog.command_text()
    assert dialog.command_view.isReadOnly() and str(dialog.target) in dialog.command_text()
    assert not dialog.details.isVisibleTo(dialog)
    dialog.details_button.setChecked(True)
    assert dialog.details.isVisibleTo(dialog)
    dialog.copy_button.click()
    assert QGuiApplication.clipboard().text() == dialog.command_text()
    assert "All installed." in dialog.missing_labels["cpu"].text()
    # both sets are installed here: nothing to install, the heading says so, the command reinstalls by hand
    assert not dialog.install_button.isEnabled() and not dialog.cancel_button.isEnabled()
    assert "Every package RoadSeg uses is installed" in dialog.intro.text()
    assert "is installed; to install it again" in dialog.manual.text()


def test_training_after_cpu_installs_only_what_it_adds(dialog, monkeypatch):
    real = packages.installed
    monkeypatch.setattr(packages, "installed", lambda m: m not in ("torch", "onnx") and real(m))
    dialog.refresh()
    assert not dialog.radios["training"].isChecked() or dialog.selected() is TRAINING
    dialog.radios["training"].setChecked(True)
    assert [p.name for p in dialog.to_install()] == ["torch", "onnx"] and dialog.install_button.isEnabled()
    torch_cmd, rest = dialog.commands()
    assert torch_cmd[-1] == "torch>=2.2,<3"
    assert "onnx>=1.16" in rest and dialog.numpy and f"numpy=={dialog.numpy}" in rest  # numpy stays pinned
    assert not [a for a in rest if a.split("<")[0].split(">")[0] in ("rasterio", "scipy", "sknw", "geopandas")]
    assert "Install Training and GPU" in dialog.intro.text()
    dialog.radios["cpu"].setChecked(True)  # installed: nothing for Install to do
    assert not dialog.install_button.isEnabled() and "CPU inference is installed" in dialog.manual.text()


def test_heading_after_installing_training(dialog, monkeypatch):
    monkeypatch.setattr(packages, "pip_commands", lambda *a, **k: [[sys.executable, "-c", FAKE_PIP]])
    real = packages.installed
    installed_now = {"torch": False}
    monkeypatch.setattr(packages, "installed", lambda m: installed_now.get(m, True) and real(m))
    dialog.refresh()
    dialog.radios["training"].setChecked(True)
    assert "Install Training and GPU" in dialog.intro.text()
    dialog.install_button.click()
    installed_now["torch"] = True  # what pip did, as the re-check after it sees it
    assert wait_until(lambda: dialog.outcome) and dialog.outcome == "ready", dialog.status.text()
    assert "Install Training and GPU" not in dialog.intro.text()
    assert "training and the GPU all work" in dialog.intro.text()
    assert not dialog.install_button.isEnabled()  # installed now


def test_dialog_lists_what_is_missing(dialog, monkeypatch):
    real = packages.installed
    monkeypatch.setattr(packages, "installed", lambda m: m not in ("rasterio", "torch") and real(m))
    dialog.refresh()
    assert dialog.selected() is CPU
    assert "Missing: rasterio." in dialog.missing_labels["cpu"].text()
    assert "Missing: rasterio, torch." in dialog.missing_labels["training"].text()
    assert "QGIS's Python does not have" in dialog.intro.text()


@pytest.fixture
def tqdm_missing(dialog, monkeypatch):
    """The dialog with one package of both sets missing, so Install has something to do."""
    real = packages.installed
    monkeypatch.setattr(packages, "installed", lambda m: m != "tqdm" and real(m))
    dialog.refresh()
    return dialog


def test_dialog_runs_pip_live_then_rechecks_and_loads(dialog, tqdm_missing, monkeypatch):
    monkeypatch.setattr(packages, "pip_commands", lambda *a, **k: [[sys.executable, "-c", FAKE_PIP]])
    seen = []
    dialog.installed.connect(seen.append)
    dialog.radios["cpu"].setChecked(True)
    dialog.install_button.click()
    assert dialog.cancel_button.isEnabled() and not dialog.install_button.isEnabled()
    assert wait_until(lambda: dialog.outcome)
    assert dialog.outcome == "ready", dialog.status.text()
    assert seen == [True] and dialog.progress.value() == 100
    log = dialog.log_view.toPlainText()
    assert "Collecting numpy" in log and "Successfully installed numpy" in log
    assert "RoadSeg is ready" in dialog.status.text() and dialog.install_button.isEnabled()


def test_dialog_cancel_kills_pip(dialog, tqdm_missing, monkeypatch):
    monkeypatch.setattr(packages, "pip_commands",
                        lambda *a, **k: [[sys.executable, "-c", "import time; print('Collecting x', flush=True); "
                                          "time.sleep(60)"]])
    dialog.install_button.click()
    assert wait_until(lambda: "Collecting x" in dialog.log_view.toPlainText(), 60)
    started = time.monotonic()
    dialog.cancel_button.click()
    assert wait_until(lambda: dialog.outcome, 30) and time.monotonic() - started < 20
    assert dialog.outcome == "cancelled" and "Cancelled" in dialog.status.text()
    assert dialog.install_button.isEnabled() and not dialog.running()


def test_dialog_reports_a_failing_pip_and_modules_that_do_not_import(dialog, tqdm_missing, monkeypatch):
    monkeypatch.setattr(packages, "pip_commands", lambda *a, **k: [[sys.executable, "-c", "raise SystemExit(3)"]])
    dialog.install_button.click()
    assert wait_until(lambda: dialog.outcome) and dialog.outcome == "failed"
    assert "exit status 3" in dialog.status.text()
    monkeypatch.setattr(packages, "pip_commands", lambda *a, **k: [[sys.executable, "-c", FAKE_PIP]])
    broken = packages.PackageSet("cpu", "CPU inference", "x", (packages.Package("x", "", "roadseg_absent_mod", 0),),
                                 1)
    monkeypatch.setattr(dialog, "selected", lambda: broken)
    dialog.install_button.click()
    assert wait_until(lambda: dialog.outcome) and dialog.outcome == "failed"
    assert "roadseg_absent_mod cannot be imported" in dialog.status.text()


def test_dialog_says_restart_when_this_qgis_cannot_load_them(dialog, tqdm_missing, monkeypatch):
    monkeypatch.setattr(packages, "pip_commands", lambda *a, **k: [[sys.executable, "-c", FAKE_PIP]])
    monkeypatch.setattr(deps, "load_installed", lambda modules: {"numpy": "ImportError: another numpy is loaded"})
    seen = []
    dialog.installed.connect(seen.append)
    dialog.install_button.click()
    assert wait_until(lambda: dialog.outcome) and dialog.outcome == "restart"
    assert seen == [False] and "Restart QGIS" in dialog.status.text() and "numpy" in dialog.status.text()


def test_dialog_reports_an_unwritable_folder(qgis_app, tmp_path, monkeypatch):
    from roadseg_plugin.gui.installer_dialog import InstallerDialog

    real = packages.installed
    monkeypatch.setattr(packages, "installed", lambda m: m != "tqdm" and real(m))  # something to install
    (tmp_path / "file").write_text("")
    dlg = InstallerDialog(python=sys.executable, target=tmp_path / "file" / "py3.11")
    dlg.install_button.click()
    assert dlg.outcome == "failed" and "cannot create" in dlg.status.text()
    dlg.close()


# ---- the plugin: one line with a button, the menu item ----------------------------------------
@pytest.fixture
def plugin_missing_rasterio(qgis_iface, qgis_processing, qgis_new_project, monkeypatch):
    import roadseg_plugin

    real = packages.installed  # what deps and the installer both ask
    monkeypatch.setattr(packages, "installed", lambda name: name != "rasterio" and real(name))
    monkeypatch.setattr(packages, "nvidia_driver", lambda: None)
    from unittest.mock import MagicMock

    monkeypatch.setattr(qgis_iface, "addPluginToMenu", MagicMock(), raising=False)
    qgis_iface.messageBar().clearWidgets()
    instance = roadseg_plugin.classFactory(qgis_iface)
    instance.initGui()
    yield instance
    instance.unload()


def test_missing_packages_give_one_line_with_an_install_button(plugin_missing_rasterio, qgis_iface):
    from qgis.PyQt.QtWidgets import QPushButton

    from roadseg_plugin.gui.installer_dialog import InstallerDialog
    from roadseg_plugin.gui.plugin import INSTALL_TEXT, MENU, TRAIN_TEXT

    plugin, bar = plugin_missing_rasterio, qgis_iface.messageBar()
    assert len(bar.items()) == 1
    item = bar.items()[0]
    assert "(rasterio)" in item.text() and "\n" not in item.text()
    plugin.action.trigger()  # Segment roads: the same line is still shown, not a second one
    assert len(bar.items()) == 1
    (button,) = [b for b in item.findChildren(QPushButton) if b.text() == INSTALL_TEXT]
    button.click()
    assert isinstance(plugin.installer, InstallerDialog) and plugin.installer.isVisible()
    assert "Missing: rasterio." in plugin.installer.missing_labels["cpu"].text()
    qgis_iface.addPluginToMenu.assert_any_call(MENU, plugin.install_action)
    assert plugin.install_action.text() == INSTALL_TEXT
    qgis_iface.addPluginToMenu.assert_any_call(MENU, plugin.train_action)  # Train model from drawn road lines...
    assert plugin.train_action.text() == TRAIN_TEXT
    plugin.train_action.trigger()  # the packages are missing: the same one line, no dialog, no second line
    assert len(bar.items()) == 1
    plugin._installed(True)  # an installation that loaded everything: the line goes
    assert bar.items() == []


def test_a_qgis_with_an_old_python_gets_one_message_instead_of_the_plugin(qgis_iface, monkeypatch):
    from qgis.core import Qgis

    import roadseg_plugin
    from roadseg_plugin.gui.plugin import UnsupportedPython

    monkeypatch.setattr(roadseg_plugin, "MIN_PYTHON", (9, 0))
    bar = qgis_iface.messageBar()
    bar.clear_messages()
    instance = roadseg_plugin.classFactory(qgis_iface)
    assert isinstance(instance, UnsupportedPython)
    instance.initGui()
    (message,) = bar.get_messages(Qgis.Critical)
    assert "RoadSeg needs Python 9.0 or newer" in message
    instance.unload()


def test_processing_error_is_one_line_with_the_menu_item(roadseg_provider, road_rasters, tmp_path, monkeypatch):
    import processing
    from qgis.core import QgsProcessingException

    real = deps._installed
    monkeypatch.setattr(deps, "_installed", lambda name: name not in ("sknw", "onnxruntime") and real(name))
    path, _ = road_rasters("area.tif", size=64)
    with pytest.raises(QgsProcessingException) as info:
        processing.run("roadseg:segmentroads", {"INPUT": str(path), "OUTPUT": str(tmp_path / "roads.gpkg")})
    assert str(info.value) == deps.dependency_message(["sknw", "onnxruntime"])
    assert not (tmp_path / "roads.gpkg").exists()


# ---- the whole flow in the QGIS desktop (slow: pip downloads the CPU-inference set) -----------
STARTUP = r'''
# Run by QGIS (--code) in the desktop; written by tests/plugin/test_installer.py.
import importlib.util, json, sys, traceback
from pathlib import Path

import qgis.utils
from qgis.core import Qgis, QgsApplication, QgsProject
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtWidgets import QApplication, QPushButton

CFG = json.loads(r"""__CONFIG__""")
STATE = {"stage": "started"}
KEEP = []


def save():
    Path(CFG["status"]).write_text(json.dumps(STATE, indent=2, default=str))


def leave():
    save()
    QgsProject.instance().removeAllMapLayers()
    QgsProject.instance().setDirty(False)
    QTimer.singleShot(300, qgis.utils.iface.actionExit().trigger)
    QTimer.singleShot(10000, lambda: __import__("os")._exit(0))


def guarded(fn):
    def wrapper(*args):
        try:
            fn(*args)
        except Exception:
            STATE["error"] = traceback.format_exc()
            leave()
    return wrapper


@guarded
def start():
    iface = qgis.utils.iface
    iface.mainWindow().setGeometry(0, 0, *CFG["window"])
    plugin = qgis.utils.plugins.get("roadseg_plugin")
    STATE["plugin_loaded"] = plugin is not None
    from roadseg_plugin.install import deps, packages
    STATE["folder"] = str(packages.packages_dir())
    STATE["folder_first_on_path"] = sys.path.index(STATE["folder"]) < sys.path.index("/usr/lib/python3/dist-packages")
    STATE["missing_at_load"] = deps.missing_dependencies()
    STATE["torch_importable"] = importlib.util.find_spec("torch") is not None
    bar = iface.messageBar()
    STATE["bar_at_load"] = [item.text() for item in bar.items()]
    layer = iface.addRasterLayer(CFG["raster"], CFG["layer_name"])
    QgsProject.instance().setCrs(layer.crs())
    iface.setActiveLayer(layer)
    iface.mapCanvas().setExtent(layer.extent())
    KEEP.append(layer)
    plugin.action.trigger()  # Segment roads with packages missing: the same one line, no dialog
    STATE["bar_after_click"] = [item.text() for item in bar.items()]
    for item in bar.items():  # QGIS's own notes (a datum transform) would hide RoadSeg's line
        if "packages" not in item.text():
            bar.popWidget(item)
    QTimer.singleShot(2000, open_installer)


@guarded
def open_installer():
    iface = qgis.utils.iface
    bar = iface.messageBar()
    iface.mapCanvas().waitWhileRendering()
    for item in bar.items():
        if "packages" not in item.text():
            bar.popWidget(item)
    QApplication.processEvents()
    iface.mainWindow().grab().save(CFG["shots"] + "/at_load.png")
    plugin = qgis.utils.plugins["roadseg_plugin"]
    buttons = [b for item in bar.items() for b in item.findChildren(QPushButton) if b.text() == "Install packages..."]
    buttons[0].click()
    installer = plugin.installer
    installer.move(260, 120)
    KEEP.append(installer)
    STATE["installer_missing"] = installer.missing_labels["cpu"].text()
    STATE["stage"] = "installing"
    save()
    installer.radios["cpu"].setChecked(True)
    installer.details_button.setChecked(True)  # the manual route too, for the screenshot
    installer.resize(820, 900)
    installer.install_button.click()
    QTimer.singleShot(500, poll)


@guarded
def poll():
    installer = KEEP[1]
    if not STATE.get("shot_running") and installer.progress.value() >= 40:
        installer.grab().save(CFG["shots"] + "/installer_running.png")
        STATE["shot_running"] = True
    if not installer.outcome:
        QTimer.singleShot(500, poll)
        return
    STATE["installer"] = {"outcome": installer.outcome, "status": installer.status.text(),
                          "progress": installer.progress.value(), "log_lines": installer.log_view.blockCount()}
    QApplication.processEvents()
    installer.grab().save(CFG["shots"] + "/installer_done.png")
    save()
    if installer.outcome != "ready":
        raise RuntimeError(f"installer: {installer.status.text()}")
    installer.close()
    QTimer.singleShot(300, segment)


@guarded
def segment():
    from roadseg_plugin.gui.dialog import SegmentDialog
    plugin = qgis.utils.plugins["roadseg_plugin"]
    STATE["bar_after_install"] = [item.text() for item in qgis.utils.iface.messageBar().items()]

    def press_run():
        dialog = QApplication.activeModalWidget()
        STATE["dialog"] = type(dialog).__name__
        if isinstance(dialog, SegmentDialog):
            dialog.device_combo.setCurrentText("cpu")
            dialog.buttons.button(dialog.buttons.Ok).click()
        elif dialog is not None:
            dialog.reject()

    QTimer.singleShot(1000, press_run)
    plugin.action.trigger()  # the real button: dialog, Run, background task
    task = plugin.tasks[-1]
    KEEP.append(task)
    STATE["stage"] = "segmenting"
    save()
    task.taskCompleted.connect(lambda: QTimer.singleShot(800, finish))
    task.taskTerminated.connect(lambda: QTimer.singleShot(800, finish))


@guarded
def finish():
    task = KEEP[2]
    outcome = task.outcome
    STATE["outcome"] = {"status": outcome.status.value, "message": outcome.message, "n_lines": outcome.n_lines,
                        "warnings": outcome.warnings}
    layers = QgsProject.instance().mapLayers().values()
    STATE["layers"] = sorted(l.name() for l in layers)
    roads = [l for l in layers if l.name().startswith("Roads")]
    if roads:
        symbol = roads[0].renderer().symbol()
        STATE["road_style"] = {"color": symbol.color().name(), "width": symbol.width(),
                               "renderer": roads[0].renderer().type()}
    STATE["torch_loaded"] = "torch" in sys.modules
    bar = qgis.utils.iface.messageBar()
    bar.clearWidgets()
    if outcome.ok:
        bar.pushMessage("RoadSeg", outcome.message, Qgis.Success, 0)
    QTimer.singleShot(1500, grab)


@guarded
def grab():
    canvas = qgis.utils.iface.mapCanvas()
    canvas.waitWhileRendering()
    QgsApplication.processEvents()
    qgis.utils.iface.mainWindow().grab().save(CFG["shots"] + "/after_install.png")
    STATE["stage"] = "done"
    leave()


QTimer.singleShot(CFG["start_delay_ms"], start)
'''


def desktop():
    """scripts/screenshot.py: how the project drives the real QGIS desktop under Xvfb."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import screenshot

    return screenshot


def georeferenced_tile(path: Path) -> Path:
    """A real Massachusetts tile crop (scripts/screenshot.py's), else the shipped sample, as a GeoTIFF."""
    screenshot = desktop()
    tile = screenshot.DATA / screenshot.DEFAULT_TILE
    if tile.is_file():
        return screenshot.write_georeferenced_tile(tile, path, screenshot.DEFAULT_CROP)
    from tests.core.test_torch_free import write_geotiff

    return write_geotiff(path)


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("xvfb-run") and Path("/usr/bin/qgis").is_file()),
                    reason="needs /usr/bin/qgis and xvfb-run")
def test_real_qgis_user_installs_the_packages_and_segments_roads(tmp_path):
    from tests.plugin.test_package import build

    profiles, home, shots = tmp_path / "profiles", tmp_path / "home", tmp_path / "shots"
    profile = profiles / "profiles" / "default"
    for folder in (home / "runtime", shots):
        folder.mkdir(parents=True, mode=0o700)
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "install_plugin.py"), "--profile", str(profile),
                           "--zip", str(build(tmp_path / "dist")), "--packages", "none"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = packages.packages_dir(profile, "3.11")
    assert not folder.exists()  # empty: nothing installed yet
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": str(home / "runtime"), "LANG": "C.UTF-8"}
    seen = subprocess.run(["/usr/bin/python3", "-c", "import importlib.util as u; "
                           "print([m for m in ('torch', 'rasterio', 'onnxruntime', 'sknw') if u.find_spec(m)])"],
                          capture_output=True, text=True, env=env, check=True)
    assert seen.stdout.strip() == "[]", "QGIS's Python must not see this environment's packages"
    config = {"raster": str(georeferenced_tile(tmp_path / "tile_epsg26986.tif")), "layer_name": "Massachusetts tile",
              "status": str(tmp_path / "status.json"), "shots": str(shots), "window": [1600, 1000],
              "start_delay_ms": 3000}
    startup = tmp_path / "startup.py"
    startup.write_text(STARTUP.replace("__CONFIG__", json.dumps(config)))
    desktop().run_desktop(startup, profiles, env, tmp_path, tmp_path / "qgis.log", 1500, qgis="/usr/bin/qgis")
    state = json.loads((tmp_path / "status.json").read_text()) if (tmp_path / "status.json").is_file() else {}
    keep = os.environ.get("ROADSEG_SCREENSHOTS")
    if keep:
        for name, target in (("installer_running.png", "screenshot_installer.png"),
                             ("after_install.png", "screenshot_after_install.png")):
            if (shots / name).is_file():
                shutil.copyfile(shots / name, Path(keep) / target)
    tail = (tmp_path / "qgis.log").read_text(errors="replace")[-3000:]
    assert state.get("stage") == "done", (json.dumps(state, indent=1)[-4000:], tail)
    assert state["plugin_loaded"] and state["folder"] == str(folder) and state["folder_first_on_path"]
    assert {"rasterio", "sknw", "onnxruntime"} <= set(state["missing_at_load"]) and not state["torch_importable"]
    assert len(state["bar_at_load"]) == 1 and "\n" not in state["bar_at_load"][0]
    assert [text for text in state["bar_after_click"] if "packages" in text] == state["bar_at_load"]  # shown once
    assert state["installer"]["outcome"] == "ready" and state["installer"]["progress"] == 100
    assert not [text for text in state["bar_after_install"] if "packages" in text]  # QGIS's own notes may stay
    assert state["dialog"] == "SegmentDialog"
    assert state["outcome"]["status"] == "ok" and state["outcome"]["n_lines"] > 5, state["outcome"]
    assert any(name.startswith("Roads") for name in state["layers"])
    assert state["road_style"]["renderer"] == "singleSymbol" and state["road_style"]["width"] > 0.3
    assert not state["torch_loaded"]
    assert (folder / "onnxruntime").is_dir() and not (folder / "torch").exists()
    for name in ("at_load.png", "installer_running.png", "installer_done.png", "after_install.png"):
        assert (shots / name).stat().st_size > 20000, name
