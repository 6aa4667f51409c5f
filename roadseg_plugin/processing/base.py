"""What every RoadSeg Processing algorithm shares: `tr`, `createInstance`, the group, help,
tags and help URL, the dependency check, error mapping, and the QGIS <-> GeoDataFrame
conversions. The parameters generated from `core.params` and their help live in `parameters`
and are re-exported here; the QGIS wording of the core's messages is `adapters.options`.

Nothing here imports torch, rasterio or the heavy core at module level (`core.params` is plain
Python): the provider must load (and list its algorithms) when those packages are missing;
running an algorithm then reports `deps.dependency_message()` as a `QgsProcessingException`.
"""
from __future__ import annotations

import importlib
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from qgis.core import (
    QgsCoordinateTransform,
    QgsFeature,
    QgsFeatureSink,
    QgsFeatureSource,
    QgsField,
    QgsFields,
    QgsGeometry,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QCoreApplication, QVariant
from qgis.PyQt.QtGui import QIcon

from ..adapters.options import qgis_message
from ..install.deps import dependency_message, isolate_native_libraries, native_library_problem
from .parameters import (  # noqa: F401  (re-exported: the algorithms import them from here)
    PLUGIN_DIR,
    add_parameters,
    given,
    lengths_note,
    options_help,
    parameters_help,
    project_url,
    read_parameters,
    set_help,
)

if TYPE_CHECKING:
    import geopandas as gpd

T = TypeVar("T")

ICON = PLUGIN_DIR / "icon.png"
LINE_FIELDS = (("id", QVariant.Int), ("length_m", QVariant.Double), ("width_m", QVariant.Double),
               ("mean_prob", QVariant.Double))


def in_python_thread(work: Callable[[], T]) -> T:
    """Run `work` in a thread Python creates and ends, when called on a foreign (QGIS pool) thread.

    The toolbox runs algorithms on QGIS's reused pool threads, and Python gives such a thread a
    fresh thread state on every call into it; pyproj's per-thread context then crashes QGIS the
    second time an algorithm runs on the same pool thread (pyproj 3.7, QGIS 3.22). The calling
    thread just waits, so QGIS objects are never used by two threads at once. On Python's own
    threads (the main thread: processing.run, qgis_process) `work` runs directly.
    """
    if not isinstance(threading.current_thread(), getattr(threading, "_DummyThread", ())):
        return work()
    box: dict = {}

    def target() -> None:
        try:
            box["result"] = work()
        except BaseException as exc:  # noqa: BLE001  (re-raised in the calling thread)
            box["error"] = exc

    worker = threading.Thread(target=target, name="roadseg-processing", daemon=True)
    worker.start()
    worker.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def import_training(module: str) -> ModuleType:
    """`training.<module>`: inside the installed plugin it ships as `roadseg_plugin.training`,
    in a source checkout it is the top-level `training` package."""
    package = __package__.rsplit(".", 1)[0]  # roadseg_plugin
    try:
        return importlib.import_module(f"{package}.training.{module}")
    except ModuleNotFoundError as exc:
        if exc.name not in (f"{package}.training", f"{package}.training.{module}"):
            raise
    return importlib.import_module(f"training.{module}")


class RoadSegAlgorithm(QgsProcessingAlgorithm):
    """Base of the RoadSeg algorithms; subclasses define constants, names, `summary`, `tags` and the
    two methods. The help panel is the summary and then every parameter (`parameters_help`)."""

    def tr(self, text: str) -> str:
        return QCoreApplication.translate("RoadSeg", text)

    def createInstance(self) -> RoadSegAlgorithm:
        return type(self)()

    def group(self) -> str:
        return self.tr("Road extraction")

    def groupId(self) -> str:
        return "roadextraction"

    def icon(self) -> QIcon:
        return QIcon(str(ICON))

    def summary(self) -> str:
        """What the algorithm does (paragraphs separated by blank lines)."""
        return ""

    def shortHelpString(self) -> str:
        return self.summary() + "\n\n" + parameters_help(self)

    def helpUrl(self) -> str:
        url = project_url()
        return f"{url.rstrip('/')}/blob/main/docs/QGIS.md#processing-algorithms" if "github.com" in url else url

    def tags(self) -> list[str]:
        return ["roads", "road network", "roadseg"]

    # ---- helpers for processAlgorithm ------------------------------------------------------
    @staticmethod
    def require_dependencies() -> None:
        """Raise the install instructions as a QgsProcessingException when packages are missing;
        otherwise make sure the packages' bundled GEOS/GDAL/PROJ do not clash with QGIS's own."""
        message = dependency_message()
        if message:
            raise QgsProcessingException(message)
        isolate_native_libraries()
        message = native_library_problem()
        if message:
            raise QgsProcessingException(message)

    @staticmethod
    def require_training(what: str) -> None:
        """Raise one line pointing at the installer when the Training and GPU packages (torch...)
        are missing, instead of the ModuleNotFoundError importing them would give."""
        from ..install.deps import training_message

        message = training_message(what)
        if message:
            raise QgsProcessingException(message)

    @contextmanager
    def core_errors(self) -> Iterator[None]:
        """Turn RoadSeg's user-facing errors and cancellation into one QgsProcessingException,
        worded for QGIS (`qgis_message`); QGIS shows it once (nothing else reports it)."""
        from ..core.errors import Cancelled, RoadSegError

        try:
            yield
        except Cancelled as exc:
            raise QgsProcessingException(self.tr("Cancelled: nothing was written")) from exc
        except (RoadSegError, ValueError) as exc:  # ValueError: e.g. cuda asked for without a GPU
            raise QgsProcessingException(qgis_message(exc, self)) from exc

    @staticmethod
    def progress(feedback: QgsProcessingFeedback, start: float = 0.0, end: float = 100.0) -> Callable[[float], None]:
        """A core `on_progress(fraction)` callback mapped onto `start..end` percent of the bar."""
        return lambda fraction: feedback.setProgress(start + (end - start) * max(0.0, min(1.0, fraction)))


class FeedbackLog(logging.Handler):
    """Forwards RoadSeg's log records (INFO and up) to a Processing feedback: the training run's
    progress per epoch, early stopping and the fine-tune's findings appear in the Processing log
    as they happen, as they do in train.log. A message of the core that starts "warning:" (or a
    WARNING record) is shown as a warning."""

    def __init__(self, feedback: QgsProcessingFeedback) -> None:
        super().__init__(logging.INFO)
        self.feedback = feedback

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.WARNING or message.startswith("warning:"):
            self.feedback.reportError(message, False)
        else:
            self.feedback.pushInfo(message)


@contextmanager
def log_to_feedback(feedback: QgsProcessingFeedback, names: tuple[str, ...] = ("training", "roadseg_plugin")
                    ) -> Iterator[None]:
    """Send the `names` loggers' INFO and up to `feedback` for the duration (see `FeedbackLog`)."""
    handler, loggers = FeedbackLog(feedback), [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        if lg.level == logging.NOTSET or lg.level > logging.INFO:
            lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)


def polygons_in(source: QgsFeatureSource | None, crs, context) -> QgsGeometry | None:
    """A polygon source's features as one geometry in `crs` (the areas of interest), or None.

    Raises:
        QgsProcessingException: the source holds no polygon.
    """
    if source is None:
        return None
    transform = QgsCoordinateTransform(source.sourceCrs(), crs, context.transformContext())
    parts = []
    for feature in source.getFeatures():
        geometry = QgsGeometry(feature.geometry())
        if geometry.isNull() or geometry.isEmpty():
            continue
        if source.sourceCrs().isValid() and crs.isValid():
            geometry.transform(transform)
        parts.append(geometry)
    if not parts:
        raise QgsProcessingException("the areas of interest hold no polygon; draw some or leave the parameter empty")
    return QgsGeometry.unaryUnion(parts)


def check_sink_destination(alg: QgsProcessingAlgorithm, parameters: dict[str, Any], name: str,
                           context: QgsProcessingContext, inputs: list[object]) -> None:
    """Refuse a sink written over one of `inputs`, by the CLI's rule (`outputs.check_outputs`:
    every name form of a file, VRT sources, hard links). Memory layers and databases pass."""
    from ..core.errors import RoadSegError
    from ..core.outputs import check_outputs

    destination = alg.parameterAsOutputLayer(parameters, name, context) or ""
    if destination.startswith("ogr:"):
        match = re.search(r"dbname='?([^' ]+)", destination)
        destination = match.group(1) if match else ""
    path = destination.split("|")[0]
    if not path or not os.path.isabs(path):  # memory:, TEMPORARY_OUTPUT, postgres:...
        return
    try:
        check_outputs({"road lines": Path(path)}, inputs)
    except RoadSegError as exc:
        raise QgsProcessingException(qgis_message(exc, alg)) from exc


def line_fields() -> QgsFields:
    fields = QgsFields()
    for name, kind in LINE_FIELDS:
        fields.append(QgsField(name, kind))
    return fields


def add_lines(sink: QgsFeatureSink, lines: gpd.GeoDataFrame, feedback: QgsProcessingFeedback) -> int:
    """Write `lines` (fields of LINE_FIELDS, (multi)line geometries) to `sink`; returns the feature count."""
    fields, count = line_fields(), 0
    for row in lines.itertuples(index=False):
        if feedback.isCanceled():
            break
        geometry = QgsGeometry()
        geometry.fromWkb(row.geometry.wkb)
        parts = geometry.asGeometryCollection() if geometry.isMultipart() else [geometry]
        for part in parts:
            feature = QgsFeature(fields)
            feature.setGeometry(part)
            feature.setAttributes([int(row.id), float(row.length_m), float(row.width_m), float(row.mean_prob)])
            sink.addFeature(feature, QgsFeatureSink.FastInsert)
            count += 1
    return count


def source_to_frame(source: QgsFeatureSource | None, crs_wkt: str | None = None) -> gpd.GeoDataFrame:
    """The geometries of a QGIS feature source as a GeoDataFrame in the source's CRS (curves segmentised)."""
    import geopandas as gpd
    import shapely

    from ..adapters.qgis_reader import crs_string

    if source is None:
        return gpd.GeoDataFrame(geometry=[], crs=crs_wkt)
    geoms = []
    for feature in source.getFeatures():
        geometry = feature.geometry()
        if geometry.isNull() or geometry.isEmpty():
            continue
        if QgsWkbTypes.isCurvedType(geometry.wkbType()):
            geometry = QgsGeometry(geometry.constGet().segmentize())
        geoms.append(shapely.from_wkb(bytes(geometry.asWkb())))
    return gpd.GeoDataFrame(geometry=geoms, crs=crs_string(source.sourceCrs()) or crs_wkt)


def layer_path(layer, what: str, temp_name: str, gsd_m: float | None = None) -> str:
    """A file rasterio can read for any raster layer: its own file, or the layer written to a temp GeoTIFF."""
    from qgis.core import QgsProcessingUtils

    from ..adapters.qgis_reader import ProviderReader, local_file, materialise

    if layer is None:
        raise QgsProcessingException(f"{what}: no raster layer given")
    path = local_file(layer)
    if path is not None:
        return path
    return materialise(ProviderReader(layer, gsd_m=gsd_m), QgsProcessingUtils.generateTempFilename(temp_name))


