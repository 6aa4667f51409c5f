"""`RoadSegTask`: segment a raster layer and vectorise the roads in the QGIS task manager.

Threads: `__init__` runs on the main thread and prepares everything that touches QGIS layers
(the raster reader comes from `qgis_reader.raster_source`, which clones the data provider there);
`run` runs on a worker thread and only calls the QGIS-free core; `finished` runs on the main
thread again and is the only place that adds layers or writes to the message bar. The result of
a run is a typed `TaskOutcome` (ok / failed with a message / cancelled).
"""
from __future__ import annotations

import shutil
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable

from qgis.core import (
    Qgis,
    QgsColorRampShader,
    QgsLineSymbol,
    QgsMapLayer,
    QgsProcessingUtils,
    QgsProject,
    QgsRasterDataProvider,
    QgsRasterLayer,
    QgsRasterShader,
    QgsRectangle,
    QgsSimpleLineSymbolLayer,
    QgsSingleBandPseudoColorRenderer,
    QgsTask,
    QgsUnitTypes,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QColor

from .core.errors import Cancelled, RoadSegError
from .params import SegmentParams
from .plugin import PLUGIN_NAME, log

# Share of the progress bar each stage gets (segmentation dominates the run time).
SEGMENT_SHARE = 85.0
VECTORISE_SHARE = 13.0

ROAD_COLOUR = QColor(255, 127, 0)
ROAD_WIDTH_MM = 0.8


class Status(Enum):
    OK = "ok"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass
class TaskOutcome:
    """What a run produced. `message` is user-facing (the RoadSegError text on failure)."""

    status: Status
    message: str = ""
    lines_path: str | None = None
    probability_path: str | None = None
    n_lines: int = 0
    total_length_m: float = 0.0
    crs: str = ""
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


class RoadSegTask(QgsTask):
    """Segment roads in `params.layer_id`, write road lines, add them to the project when done.

    Args:
        params: what to run (from the dialog or a script).
        iface: the QGIS interface for the message bar; defaults to `qgis.utils.iface`.
        project: where the result layers go; defaults to `QgsProject.instance()`.

    Raises:
        RoadSegError: the layer is missing, invalid or cannot be read (raised here, on the
            main thread, before anything is queued).
    """

    def __init__(self, params: SegmentParams, iface: Any = None, project: QgsProject | None = None) -> None:
        self.params = params
        self.project = project or QgsProject.instance()
        layer = self.project.mapLayer(params.layer_id)
        if layer is None or layer.type() != QgsMapLayer.RasterLayer:
            raise RoadSegError(params.layer_id, "no raster layer with this id in the project",
                               "choose a loaded raster layer")
        if not layer.isValid():
            raise RoadSegError(layer.source(), "the raster layer is not valid", "reload or fix the layer")
        super().__init__(f"Segment roads: {layer.name()}", QgsTask.CanCancel)
        self.iface = iface
        self.layer_name = layer.name()
        self.outcome: TaskOutcome | None = None
        self.added_layers: list[QgsMapLayer] = []
        self._temp_root = QgsProcessingUtils.tempFolder()
        self._workdir: Path | None = None
        self._created: list[Path] = []

        from .qgis_reader import local_file, raster_source

        # Main thread: a non-file layer or an extent gives a ProviderReader that clones the
        # layer's data provider here, so `run` never touches the layer.
        extent = QgsRectangle(*params.extent) if params.extent is not None else None
        gsd_m = self._reading_gsd(layer) if extent is not None or local_file(layer) is None else None
        self.source = raster_source(layer, extent=extent, gsd_m=gsd_m)

    def _reading_gsd(self, layer: QgsRasterLayer) -> float | None:
        """The model's GSD when the layer must be resampled to it (as the engine does for files:
        no native pixel size, or one more than 25 % off); None reads at the layer's own pixels.
        An unreadable model gives None here; `run` then reports the model error."""
        from .core.checkpoint import BUNDLED_MODEL, ModelMeta, read_checkpoint
        from .qgis_reader import metres_to_layer_units

        try:
            path = self.params.model_path or BUNDLED_MODEL
            gsd = ModelMeta.from_dict(read_checkpoint(path).get("meta", {}), path).gsd_m
        except RoadSegError:
            return None
        if not gsd or gsd <= 0:
            return None
        provider = layer.dataProvider()
        if not provider.capabilities() & QgsRasterDataProvider.Size or provider.xSize() <= 0:
            return gsd
        model_x, _ = metres_to_layer_units(layer.crs(), gsd, layer.extent().center().y())
        native = abs(layer.rasterUnitsPerPixelX())
        return gsd if abs(native / model_x - 1) > 0.25 else None

    # ------------------------------------------------------------------ worker thread
    def run(self) -> bool:
        """Worker thread: segment, vectorise, write. Never touches layers or widgets.

        The work runs in a Python-created thread that this pool thread waits for. QGIS reuses
        its pool threads, and Python gives such a foreign thread a fresh thread state on every
        call into it; pyproj (used by the vectoriser) then crashed with a segmentation fault the
        second time a task ran on the same pool thread (pyproj 3.7, QGIS 3.22). A thread Python
        owns from start to end avoids that.
        """
        worker = threading.Thread(target=self._work, name="roadseg-task", daemon=True)
        worker.start()
        worker.join()
        assert self.outcome is not None
        return self.outcome.ok

    def _work(self) -> None:
        start = time.monotonic()
        try:
            self.outcome = self._segment_and_vectorise()
        except Cancelled:
            self.outcome = TaskOutcome(Status.CANCELLED, "Segment roads was cancelled; nothing was written.")
        except (RoadSegError, ValueError) as exc:  # bad input or option: the message says what to change
            self.outcome = TaskOutcome(Status.FAILED, str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug must still end the task with a message
            log(traceback.format_exc(), Qgis.Critical)
            first = str(exc).splitlines()[0] if str(exc) else ""
            self.outcome = TaskOutcome(Status.FAILED,
                                       f"unexpected {type(exc).__name__}: {first} (details in the RoadSeg log)")
        if not self.outcome.ok:
            self._remove_outputs()
        self.outcome.seconds = time.monotonic() - start

    def _segment_and_vectorise(self) -> TaskOutcome:
        from .core.engine import segment_raster
        from .core.vector_io import write_lines
        from .core.vectorise import vectorise_raster

        params = self.params
        self._workdir = Path(tempfile.mkdtemp(prefix="roadseg_", dir=self._temp_root))
        lines_path = Path(params.output) if params.output else self._workdir / "roads.gpkg"
        if params.add_probability and params.output:
            probability_path = lines_path.with_name(f"{lines_path.stem}_probability.tif")
        else:
            probability_path = self._workdir / "probability.tif"

        self._check_cancel()
        result = segment_raster(
            self.source, probability_path, params.model_path, device=params.device,
            threshold=params.threshold, on_progress=self._progress_callback(0.0, SEGMENT_SHARE),
            is_cancelled=self.isCanceled)
        self._created.append(probability_path)  # the engine leaves no file when it fails or is cancelled
        self._check_cancel()
        threshold = params.threshold if params.threshold is not None else result.threshold
        gdf = vectorise_raster(
            str(probability_path), threshold=threshold, min_length=params.min_length,
            on_progress=self._progress_callback(SEGMENT_SHARE, SEGMENT_SHARE + VECTORISE_SHARE),
            is_cancelled=self.isCanceled)
        self._check_cancel()
        write_lines(gdf, str(lines_path), driver=params.output_driver)  # atomic: all or nothing
        self._created.append(lines_path)
        self._check_cancel()
        if not params.add_probability:
            probability_path.unlink(missing_ok=True)
        self.setProgress(100.0)
        total_length = float(gdf["length_m"].sum()) if "length_m" in gdf.columns and len(gdf) else 0.0
        return TaskOutcome(
            Status.OK,
            lines_path=str(lines_path),
            probability_path=str(probability_path) if params.add_probability else None,
            n_lines=len(gdf),
            total_length_m=total_length,
            crs=str(result.crs) if result.crs is not None else "",
            warnings=list(result.warnings or []),
        )

    def _check_cancel(self) -> None:
        if self.isCanceled():
            raise Cancelled()

    def _progress_callback(self, lo: float, hi: float) -> Callable[[float], None]:
        """Map a core function's progress (a 0-1 fraction) onto [lo, hi] percent of the task bar."""
        def on_progress(fraction: float) -> None:
            self.setProgress(lo + (hi - lo) * min(max(float(fraction), 0.0), 1.0))
        return on_progress

    def _remove_outputs(self) -> None:
        """After a failure or cancel: no partial file stays behind."""
        for path in self._created:
            if path.suffix.lower() == ".shp":
                for sibling in path.parent.glob(f"{path.stem}.*"):
                    if sibling.suffix.lower() in {".shp", ".shx", ".dbf", ".prj", ".cpg", ".qpj"}:
                        sibling.unlink(missing_ok=True)
            path.unlink(missing_ok=True)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)

    # ------------------------------------------------------------------ main thread
    def finished(self, result: bool) -> None:  # noqa: ARG002 - the outcome says more than the flag
        """Main thread: add the styled layers, or report the failure / cancellation."""
        if self.outcome is None:  # cancelled before `run` started
            self.outcome = TaskOutcome(Status.CANCELLED, "Segment roads was cancelled before it started.")
        outcome = self.outcome
        bar = self._message_bar()
        if outcome.status is Status.CANCELLED:
            self._remove_outputs()
            log(outcome.message)
            if bar is not None:
                bar.pushMessage(PLUGIN_NAME, outcome.message, Qgis.Info, 5)
            return
        if outcome.status is Status.FAILED:
            log(outcome.message, Qgis.Critical)
            if bar is not None:
                bar.pushMessage(PLUGIN_NAME, f"Segment roads failed: {outcome.message}", Qgis.Critical, 0)
            return
        try:
            self._add_layers(outcome)
        except RoadSegError as exc:
            outcome.status, outcome.message = Status.FAILED, str(exc)
            if bar is not None:
                bar.pushMessage(PLUGIN_NAME, f"Segment roads failed: {exc}", Qgis.Critical, 0)
            return
        for warning in outcome.warnings:
            log(warning, Qgis.Warning)
        summary = (f"{outcome.n_lines} road lines ({outcome.total_length_m / 1000:.2f} km) "
                   f"from {self.layer_name} in {outcome.seconds:.0f} s")
        if outcome.warnings:
            summary += f"; {len(outcome.warnings)} warning(s): {outcome.warnings[0]}"
        outcome.message = summary
        if bar is not None:
            level = Qgis.Warning if outcome.warnings else Qgis.Success
            bar.pushMessage(PLUGIN_NAME, summary, level, 10)

    def _add_layers(self, outcome: TaskOutcome) -> None:
        name = self.params.layer_name
        if outcome.probability_path:
            raster = QgsRasterLayer(outcome.probability_path, f"{name} probability")
            if raster.isValid():
                style_probability(raster)
                self.project.addMapLayer(raster)
                self.added_layers.append(raster)
            else:
                outcome.warnings.append(f"could not load the probability raster {outcome.probability_path}")
        lines = QgsVectorLayer(outcome.lines_path, name, "ogr")
        if not lines.isValid():
            raise RoadSegError(outcome.lines_path, "the road-line file was written but QGIS cannot open it",
                               "check the output folder and format")
        style_roads(lines)
        self.project.addMapLayer(lines)
        self.added_layers.append(lines)

    def _message_bar(self) -> Any:
        iface = self.iface
        if iface is None:
            from qgis import utils

            iface = utils.iface
        return iface.messageBar() if iface is not None else None


def style_roads(layer: QgsVectorLayer) -> None:
    """Orange 0.8 mm lines over a thin dark casing, readable on aerial imagery."""
    casing = QgsSimpleLineSymbolLayer(QColor(40, 40, 40, 200), ROAD_WIDTH_MM + 0.5)
    casing.setWidthUnit(QgsUnitTypes.RenderMillimeters)
    casing.setPenCapStyle(Qt.RoundCap)
    casing.setPenJoinStyle(Qt.RoundJoin)
    line = QgsSimpleLineSymbolLayer(ROAD_COLOUR, ROAD_WIDTH_MM)
    line.setWidthUnit(QgsUnitTypes.RenderMillimeters)
    line.setPenCapStyle(Qt.RoundCap)
    line.setPenJoinStyle(Qt.RoundJoin)
    symbol = QgsLineSymbol()
    symbol.changeSymbolLayer(0, casing)  # the symbol takes ownership (a list in the constructor would not)
    symbol.appendSymbolLayer(line)
    layer.renderer().setSymbol(symbol)
    layer.triggerRepaint()


def style_probability(layer: QgsRasterLayer) -> None:
    """uint8 probability (0-255): transparent below ~0.2, then yellow to red, semi-transparent."""
    ramp = QgsColorRampShader(0, 255, None, QgsColorRampShader.Interpolated)
    ramp.setColorRampItemList([
        QgsColorRampShader.ColorRampItem(0, QColor(255, 255, 0, 0), "0"),
        QgsColorRampShader.ColorRampItem(51, QColor(255, 255, 0, 0), "0.2"),
        QgsColorRampShader.ColorRampItem(128, QColor(255, 200, 0, 140), "0.5"),
        QgsColorRampShader.ColorRampItem(255, QColor(230, 0, 0, 200), "1"),
    ])
    shader = QgsRasterShader()
    shader.setRasterShaderFunction(ramp)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), 1, shader)
    renderer.setClassificationMin(0)
    renderer.setClassificationMax(255)
    layer.setRenderer(renderer)
    layer.triggerRepaint()
