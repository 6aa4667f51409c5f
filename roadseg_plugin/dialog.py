"""The "Segment roads" dialog: choose a raster layer, a model and options; returns a `SegmentParams`.

Widgets are built in code. The model's own metadata (threshold, tile, ground resolution) sets the
defaults, so the bundled model works without touching anything but the layer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsMapLayerProxyModel,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis.gui import QgsFileWidget, QgsMapLayerComboBox
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

from .params import DEFAULT_MIN_LENGTH_M, SegmentParams

EXTENT_LAYER = "layer"
EXTENT_CANVAS = "canvas"
EXTENT_SELECTION = "selection"
MODEL_FILTER = "RoadSeg model (*.pt *.pth);;All files (*)"
OUTPUT_FILTER = "GeoPackage (*.gpkg);;ESRI Shapefile (*.shp);;GeoJSON (*.geojson)"
TEMPORARY_PLACEHOLDER = "[Create temporary layer]"


def available_devices() -> list[str]:
    """'auto' and 'cpu' always; 'cuda' when torch sees a GPU."""
    devices = ["auto", "cpu"]
    try:
        import torch

        if torch.cuda.is_available():
            devices.append("cuda")
    except ImportError:
        pass
    return devices


def read_model_meta(path: str | Path) -> Any:
    """The `ModelMeta` stored in a checkpoint (raises `CheckpointError` with a user-facing message)."""
    from .core.checkpoint import ModelMeta, read_checkpoint

    return ModelMeta.from_dict(read_checkpoint(path).get("meta", {}), path)


def bundled_model_path() -> Path:
    from .core.checkpoint import BUNDLED_MODEL

    return BUNDLED_MODEL


class SegmentDialog(QDialog):
    """Modal dialog; after `exec_()` returns Accepted, `params()` is the run to start."""

    def __init__(self, iface: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.iface = iface
        self.meta: Any = None
        self.setWindowTitle("Segment roads")
        self.setObjectName("RoadSegSegmentDialog")
        self.setMinimumWidth(520)

        self.layer_combo = QgsMapLayerComboBox(self)
        self.layer_combo.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self.layer_combo.setAllowEmptyLayer(False)

        self.model_widget = QgsFileWidget(self)
        self.model_widget.setStorageMode(QgsFileWidget.GetFile)
        self.model_widget.setFilter(MODEL_FILTER)
        self.model_widget.setDialogTitle("Choose a RoadSeg model")
        self.model_info = QLabel(self)
        self.model_info.setWordWrap(True)

        self.device_combo = QComboBox(self)
        self.device_combo.addItems(available_devices())

        self.extent_combo = QComboBox(self)
        self.extent_combo.addItem("Whole raster layer", EXTENT_LAYER)
        self.extent_combo.addItem("Current map view", EXTENT_CANVAS)
        self.extent_combo.addItem("Selected features of", EXTENT_SELECTION)
        self.polygon_combo = QgsMapLayerComboBox(self)
        self.polygon_combo.setFilters(QgsMapLayerProxyModel.PolygonLayer)
        extent_row = QHBoxLayout()
        extent_row.addWidget(self.extent_combo)
        extent_row.addWidget(self.polygon_combo, 1)

        self.threshold_spin = QDoubleSpinBox(self)
        self.threshold_spin.setRange(0.01, 0.99)
        self.threshold_spin.setDecimals(2)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setValue(0.5)
        self.threshold_spin.setToolTip("Probability above which a pixel counts as road; "
                                       "the default comes from the model")

        self.min_length_spin = QDoubleSpinBox(self)
        self.min_length_spin.setRange(0.0, 100000.0)
        self.min_length_spin.setDecimals(1)
        self.min_length_spin.setSuffix(" m")
        self.min_length_spin.setValue(DEFAULT_MIN_LENGTH_M)
        self.min_length_spin.setToolTip("Road lines shorter than this are dropped")

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
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)

        form = QFormLayout()
        form.addRow("Raster layer", self.layer_combo)
        form.addRow("Model", self.model_widget)
        form.addRow("", self.model_info)
        form.addRow("Device", self.device_combo)
        form.addRow("Extent", extent_row)
        form.addRow("Threshold", self.threshold_spin)
        form.addRow("Minimum line length", self.min_length_spin)
        form.addRow("Road lines", self.output_widget)
        form.addRow("", self.probability_check)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.error_label)
        layout.addWidget(self.buttons)

        self.extent_combo.currentIndexChanged.connect(self._update_extent_widgets)
        self.model_widget.fileChanged.connect(self._model_changed)
        self._update_extent_widgets()
        self._select_active_raster()
        self.model_widget.setFilePath(str(bundled_model_path()))
        self._model_changed(self.model_widget.filePath())

    # ------------------------------------------------------------------ reactions
    def _select_active_raster(self) -> None:
        active = self.iface.activeLayer() if self.iface is not None else None
        if isinstance(active, QgsRasterLayer):
            self.layer_combo.setLayer(active)

    def _update_extent_widgets(self) -> None:
        self.polygon_combo.setEnabled(self.extent_combo.currentData() == EXTENT_SELECTION)

    def _model_changed(self, path: str) -> None:
        """Read the model's metadata: its threshold becomes the default, errors disable Run."""
        from .core.errors import RoadSegError

        self.meta = None
        ok_button = self.buttons.button(QDialogButtonBox.Ok)
        if not path:
            self.model_info.setText("Choose a RoadSeg model (.pt)")
            ok_button.setEnabled(False)
            return
        if not Path(path).is_file():
            bundled = Path(path) == bundled_model_path()
            what = "The bundled model is not installed" if bundled else "No model file"
            self.model_info.setText(f"<span style='color:#b00020'>{what} at {path}; "
                                    "choose a RoadSeg model (.pt).</span>")
            ok_button.setEnabled(False)
            return
        try:
            self.meta = read_model_meta(path)
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
        """The chosen extent in the raster layer's CRS, clipped to the layer (None: whole layer).

        Raises:
            ValueError: no layer, nothing selected, or the extent misses the raster.
        """
        layer = self.layer_combo.currentLayer()
        if layer is None:
            raise ValueError("Choose a raster layer.")
        mode = self.extent_combo.currentData()
        if mode == EXTENT_LAYER:
            return None
        if mode == EXTENT_CANVAS:
            canvas = self.iface.mapCanvas()
            rect, crs = canvas.extent(), canvas.mapSettings().destinationCrs()
        else:
            polygons = self.polygon_combo.currentLayer()
            if not isinstance(polygons, QgsVectorLayer):
                raise ValueError("Choose a polygon layer whose selected features bound the area.")
            if polygons.selectedFeatureCount() == 0:
                raise ValueError(f"Select at least one feature in '{polygons.name()}' "
                                 "(or choose another extent).")
            rect, crs = polygons.boundingBoxOfSelected(), polygons.crs()
        rect = to_layer_crs(rect, crs, layer.crs())
        clipped = rect.intersect(layer.extent())
        if clipped.isEmpty() or clipped.width() <= 0 or clipped.height() <= 0:
            raise ValueError("The chosen extent does not overlap the raster layer.")
        return (clipped.xMinimum(), clipped.yMinimum(), clipped.xMaximum(), clipped.yMaximum())

    def output_path(self) -> str | None:
        """The file the user chose (a .gpkg suffix is added when none is given), or None."""
        text = self.output_widget.filePath().strip()
        if not text:
            return None
        if not Path(text).suffix:
            text += ".gpkg"
        return text

    def params(self) -> SegmentParams:
        """The run described by the widgets.

        Raises:
            ValueError: a value is missing or inconsistent (the message says which).
        """
        layer = self.layer_combo.currentLayer()
        if layer is None:
            raise ValueError("Choose a raster layer (load one into the project first).")
        model = self.model_widget.filePath().strip()
        return SegmentParams(
            layer_id=layer.id(),
            model_path=model or None,
            device=self.device_combo.currentText(),
            extent=self.extent(),
            threshold=round(self.threshold_spin.value(), 4),
            min_length=self.min_length_spin.value(),
            output=self.output_path(),
            add_probability=self.probability_check.isChecked(),
            layer_name=f"Roads ({layer.name()})",
        )

    def accept(self) -> None:
        """Close only when the values form a valid `SegmentParams`; otherwise say what is wrong."""
        try:
            self.params()
        except ValueError as exc:
            self.error_label.setText(str(exc))
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
