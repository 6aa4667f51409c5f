"""RoadSegPlugin in a real (offscreen) QGIS with pytest-qgis's iface: action, menu, provider, deps."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("qgis.core")

from qgis.core import Qgis, QgsApplication  # noqa: E402
from qgis.PyQt.QtWidgets import QToolBar  # noqa: E402

import roadseg_plugin  # noqa: E402
from roadseg_plugin.gui.params import SegmentParams  # noqa: E402
from roadseg_plugin.gui.plugin import ACTION_TEXT, MENU, RoadSegPlugin  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def plugin(qgis_iface, qgis_processing, qgis_new_project):
    qgis_iface.messageBar().clear_messages()
    instance = roadseg_plugin.classFactory(qgis_iface)
    instance.initGui()
    yield instance
    if instance.action is not None:
        instance.unload()


def _toolbar_actions(iface) -> list:
    return [a for tb in iface.mainWindow().findChildren(QToolBar) for a in tb.actions()]


def test_class_factory_returns_the_plugin(qgis_iface):
    assert isinstance(roadseg_plugin.classFactory(qgis_iface), RoadSegPlugin)


def test_init_gui_adds_action_menu_and_toolbar(plugin, qgis_iface):
    action = plugin.action
    assert action is not None and action.text() == ACTION_TEXT
    assert not action.icon().isNull()
    assert action in _toolbar_actions(qgis_iface)
    qgis_iface.addPluginToRasterMenu.assert_called_with(MENU, action)
    # Dependencies are present in the test environment: no message.
    assert qgis_iface.messageBar().get_messages(Qgis.Warning) == []


def test_init_gui_registers_the_processing_provider(plugin):
    registry = QgsApplication.processingRegistry()
    provider = registry.providerById("roadseg")
    assert provider is not None and provider is plugin.provider
    ids = {alg.name() for alg in provider.algorithms()}
    assert {"segmentroads", "vectorisemask"} <= ids


def test_unload_removes_action_toolbar_and_provider(plugin, qgis_iface):
    action = plugin.action
    plugin.unload()
    QgsApplication.processEvents()
    assert plugin.action is None and plugin.toolbar is None
    assert action not in _toolbar_actions(qgis_iface)
    qgis_iface.removePluginRasterMenu.assert_called_with(MENU, action)
    assert QgsApplication.processingRegistry().providerById("roadseg") is None


def test_load_unload_twice(qgis_iface, qgis_processing):
    for _ in range(2):
        instance = roadseg_plugin.classFactory(qgis_iface)
        instance.initGui()
        instance.unload()
    QgsApplication.processEvents()
    assert not [a for a in _toolbar_actions(qgis_iface) if a.text() == ACTION_TEXT]
    assert QgsApplication.processingRegistry().providerById("roadseg") is None


def test_plugin_module_does_not_import_torch_or_rasterio():
    code = ("import sys; import roadseg_plugin; import roadseg_plugin.gui.plugin; "
            "heavy = [m for m in ('torch', 'rasterio', 'geopandas') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_action_opens_the_dialog_and_runs_the_task(plugin, qgis_iface, road_model, tmp_path):
    """The whole user path: click Segment roads, press Run, wait, get a road layer."""
    import time

    from qgis.core import QgsProject, QgsRasterLayer
    from qgis.PyQt.QtCore import QTimer
    from qgis.PyQt.QtWidgets import QApplication

    from roadseg_plugin.gui.dialog import SegmentDialog
    from tests.plugin.conftest import write_road_geotiff

    raster = QgsRasterLayer(str(write_road_geotiff(tmp_path / "area.tif", size=96, seed=4)[0]), "aerial")
    QgsProject.instance().addMapLayer(raster)
    qgis_iface.setActiveLayer(raster)
    seen: list[str] = []

    def press_run() -> None:
        dialog = QApplication.activeModalWidget()
        if not isinstance(dialog, SegmentDialog):
            seen.append(f"no Segment roads dialog but {dialog!r}")
            if dialog is not None:
                dialog.reject()
            return
        seen.append(dialog.layer_combo.currentLayer().name())
        dialog.model_widget.setFilePath(str(road_model))
        dialog.device_combo.setCurrentText("cpu")
        dialog.buttons.button(dialog.buttons.Ok).click()

    QTimer.singleShot(200, press_run)
    plugin.action.trigger()  # blocks in the modal dialog until press_run clicks Run
    assert seen == ["aerial"]
    task = plugin.tasks[-1]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (task.outcome is None or (
            task.outcome.ok and not QgsProject.instance().mapLayersByName("Roads (aerial)"))):
        QgsApplication.processEvents()
        time.sleep(0.01)
    assert task.outcome is not None and task.outcome.ok, task.outcome and task.outcome.message
    lines = QgsProject.instance().mapLayersByName("Roads (aerial)")[0]
    assert lines.crs().authid() == "EPSG:32619" and lines.featureCount() > 0


def test_shapely_works_in_this_qgis():
    from roadseg_plugin.install.deps import native_library_problem

    assert native_library_problem() == ""


def test_broken_shapely_stops_the_action_with_one_clear_message(plugin, qgis_iface, monkeypatch):
    """In the QGIS desktop a PyPI shapely whose GEOS differs from QGIS's fails (shapely#1186)."""
    import shapely

    def broken(*args, **kwargs):
        raise shapely.errors.GEOSException("IllegalArgumentException: WKB output dimension must be 2 or 3")

    monkeypatch.setattr(shapely, "to_wkb", broken)
    bar = qgis_iface.messageBar()
    bar.clear_messages()
    plugin.action.trigger()  # would block in the dialog if the check let it through
    errors = bar.get_messages(Qgis.Critical)
    assert len(errors) == 1
    assert "--no-binary shapely" in errors[0] and "WKB output dimension" in errors[0]
    bar.clear_messages()
    assert plugin.start(SegmentParams(layer_id="any")) is None  # scripts calling start() directly
    assert len(bar.get_messages(Qgis.Critical)) == 1
