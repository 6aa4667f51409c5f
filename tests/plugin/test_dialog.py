"""The Segment roads dialog in a real (offscreen) QGIS: layers, model defaults, extents, result."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("qgis.core")
torch = pytest.importorskip("torch")

from qgis.core import (  # noqa: E402
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsGeometry,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)

from roadseg_plugin.core.params import BUNDLED_MODEL, InferenceParams, VectoriseParams  # noqa: E402
from roadseg_plugin.gui.dialog import EXTENT_CANVAS, EXTENT_LAYER, EXTENT_POLYGONS, SegmentDialog  # noqa: E402
from roadseg_plugin.gui.params import SegmentParams  # noqa: E402
from tests.plugin.conftest import (  # noqa: E402
    UTM19_ORIGIN,
    assert_options_arrived,
    option_table,
    write_road_geotiff,
)


@pytest.fixture
def model_037(tmp_path: Path) -> Path:
    """A tiny checkpoint whose metadata threshold (0.37) differs from every default."""
    from roadseg_plugin.core.checkpoint import ModelMeta, save_checkpoint
    from roadseg_plugin.core.unet import build_model

    config = {"in_channels": 3, "base_channels": 4, "depth": 2}
    path = tmp_path / "model037.pt"
    save_checkpoint(path, build_model("unet", **config),
                    ModelMeta(arch_config=config, tile=64, overlap=16, threshold=0.37))
    return path


@pytest.fixture
def dialog(qgis_iface, road_raster_layer):
    dlg = SegmentDialog(qgis_iface)
    yield dlg
    dlg.deleteLater()


def _select_extent(dlg: SegmentDialog, mode: str) -> None:
    dlg.extent_combo.setCurrentIndex(dlg.extent_combo.findData(mode))


def test_lists_loaded_raster_layers_only(qgis_iface, road_raster_layer, tmp_path):
    from qgis.core import QgsProject

    second = QgsRasterLayer(str(write_road_geotiff(tmp_path / "second.tif", seed=3)[0]), "second")
    lines = QgsVectorLayer("LineString?crs=EPSG:32619", "some lines", "memory")
    QgsProject.instance().addMapLayers([second, lines])
    dlg = SegmentDialog(qgis_iface)
    names = {dlg.layer_combo.layer(i).name() for i in range(dlg.layer_combo.count())}
    assert names == {"aerial", "second"}
    dlg.deleteLater()


def test_device_list_and_defaults(dialog):
    from roadseg_plugin.adapters.options import devices as devices_offered  # the one list, shared with Processing

    devices = [dialog.device_combo.itemText(i) for i in range(dialog.device_combo.count())]
    assert devices[:2] == ["auto", "cpu"]
    assert ("cuda" in devices) == torch.cuda.is_available()
    assert devices == devices_offered()
    assert dialog.extent_combo.currentData() == EXTENT_LAYER
    assert not dialog.polygon_combo.isEnabled()
    assert dialog.output_path() is None  # empty output field = temporary layer
    assert not dialog.probability_check.isChecked()


def test_threshold_is_the_models_unless_unticked(dialog, model_037):
    dialog.model_widget.setFilePath(str(model_037))
    assert dialog.model_threshold_check.isChecked() and not dialog.threshold_spin.isEnabled()
    assert dialog.threshold_spin.value() == pytest.approx(0.37)  # shown, but left to the model
    assert "0.37" in dialog.model_info.text()
    params = dialog.params()
    assert params.inference.threshold is None
    assert params.inference.model == str(model_037)
    dialog.model_threshold_check.setChecked(False)
    assert dialog.threshold_spin.isEnabled()
    assert dialog.params().inference.threshold == pytest.approx(0.37)


def test_left_alone_the_dialog_decides_no_option(dialog, road_raster_layer):
    """Every option keeps the core's default (the model: the bundled one, shown by its path)."""
    params = dialog.params()
    assert params.inference == InferenceParams(model=str(BUNDLED_MODEL))
    assert params.vectorise == VectoriseParams()
    assert params.output is None and params.layer_id == road_raster_layer.id()
    assert dialog.advanced.isCollapsed()


def _set_widget(widget, value) -> None:
    from qgis.PyQt.QtWidgets import QAbstractSpinBox, QCheckBox, QComboBox, QLineEdit

    if isinstance(widget, QCheckBox):
        widget.setChecked(value)
    elif isinstance(widget, QComboBox):
        index = widget.findData(value)
        assert index >= 0, f"{widget.objectName()} does not offer {value!r}"
        widget.setCurrentIndex(index)
    elif isinstance(widget, QLineEdit):
        widget.setText(",".join(map(str, value)))
    elif isinstance(widget, QAbstractSpinBox):
        widget.setValue(value)
    else:
        raise AssertionError(f"no way to set {widget!r}")


