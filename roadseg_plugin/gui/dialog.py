"""The "Segment roads" dialog: choose a raster layer, a model and options; returns a `SegmentParams`.

Widgets are built in code. The main form holds what most runs change: layer, model, device,
the area to process (as Deepness offers it: the whole layer, the current map view, or the
polygons of a layer, its selected ones when some are selected), threshold, minimum length and
output. A web map (XYZ, WMS) has no whole extent to process: the map view is chosen for it.
The "Advanced" group (collapsed) holds one editor per other option of `InferenceParams` /
`VectoriseParams`, generated from the fields' metadata (label, unit, help, default, choices), so
an option added to the core appears here by itself.
An optional option left at "Default" is None: the model's or the core's own value. The model's
metadata (read without torch, .pt or .onnx) is shown and gives the threshold's starting value.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsGeometry,
    QgsMapLayerProxyModel,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis.gui import QgsCollapsibleGroupBox, QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QVBoxLayout,
    QWidget,
)

from ..adapters.options import MODEL_FILTER, devices, option_label, qgis_message
from ..adapters.styles import ROADS_NAME
from ..core.params import BUNDLED_MODEL, VECTOR_EXTENSIONS, InferenceParams, VectoriseParams, describe
from ..log import PROVIDER_ID
from .option_editors import option_editor
from .params import SegmentParams

EXTENT_LAYER = "layer"
EXTENT_CANVAS = "canvas"
EXTENT_POLYGONS = "polygons"
OUTPUT_FILTER = "GeoPackage (*.gpkg);;ESRI Shapefile (*.shp);;GeoJSON (*.geojson);;FlatGeobuf (*.fgb)"
TEMPORARY_PLACEHOLDER = "[Create temporary layer]"
HAND_MADE = ("model", "device", "extent", "threshold")  # main-form widgets of their own
TRAIN_TEXT = "Teach it your imagery..."
TRAIN_TIP = ("Missed roads? Digitise the roads of a few tiles as a line layer, then fine-tune the model on them "
             "(Train model from drawn road lines, about 10 minutes on a CPU); the trained model becomes this "
             "dialog's model")
FROM_OUTPUT = ("format",)  # the output file's extension decides it


class SegmentDialog(QDialog):
    """Modal dialog; after `exec_()` returns Accepted, `params()` is the run to start.

    Attributes:
        editors: option name -> (widget, reader) for the generated editors (main form and Advanced).
    """

    def __init__(self, iface: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.iface = iface
        self.meta: Any = None
        self.setWindowTitle("Segment roads")
        self.setObjectName("RoadSegSegmentDialog")
        self.setMinimumWidth(560)

        self.layer_combo = QgsMapLayerComboBox(self)
        self.layer_combo.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self.layer_combo.setAllowEmptyLayer(False)

        self.model_widget = QgsFileWidget(self)
        self.model_widget.setStorageMode(QgsFileWidget.GetFile)
        self.model_widget.setFilter(f"{MODEL_FILTER};;All files (*)")
        self.model_widget.setDialogTitle("Choose a RoadSeg model")
        self.model_info = QLabel(self)
        self.model_info.setWordWrap(True)

        self.device_combo = QComboBox(self)
        self.device_combo.addItems(devices(load=True))  # torch is installed by now: ask it for a GPU
        self.device_combo.setCurrentText(describe(InferenceParams, "device")["default"])

        self.extent_combo = QComboBox(self)
        self.extent_combo.addItem("Whole raster layer", EXTENT_LAYER)
        self.extent_combo.addItem("Current map view", EXTENT_CANVAS)
        self.extent_combo.addItem("Polygons of", EXTENT_POLYGONS)
        self.extent_combo.setToolTip("the area to process; with polygons, only their inside (the selected "
                                     "polygons when some are selected, else all)")
        self.polygon_combo = QgsMapLayerComboBox(self)
        self.polygon_combo.setFilters(QgsMapLayerProxyModel.PolygonLayer)
        extent_row = QHBoxLayout()
        extent_row.addWidget(self.extent_combo)
        extent_row.addWidget(self.polygon_combo, 1)

        self.model_threshold_check = QCheckBox("Use the model's threshold", self)
        self.model_threshold_check.setChecked(True)
        self.threshold_spin = QDoubleSpinBox(self)
        self.threshold_spin.setRange(0.01, 0.99)
        self.threshold_spin.setDecimals(2)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setValue(0.5)
        self.threshold_spin.setToolTip(describe(InferenceParams, "threshold")["help"])
        threshold_row = QHBoxLayout()
        threshold_row.addWidget(self.model_threshold_check)
        threshold_row.addWidget(self.threshold_spin, 1)

        self.output_widget = QgsFileWidget(self)
        self.output_widget.setStorageMode(QgsFileWidget.SaveFile)
        self.output_widget.setFilter(OUTPUT_FILTER)
        self.output_widget.setConfirmOverwrite(True)
        self.output_widget.setDialogTitle("Save road lines as")
        self.output_widget.lineEdit().setPlaceholderText(TEMPORARY_PLACEHOLDER)

        self.probability_check = QCheckBox("Add the road probability raster too", self)

        self.error_label = QLabel(self)
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet("color: #b00020;")
        self.error_label.hide()

        self.buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel, self)
        self.buttons.button(QDialogButtonBox.Ok).setText("Run")
        self.train_button = self.buttons.addButton(TRAIN_TEXT, QDialogButtonBox.ActionRole)
        self.train_button.setToolTip(TRAIN_TIP)
        self.train_button.clicked.connect(self.open_training)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)

        form = QFormLayout()
        form.addRow("Raster layer", self.layer_combo)
        form.addRow("Model", self.model_widget)
        form.addRow("", self.model_info)
        form.addRow("Device", self.device_combo)
        form.addRow("Extent", extent_row)
        form.addRow("Threshold", threshold_row)
        self.advanced = QgsCollapsibleGroupBox("Advanced", self)
        self.advanced.setObjectName("RoadSegAdvanced")
        self.advanced.setSaveCollapsedState(False)  # collapsed on every opening
        advanced_form = QFormLayout(self.advanced)
        self.editors: dict[str, tuple[QWidget, Callable[[], Any]]] = {}
        for params_type in (InferenceParams, VectoriseParams):
            for f in fields(params_type):
                if f.name in HAND_MADE or f.name in FROM_OUTPUT:
                    continue
                widget, read = option_editor(params_type, f, self)
                self.editors[f.name] = (widget, read)
                target = advanced_form if describe(params_type, f.name)["advanced"] else form
                label = "" if isinstance(widget, QCheckBox) else option_label(params_type, f.name)
                target.addRow(label, widget)
        form.addRow("Road lines", self.output_widget)
        form.addRow("", self.probability_check)
        self.advanced.setCollapsed(True)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.advanced)
        layout.addStretch(1)  # room the window has beyond its content goes below, not between
        layout.addWidget(self.error_label)
        layout.addWidget(self.buttons)
        # the window fits its content, Advanced open or closed (it was as tall as with Advanced open)
        self.advanced.collapsedStateChanged.connect(lambda _collapsed: QTimer.singleShot(0, self.fit_height))

        self.extent_combo.currentIndexChanged.connect(self._update_extent_widgets)
        self.layer_combo.layerChanged.connect(self._layer_changed)
        self.model_threshold_check.toggled.connect(self._update_threshold_widgets)
        self.model_widget.fileChanged.connect(self._model_changed)
        self._update_extent_widgets()
        self._update_threshold_widgets()
        self._select_active_raster()
        self._layer_changed(self.layer_combo.currentLayer())
        self.model_widget.setFilePath(str(BUNDLED_MODEL))
        self._model_changed(self.model_widget.filePath())

    def showEvent(self, event: Any) -> None:
        # Advanced only really closes once shown; until then the window is as tall as it is open
        super().showEvent(event)
        QTimer.singleShot(0, self.fit_height)

    def fit_height(self) -> None:
        """As tall as the content needs (no empty band above Advanced once it is closed)."""
        self.layout().activate()
        self.resize(self.width(), max(self.sizeHint().height(), self.minimumSizeHint().height()))

    # ------------------------------------------------------------------ reactions
    def open_training(self) -> dict:
        """Processing's "Train model from drawn road lines" dialog for this layer and model; the
        model it writes becomes this dialog's model. Returns the algorithm's results ({} if closed)."""
        import processing

        params: dict[str, Any] = {"INIT_MODEL": self.model_widget.filePath().strip() or str(BUNDLED_MODEL)}
        layer = self.layer_combo.currentLayer()
        if layer is not None:
            params["RASTER"] = [layer.id()]
        results = processing.execAlgorithmDialog(f"{PROVIDER_ID}:trainfromlines", params) or {}
        trained = results.get("OUTPUT_MODEL")
        if trained and Path(trained).is_file():
            self.model_widget.setFilePath(str(trained))
        return results

    def _select_active_raster(self) -> None:
        active = self.iface.activeLayer() if self.iface is not None else None
        if isinstance(active, QgsRasterLayer):
            self.layer_combo.setLayer(active)

    def _update_extent_widgets(self) -> None:
        self.polygon_combo.setEnabled(self.extent_combo.currentData() == EXTENT_POLYGONS)

    def _layer_changed(self, layer: Any) -> None:
        """A web map has no whole extent to process: offer the map view (or polygons) instead."""
        from ..adapters.qgis_reader import is_web_map

        web_map = isinstance(layer, QgsRasterLayer) and is_web_map(layer)
        item = self.extent_combo.model().item(self.extent_combo.findData(EXTENT_LAYER))
        item.setEnabled(not web_map)
        item.setToolTip("a web map's whole extent is the whole world: choose the map view or polygons"
                        if web_map else "")
        if web_map and self.extent_combo.currentData() == EXTENT_LAYER:
            self.extent_combo.setCurrentIndex(self.extent_combo.findData(EXTENT_CANVAS))

    def _update_threshold_widgets(self) -> None:
        self.threshold_spin.setEnabled(not self.model_threshold_check.isChecked())

    def _model_changed(self, path: str) -> None:
        """Read the model's metadata (no torch): its threshold is shown, errors disable Run."""
        from ..core.errors import RoadSegError
        from ..core.params import read_model_info

        self.meta = None
        ok_button = self.buttons.button(QDialogButtonBox.Ok)
        if not path:
            self.model_info.setText("Choose a RoadSeg model (.pt or .onnx)")
            ok_button.setEnabled(False)
            return
        if not Path(path).is_file():
            bundled = Path(path) == BUNDLED_MODEL
            what = "The bundled model is not installed" if bundled else "No model file"
            self.model_info.setText(f"<span style='color:#b00020'>{what} at {path}; "
                                    "choose a RoadSeg model (.pt or .onnx).</span>")
            ok_button.setEnabled(False)
            return
        try:
            self.meta = read_model_info(path)
        except RoadSegError as exc:
            self.model_info.setText(f"<span style='color:#b00020'>{exc}</span>")
            ok_button.setEnabled(False)
            return
        meta = self.meta
        self.threshold_spin.setValue(float(meta.threshold))
        iou = meta.val_metrics.get("iou") or meta.val_metrics.get("val_iou")
        details = [f"{len(meta.bands)} bands", f"{meta.gsd_m:g} m/pixel", f"tile {meta.tile}",
                   f"threshold {meta.threshold:.2f}"]
        if iou:
            details.append(f"validation IoU {float(iou):.2f}")
        self.model_info.setText("Model: " + ", ".join(details))
        ok_button.setEnabled(True)

    # ------------------------------------------------------------------ result
    def extent(self) -> tuple[float, float, float, float] | None:
        """The chosen extent in the raster layer's CRS, clipped to the layer (None: whole layer);
        for polygons, their bounding box.

        Raises:
            ValueError: no layer, no polygons, a web map's whole extent, or the extent misses the raster.
        """
        from ..adapters.qgis_reader import is_web_map

        layer = self.layer_combo.currentLayer()
        if layer is None:
            raise ValueError("Choose a raster layer.")
        mode = self.extent_combo.currentData()
        if mode == EXTENT_LAYER:
            if is_web_map(layer):
                raise ValueError(f"'{layer.name()}' is a web map: its whole extent is the whole world; choose "
                                 '"Current map view" or "Polygons of" in Extent.')
            return None
        if mode == EXTENT_CANVAS:
            canvas = self.iface.mapCanvas()
            rect, crs = canvas.extent(), canvas.mapSettings().destinationCrs()
            rect = to_layer_crs(rect, crs, layer.crs())
        else:
            rect = self.areas().boundingBox()
        clipped = rect.intersect(layer.extent())
        if clipped.isEmpty() or clipped.width() <= 0 or clipped.height() <= 0:
            raise ValueError("The chosen extent does not overlap the raster layer.")
        return (clipped.xMinimum(), clipped.yMinimum(), clipped.xMaximum(), clipped.yMaximum())

    def areas(self) -> QgsGeometry:
        """The chosen polygons (the selected ones when some are selected, else all) as one
        geometry in the raster layer's CRS.

        Raises:
            ValueError: no polygon layer, or it has no polygons.
        """
        layer, polygons = self.layer_combo.currentLayer(), self.polygon_combo.currentLayer()
        if not isinstance(polygons, QgsVectorLayer):
            raise ValueError("Choose a polygon layer: its polygons are the areas to process.")
        features = polygons.selectedFeatures() if polygons.selectedFeatureCount() else polygons.getFeatures()
        parts = [QgsGeometry(f.geometry()) for f in features if f.hasGeometry() and not f.geometry().isEmpty()]
        if not parts:
            raise ValueError(f"'{polygons.name()}' has no polygons; draw some or choose another layer.")
        transform = QgsCoordinateTransform(polygons.crs(), layer.crs(), QgsProject.instance())
        for part in parts:
            if polygons.crs().isValid() and layer.crs().isValid() and polygons.crs() != layer.crs():
                part.transform(transform)
        return QgsGeometry.unaryUnion(parts)

    def output_path(self) -> str | None:
        """The file the user chose (a .gpkg suffix is added when none is given), or None."""
        text = self.output_widget.filePath().strip()
        if not text:
            return None
        if not Path(text).suffix:
            text += ".gpkg"
        return text

    def option_values(self, params_type: type) -> dict[str, Any]:
        """The generated editors' values for the fields of `params_type`."""
        names = {f.name for f in fields(params_type)}
        return {name: read() for name, (_, read) in self.editors.items() if name in names}

    def params(self) -> SegmentParams:
        """The run described by the widgets.

        Raises:
            ValueError: a value is missing or inconsistent (the message says which; a
                `ParamError` names the option).
        """
        layer = self.layer_combo.currentLayer()
        if layer is None:
            raise ValueError("Choose a raster layer (load one into the project first).")
        output = self.output_path()
        threshold = None if self.model_threshold_check.isChecked() else round(self.threshold_spin.value(), 4)
        inference = InferenceParams(
            model=self.model_widget.filePath().strip() or None, device=self.device_combo.currentText(),
            threshold=threshold, extent=self.extent(), **self.option_values(InferenceParams))
        suffix = Path(output).suffix.lower() if output else ""
        vectorise = VectoriseParams(format=VECTOR_EXTENSIONS.get(suffix), **self.option_values(VectoriseParams))
        aoi = self.areas().asWkt() if self.extent_combo.currentData() == EXTENT_POLYGONS else None
        return SegmentParams(layer_id=layer.id(), inference=inference, vectorise=vectorise, output=output,
                             add_probability=self.probability_check.isChecked(),
                             layer_name=ROADS_NAME.format(layer.name()), aoi=aoi)

    def accept(self) -> None:
        """Close only when the values form a valid `SegmentParams`; otherwise say what is wrong."""
        try:
            self.params()
        except ValueError as exc:
            self.error_label.setText(qgis_message(exc))
            self.error_label.show()
            return
        self.error_label.hide()
        super().accept()


def to_layer_crs(rect: QgsRectangle, source: QgsCoordinateReferenceSystem,
                 target: QgsCoordinateReferenceSystem) -> QgsRectangle:
    """Bounding box of `rect` (in `source`) expressed in `target`."""
    if not source.isValid() or not target.isValid() or source == target:
        return QgsRectangle(rect)
    transform = QgsCoordinateTransform(source, target, QgsProject.instance())
    return transform.transformBoundingBox(rect)
