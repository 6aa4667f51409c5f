"""`RoadSegTask`: segment a raster layer and vectorise the roads in the QGIS task manager.

Threads: `__init__` runs on the main thread and prepares everything that touches QGIS layers
(the raster reader comes from `layer_source`, which clones the data provider there); `run` runs
on a worker thread and only calls `core.pipeline.extract_roads`; `finished` runs on the main
thread again and is the only place that adds layers or writes to the message bar. The result of
a run is a typed `TaskOutcome` (ok / failed with a message / cancelled).

The pipeline moves its outputs into place only when everything succeeded, so after a failure or
a cancel the only thing to remove is the task's own temporary folder.
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
from typing import Any

from qgis.core import (
    Qgis,
    QgsGeometry,
    QgsMapLayer,
    QgsProcessingUtils,
    QgsProject,
    QgsRasterLayer,
    QgsTask,
    QgsVectorLayer,
)

from ..adapters.layers import layer_source
from ..adapters.options import qgis_message
from ..adapters.styles import PROBABILITY_NAME, style_probability, style_roads
from ..core.errors import Cancelled, RoadSegError
from ..log import PLUGIN_NAME, log
from .params import SegmentParams


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
        # Main thread: a non-file layer or an extent gives a ProviderReader that clones the
        # layer's data provider here, so `run` never touches the layer.
        aoi = QgsGeometry.fromWkt(params.aoi) if params.aoi else None
        self.source = layer_source(layer, params.inference, aoi)

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
            self.outcome = self._extract()
        except Cancelled:
            self.outcome = TaskOutcome(Status.CANCELLED, "Segment roads was cancelled; nothing was written.")
        except (RoadSegError, ValueError) as exc:  # bad input or option: the message says what to change
            self.outcome = TaskOutcome(Status.FAILED, qgis_message(exc))  # options by their dialog labels
        except Exception as exc:  # noqa: BLE001 - a bug must still end the task with a message
            log(traceback.format_exc(), Qgis.Critical)
            first = str(exc).splitlines()[0] if str(exc) else ""
            self.outcome = TaskOutcome(Status.FAILED,
                                       f"unexpected {type(exc).__name__}: {first} (details in the RoadSeg log)")
        if not self.outcome.ok:
            self._remove_workdir()
        self.outcome.seconds = time.monotonic() - start

    def _extract(self) -> TaskOutcome:
        from ..core.pipeline import extract_roads

        params = self.params
        if params.output is None:  # a temporary layer: lines (and probabilities) in a folder of our own
            self._workdir = Path(tempfile.mkdtemp(prefix="roadseg_", dir=self._temp_root))
            lines_path = self._workdir / "roads.gpkg"
            probability_path = self._workdir / "probability.tif" if params.add_probability else None
        else:
            lines_path = Path(params.output)
            probability_path = (lines_path.with_name(f"{lines_path.stem}_probability.tif")
                                if params.add_probability else None)
        result = extract_roads(self.source, lines_path, params.inference, params.vectorise,
                               prob_out=probability_path, on_progress=lambda f: self.setProgress(100.0 * f),
                               is_cancelled=self.isCanceled)
        crs = result.segment.crs if result.segment is not None else None
        return TaskOutcome(
            Status.OK,
            lines_path=str(result.lines_path),
            probability_path=str(result.prob_path) if result.prob_path is not None else None,
            n_lines=result.n_lines,
            total_length_m=result.length_km * 1000,
            crs=str(crs) if crs is not None else "",
            warnings=list(result.warnings),
        )

    def _remove_workdir(self) -> None:
        """After a failure or cancel: the pipeline wrote nothing; only our temporary folder goes."""
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    # ------------------------------------------------------------------ main thread
    def finished(self, result: bool) -> None:  # noqa: ARG002 - the outcome says more than the flag
        """Main thread: add the styled layers, or report the failure / cancellation."""
        if self.outcome is None:  # cancelled before `run` started
            self.outcome = TaskOutcome(Status.CANCELLED, "Segment roads was cancelled before it started.")
        outcome = self.outcome
        bar = self._message_bar()
        if outcome.status is Status.CANCELLED:
            self._remove_workdir()
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
            summary += (f"; {len(outcome.warnings)} warning(s), in the {PLUGIN_NAME} tab of the log messages: "
                        f"{outcome.warnings[0]}")
        outcome.message = summary
        if bar is not None:  # a warning (no georeferencing, resampled...) stays until closed
            level = Qgis.Warning if outcome.warnings else Qgis.Success
            bar.pushMessage(PLUGIN_NAME, summary, level, 0 if outcome.warnings else 10)

    def _add_layers(self, outcome: TaskOutcome) -> None:
        name = self.params.layer_name
        if outcome.probability_path:
            raster = QgsRasterLayer(outcome.probability_path, PROBABILITY_NAME.format(self.layer_name))
            if raster.isValid():
                style_probability(raster, maximum=1 if self.params.inference.binary else 255)
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