def test_every_option_is_carried_into_the_params(dialog, road_raster_layer, model_037, qgis_iface, tmp_path):
    """Each option of InferenceParams / VectoriseParams set in the widgets arrives in SegmentParams."""
    canvas = qgis_iface.mapCanvas()
    canvas.setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:32619"))
    x0, y0 = UTM19_ORIGIN
    canvas.setExtent(QgsRectangle(x0 + 10, y0 - 50, x0 + 40, y0 - 20))
    _select_extent(dialog, EXTENT_CANVAS)
    table = option_table(model_037, extent=dialog.extent())
    hand_made = {  # the main form's own widgets
        "model": lambda v: dialog.model_widget.setFilePath(v),
        "device": lambda v: dialog.device_combo.setCurrentText(v),
        "threshold": lambda v: (dialog.model_threshold_check.setChecked(False), dialog.threshold_spin.setValue(v)),
        "extent": lambda v: None,  # the canvas extent, chosen above
        "format": lambda v: dialog.output_widget.setFilePath(str(tmp_path / f"roads.{v}")),  # from the extension
    }
    assert not set(hand_made) & set(dialog.editors)
    for name, value in table.items():
        if name in hand_made:
            hand_made[name](value)
        else:
            assert name in dialog.editors, f"the dialog has no widget for the option {name}"
            _set_widget(dialog.editors[name][0], value)
    params = dialog.params()
    assert_options_arrived(table, params.inference, params.vectorise)
    assert params.output == str(tmp_path / f"roads.{table['format']}")


def test_corrupt_model_disables_run(dialog, tmp_path):
    from qgis.PyQt.QtWidgets import QDialogButtonBox

    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint at all")
    dialog.model_widget.setFilePath(str(bad))
    assert not dialog.buttons.button(QDialogButtonBox.Ok).isEnabled()
    assert "broken.pt" in dialog.model_info.text()


def test_returns_params_with_the_chosen_values(dialog, road_raster_layer, model_037, tmp_path):
    dialog.layer_combo.setLayer(road_raster_layer)
    dialog.model_widget.setFilePath(str(model_037))
    dialog.device_combo.setCurrentText("cpu")
    dialog.model_threshold_check.setChecked(False)
    dialog.threshold_spin.setValue(0.6)
    dialog.editors["min_length"][0].setValue(42.0)
    dialog.output_widget.setFilePath(str(tmp_path / "out" / "roads.shp"))
    dialog.probability_check.setChecked(True)

    params = dialog.params()
    assert isinstance(params, SegmentParams)
    assert params == SegmentParams(
        layer_id=road_raster_layer.id(),
        inference=InferenceParams(model=str(model_037), device="cpu", extent=None, threshold=0.6),
        vectorise=VectoriseParams(min_length=42.0, format="shp"), output=str(tmp_path / "out" / "roads.shp"),
        add_probability=True, layer_name="Roads (aerial)")

    dialog.output_widget.setFilePath(str(tmp_path / "noext"))
    assert dialog.params().output == str(tmp_path / "noext.gpkg")
    dialog.output_widget.setFilePath(str(tmp_path / "roads.txt"))
    with pytest.raises(ValueError, match="roads.txt"):
        dialog.params()


def test_advanced_options_and_a_bad_value(dialog):
    from qgis.PyQt.QtWidgets import QComboBox, QSpinBox

    assert dialog.advanced.isCollapsed()
    assert {"backend", "tile", "overlap", "batch_size", "bands", "tta", "binary", "gsd", "spur_length", "gap",
            "tolerance", "smooth"} <= set(dialog.editors)
    tile = dialog.editors["tile"][0]
    assert isinstance(tile, QSpinBox) and "the model's" in tile.specialValueText()
    backend = dialog.editors["backend"][0]
    assert isinstance(backend, QComboBox) and backend.currentData() == "auto"
    dialog.editors["bands"][0].setText("3,two,1")
    dialog.accept()
    assert dialog.result() != dialog.Accepted
    assert dialog.error_label.text().startswith("\"Bands\" = 3,two,1:")  # the label, as QGIS shows options


