"""What every RoadSeg Processing algorithm shares: `tr`, `createInstance`, the group, the
dependency check, error mapping and the QGIS <-> GeoDataFrame conversions.

Nothing here imports torch, rasterio or the core at module level: the provider must load (and
list its algorithms) when those packages are missing; running an algorithm then reports
`deps.dependency_message()` as a `QgsProcessingException`.
"""
from __future__ import annotations

import importlib
import sys
import threading
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Callable, Iterator, TypeVar

from qgis.core import (
    QgsFeature,
    QgsFeatureSink,
    QgsFeatureSource,
    QgsField,
    QgsFields,
    QgsGeometry,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QCoreApplication, QVariant
from qgis.PyQt.QtGui import QIcon

from ..deps import dependency_message, isolate_native_libraries, missing_dependencies, native_library_problem

if TYPE_CHECKING:
    import geopandas as gpd

T = TypeVar("T")

PLUGIN_DIR = Path(__file__).resolve().parent.parent
BUNDLED_MODEL = PLUGIN_DIR / "models" / "roadseg_default.pt"  # == core.checkpoint.BUNDLED_MODEL, without torch
ICON = PLUGIN_DIR / "icon.png"
MODEL_FILTER = "RoadSeg model (*.pt *.onnx)"
LINE_FIELDS = (("id", QVariant.Int), ("length_m", QVariant.Double), ("width_m", QVariant.Double),
               ("mean_prob", QVariant.Double))


def cuda_available() -> bool:
    """Whether to offer the `cuda` device, without importing torch while QGIS starts.

    Once torch is imported the answer is exact; before that a CUDA build of torch counts
    (a machine without a GPU then gets the core's clear "no CUDA GPU" error).
    """
    if "torch" in sys.modules:
        return bool(sys.modules["torch"].cuda.is_available())
    spec = find_spec("torch") if "torch" not in missing_dependencies() else None
    if spec is None or not spec.submodule_search_locations:
        return False
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    return any(lib.glob("*torch_cuda*"))


def devices() -> list[str]:
    return ["auto", "cpu", "cuda"] if cuda_available() else ["auto", "cpu"]


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
    """Base of the RoadSeg algorithms; subclasses define constants, names, help and the two methods."""

    def tr(self, text: str) -> str:
        return QCoreApplication.translate("RoadSeg", text)

    def createInstance(self) -> "RoadSegAlgorithm":  # noqa: N802 (QGIS API)
        return type(self)()

    def group(self) -> str:
        return self.tr("Road extraction")

    def groupId(self) -> str:  # noqa: N802 (QGIS API)
        return "roadextraction"

    def icon(self) -> QIcon:
        return QIcon(str(ICON))

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
    @contextmanager
    def core_errors() -> Iterator[None]:
        """Turn RoadSeg's user-facing errors and cancellation into QgsProcessingException."""
        from ..core.errors import Cancelled, RoadSegError

        try:
            yield
        except RoadSegError as exc:
            raise QgsProcessingException(str(exc)) from exc
        except Cancelled as exc:
            raise QgsProcessingException("Cancelled: nothing was written") from exc
        except ValueError as exc:  # e.g. asking for cuda without a GPU: the core's message is user-facing
            raise QgsProcessingException(str(exc)) from exc

    @staticmethod
    def progress(feedback: QgsProcessingFeedback, start: float = 0.0, end: float = 100.0) -> Callable[[float], None]:
        """A core `on_progress(fraction)` callback mapped onto `start..end` percent of the bar."""
        return lambda fraction: feedback.setProgress(start + (end - start) * max(0.0, min(1.0, fraction)))


def model_meta(path: str | None):
    """The `ModelMeta` of a checkpoint (.pt) or exported model (.onnx); None means the bundled model."""
    from ..core.checkpoint import BUNDLED_MODEL as bundled, ModelMeta, read_checkpoint

    path = Path(path) if path else bundled
    if path.suffix.lower() == ".onnx":
        from ..core.onnx_backend import read_onnx_meta

        return read_onnx_meta(path)
    return ModelMeta.from_dict(read_checkpoint(path).get("meta", {}), path)


def line_fields() -> QgsFields:
    fields = QgsFields()
    for name, kind in LINE_FIELDS:
        fields.append(QgsField(name, kind))
    return fields


def add_lines(sink: QgsFeatureSink, lines: "gpd.GeoDataFrame", feedback: QgsProcessingFeedback) -> int:
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


def source_to_frame(source: QgsFeatureSource | None, crs_wkt: str | None = None) -> "gpd.GeoDataFrame":
    """The geometries of a QGIS feature source as a GeoDataFrame in the source's CRS (curves segmentised)."""
    import geopandas as gpd
    import shapely

    from ..qgis_reader import crs_string

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

    from ..qgis_reader import ProviderReader, local_file, materialise

    if layer is None:
        raise QgsProcessingException(f"{what}: no raster layer given")
    path = local_file(layer)
    if path is not None:
        return path
    return materialise(ProviderReader(layer, gsd_m=gsd_m), QgsProcessingUtils.generateTempFilename(temp_name))