def test_canvas_extent_is_reprojected_and_clipped(dialog, qgis_iface, road_raster_layer):
    canvas = qgis_iface.mapCanvas()
    canvas.setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:32619"))
    x0, y0 = UTM19_ORIGIN
    canvas.setExtent(QgsRectangle(x0 + 10, y0 - 50, x0 + 40, y0 - 20))
    shown = canvas.extent()  # the canvas widens to its aspect ratio
    _select_extent(dialog, EXTENT_CANVAS)
    xmin, ymin, xmax, ymax = dialog.params().inference.extent
    layer_extent = road_raster_layer.extent()
    assert xmin == pytest.approx(max(shown.xMinimum(), layer_extent.xMinimum()))
    assert xmax == pytest.approx(min(shown.xMaximum(), layer_extent.xMaximum()))
    assert ymin == pytest.approx(max(shown.yMinimum(), layer_extent.yMinimum()))
    assert ymax == pytest.approx(min(shown.yMaximum(), layer_extent.yMaximum()))

    # A view in another CRS is brought into the raster's CRS.
    canvas.setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:4326"))
    from qgis.core import QgsCoordinateTransform, QgsProject

    to_wgs = QgsCoordinateTransform(road_raster_layer.crs(), QgsCoordinateReferenceSystem("EPSG:4326"),
                                    QgsProject.instance())
    canvas.setExtent(to_wgs.transformBoundingBox(QgsRectangle(x0 + 20, y0 - 60, x0 + 60, y0 - 30)))
    xmin, ymin, xmax, ymax = dialog.params().inference.extent
    assert x0 - 1 < xmin < x0 + 25 and y0 - 96 <= ymin < y0 - 55
    canvas.setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:32619"))


def test_polygons_are_the_areas_to_process_in_raster_crs(dialog, road_raster_layer):
    """As Deepness offers it: a polygon layer's polygons (the selected ones when some are) are the
    areas processed; the extent is their bounding box on the raster."""
    from qgis.core import QgsCoordinateTransform, QgsProject

    wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
    polygons = QgsVectorLayer("Polygon?crs=EPSG:4326", "areas", "memory")
    to_wgs = QgsCoordinateTransform(road_raster_layer.crs(), wgs84, QgsProject.instance())
    x0, y0 = UTM19_ORIGIN
    feats = []
    for rect in (QgsRectangle(x0 + 10, y0 - 40, x0 + 30, y0 - 20), QgsRectangle(x0 + 500, y0 - 900,
                                                                                 x0 + 520, y0 - 880)):
        feat = QgsFeature()
        feat.setGeometry(QgsGeometry.fromRect(to_wgs.transformBoundingBox(rect)))
        feats.append(feat)
    empty = QgsVectorLayer("Polygon?crs=EPSG:4326", "nothing drawn", "memory")
    QgsProject.instance().addMapLayers([polygons, empty])
    dialog.polygon_combo.setLayer(empty)
    _select_extent(dialog, EXTENT_POLYGONS)
    assert dialog.polygon_combo.isEnabled()
    with pytest.raises(ValueError, match="has no polygons"):
        dialog.params()
    dialog.accept()
    assert dialog.result() != dialog.Accepted
    assert "has no polygons" in dialog.error_label.text()

    polygons.dataProvider().addFeatures(feats)
    dialog.polygon_combo.setLayer(polygons)
    params = dialog.params()  # nothing selected: all polygons, clipped to the raster
    xmin, ymin, xmax, ymax = params.inference.extent
    assert xmin == pytest.approx(x0 + 10, abs=0.5) and ymax == pytest.approx(y0 - 20, abs=0.5)
    assert QgsGeometry.fromWkt(params.aoi).area() == pytest.approx(2 * 400, rel=0.1)  # in the raster's CRS

    polygons.selectByIds([polygons.getFeatures().__next__().id()])
    params = dialog.params()
    xmin, ymin, xmax, ymax = params.inference.extent
    assert xmin == pytest.approx(x0 + 10, abs=0.5) and xmax == pytest.approx(x0 + 30, abs=0.5)
    assert ymin == pytest.approx(y0 - 40, abs=0.5) and ymax == pytest.approx(y0 - 20, abs=0.5)
    assert QgsGeometry.fromWkt(params.aoi).area() == pytest.approx(400, rel=0.1)

    far = [f.id() for f in polygons.getFeatures()][1]
    polygons.selectByIds([far])
    with pytest.raises(ValueError, match="does not overlap"):
        dialog.params()
    _select_extent(dialog, EXTENT_LAYER)
    assert dialog.params().aoi is None


def test_closed_advanced_group_leaves_no_gap(dialog):
    """The window is as tall as its content with Advanced closed, and grows when it opens."""
    from qgis.core import QgsApplication

    dialog.show()
    for _ in range(3):
        QgsApplication.processEvents()
    closed = dialog.height()
    assert closed <= dialog.sizeHint().height() + 2
    assert dialog.advanced.geometry().top() - dialog.output_widget.geometry().bottom() < 80
    dialog.advanced.setCollapsed(False)
    for _ in range(3):
        QgsApplication.processEvents()
    assert dialog.height() > closed + 100
    dialog.advanced.setCollapsed(True)
    for _ in range(3):
        QgsApplication.processEvents()
    assert dialog.height() == closed


def test_accept_closes_with_valid_values(dialog, tiny_checkpoint):
    dialog.model_widget.setFilePath(str(tiny_checkpoint))
    dialog.accept()
    assert dialog.result() == dialog.Accepted


def test_missing_model_file_says_so(dialog, tmp_path):
    from qgis.PyQt.QtWidgets import QDialogButtonBox

    dialog.model_widget.setFilePath(str(tmp_path / "nowhere.pt"))
    assert not dialog.buttons.button(QDialogButtonBox.Ok).isEnabled()
    assert "No model file" in dialog.model_info.text() and "nowhere.pt" in dialog.model_info.text()


def test_a_web_map_is_processed_in_the_map_view(qgis_iface, qgis_new_project, tmp_path):
    """An XYZ layer's whole extent is the world: the dialog offers the map view (or polygons) instead."""
    from PIL import Image

    (tmp_path / "tiles" / "1" / "0").mkdir(parents=True)
    Image.new("RGB", (256, 256), (90, 120, 60)).save(tmp_path / "tiles" / "1" / "0" / "0.png")
    xyz = QgsRasterLayer(f"type=xyz&url=file://{tmp_path}/tiles/%7Bz%7D/%7Bx%7D/%7By%7D.png&zmin=1&zmax=1",
                         "basemap", "wms")
    assert xyz.isValid()
    qgis_new_project.addMapLayer(xyz)
    qgis_iface.setActiveLayer(xyz)
    dlg = SegmentDialog(qgis_iface)
    assert dlg.layer_combo.currentLayer() == xyz
    assert dlg.extent_combo.currentData() == EXTENT_CANVAS  # chosen for it
    whole = dlg.extent_combo.model().item(dlg.extent_combo.findData(EXTENT_LAYER))
    assert not whole.isEnabled() and "whole world" in whole.toolTip()
    _select_extent(dlg, EXTENT_LAYER)  # set from code all the same: Run says what to choose
    dlg.accept()
    assert dlg.result() != dlg.Accepted and "whole extent is the whole world" in dlg.error_label.text()
    assert "Current map view" in dlg.error_label.text()
    dlg.deleteLater()


def test_teach_it_your_imagery_opens_the_training_dialog_for_this_layer_and_model(
        dialog, road_raster_layer, roadseg_provider, tiny_checkpoint, qgis_iface, monkeypatch):
    """The dialog's route to "Train model from drawn road lines": Processing's own dialog opens
    with this dialog's layer and model filled in (read from the real widgets, then closed).
    pytest-qgis's interface has no browser model; the dialog gets a real one, as in the desktop."""
    from processing.gui.AlgorithmDialog import AlgorithmDialog
    from qgis.gui import QgsBrowserGuiModel
    from qgis.PyQt.QtCore import QTimer
    from qgis.PyQt.QtWidgets import QApplication

    browser = QgsBrowserGuiModel()
    monkeypatch.setattr(qgis_iface, "browserModel", lambda: browser, raising=False)
    dialog.model_widget.setFilePath(str(tiny_checkpoint))
    seen: dict = {}

    def inspect_and_close() -> None:
        opened = [w for w in QApplication.topLevelWidgets() if isinstance(w, AlgorithmDialog) and w.isVisible()]
        if not opened:
            QTimer.singleShot(50, inspect_and_close)
            return
        panel = opened[0].mainWidget()
        seen["algorithm"] = opened[0].algorithm().id()
        seen["model"] = panel.wrappers["INIT_MODEL"].parameterValue()
        seen["raster"] = panel.wrappers["RASTER"].parameterValue()
        opened[0].reject()

    QTimer.singleShot(50, inspect_and_close)
    assert dialog.train_button.text() == "Teach it your imagery..." and "10 minutes" in dialog.train_button.toolTip()
    assert dialog.open_training() == {}  # closed without running: the model stays
    assert seen["algorithm"] == "roadseg:trainfromlines" and seen["model"] == str(tiny_checkpoint)
    assert road_raster_layer.id() in str(seen["raster"]) or road_raster_layer.source() in str(seen["raster"])
    assert dialog.model_widget.filePath() == str(tiny_checkpoint)
