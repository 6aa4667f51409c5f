"""What every RoadSeg Processing algorithm shares: `tr`, `createInstance`, the group, the
dependency check, error mapping, the QGIS <-> GeoDataFrame conversions, and the parameters
generated from `core.params`.

`add_parameters` makes one Processing parameter per field of `InferenceParams` /
`VectoriseParams` (key: the field name in upper case; label, unit, help, default, choices and
the advanced flag from the field's metadata) and `read_parameters` builds the dataclass back,
so an option added to the core appears in the toolbox, qgis_process and the help panel without
touching an algorithm. The device list (`devices`) is shared with the Segment roads dialog.

Nothing here imports torch, rasterio or the heavy core at module level (`core.params` is plain
Python): the provider must load (and list its algorithms) when those packages are missing;
running an algorithm then reports `deps.dependency_message()` as a `QgsProcessingException`.
"""
from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import Field, fields
from importlib.util import find_spec
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from qgis.core import (
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
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QCoreApplication, QVariant
from qgis.PyQt.QtGui import QIcon

from ..core.errors import ParamError
from ..core.params import BUNDLED_MODEL, DEVICES, describe
from ..deps import dependency_message, isolate_native_libraries, missing_dependencies, native_library_problem

if TYPE_CHECKING:
    import geopandas as gpd

T = TypeVar("T")

PLUGIN_DIR = Path(__file__).resolve().parent.parent
ICON = PLUGIN_DIR / "icon.png"
MODEL_FILTER = "RoadSeg model (*.pt *.onnx)"
LINE_FIELDS = (("id", QVariant.Int), ("length_m", QVariant.Double), ("width_m", QVariant.Double),
               ("mean_prob", QVariant.Double))


def cuda_available(load: bool = False) -> bool:
    """Whether to offer the `cuda` device.

    Once torch is imported the answer is exact. `load` imports it first when it is installed
    (the dialog, opened after the dependency check); without `load` torch is not imported, so
    the provider lists its algorithms fast while QGIS starts, and a CUDA build of torch counts
    (a machine without a GPU then gets the core's clear "no CUDA GPU" error).
    """
    if load and "torch" not in sys.modules and "torch" not in missing_dependencies():
        try:
            import torch  # noqa: F401
        except Exception:  # noqa: BLE001 - a broken torch (missing CUDA libraries...) offers no GPU
            return False
    if "torch" in sys.modules:
        return bool(sys.modules["torch"].cuda.is_available())
    spec = find_spec("torch") if "torch" not in missing_dependencies() else None
    if spec is None or not spec.submodule_search_locations:
        return False
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    return any(lib.glob("*torch_cuda*"))


def devices(load: bool = False) -> list[str]:
    """`core.params.DEVICES`, without "cuda" when there is no GPU to offer (see `cuda_available`)."""
    return [d for d in DEVICES if d != "cuda" or cuda_available(load)]


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

    def createInstance(self) -> RoadSegAlgorithm:
        return type(self)()

    def group(self) -> str:
        return self.tr("Road extraction")

    def groupId(self) -> str:
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


# ---- parameters generated from core.params ----------------------------------------------------
_SPECIAL_KINDS = {"model": "model", "extent": "extent", "bands": "bands"}


def option_kind(params_type: type, f: Field) -> str:
    """How an option is edited: model, extent, bands, enum, bool, int or float.

    Shared with the dialog. An option of a type no adapter knows fails here, loudly.
    """
    if f.name in _SPECIAL_KINDS:
        return _SPECIAL_KINDS[f.name]
    if f.metadata.get("choices"):
        return "enum"
    kind = str(f.type).split("|")[0].strip()  # annotations are strings: "int | None" -> "int"
    if kind in ("bool", "int", "float"):
        return kind
    raise TypeError(f"{params_type.__name__}.{f.name}: no editor for an option of type {f.type}")


def option_choices(params_type: type, name: str) -> list[str]:
    """The values offered for an enum option; "cuda" only where there is a GPU (see `devices`)."""
    return devices() if name == "device" else list(describe(params_type, name)["choices"])


def option_label(params_type: type, name: str) -> str:
    info = describe(params_type, name)
    return f"{info['label']} ({info['unit']})" if info["unit"] else info["label"]


def parameter_key(name: str) -> str:
    return name.upper()


def make_parameter(params_type: type, f: Field) -> QgsProcessingParameterDefinition:
    """The Processing parameter of one option; an option without default is optional (empty: None)."""
    info, key, label = describe(params_type, f.name), parameter_key(f.name), option_label(params_type, f.name)
    default, kind = info["default"], option_kind(params_type, f)
    if kind == "model":  # shown as the bundled model's path; emptied, it is still the bundled model
        param = QgsProcessingParameterFile(key, label, QgsProcessingParameterFile.File, "", str(BUNDLED_MODEL),
                                           True, MODEL_FILTER)
    elif kind == "extent":
        param = QgsProcessingParameterExtent(key, label, None, True)
    elif kind == "bands":
        param = QgsProcessingParameterString(key, label, None, False, True)
    elif kind == "enum":
        param = QgsProcessingParameterEnum(key, label, option_choices(params_type, f.name), False, default,
                                           default is None, True)
    elif kind == "bool":
        param = QgsProcessingParameterBoolean(key, label, bool(default))
    else:
        number = QgsProcessingParameterNumber.Integer if kind == "int" else QgsProcessingParameterNumber.Double
        maximum = 1.0 if info["unit"] == "0-1" else 1e12  # every option is a size, a length or a probability
        param = QgsProcessingParameterNumber(key, label, number, default, default is None, 0.0, maximum)
    param.setHelp(info["help"])
    if info["advanced"]:
        param.setFlags(param.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
    return param


def add_parameters(alg: QgsProcessingAlgorithm, params_type: type, skip: tuple[str, ...] = ()) -> None:
    """One Processing parameter per field of `params_type` (but `skip`), keys in upper case."""
    for f in fields(params_type):
        if f.name not in skip:
            alg.addParameter(make_parameter(params_type, f))


def given(parameters: dict[str, Any], key: str) -> bool:
    """Whether `parameters` holds a value for `key` (an optional parameter left empty holds None)."""
    value = parameters.get(key)
    return not (value is None or value == "" or (hasattr(value, "isNull") and value.isNull()))


def band_numbers(text: str) -> tuple[int, ...]:
    """"3,2,1" -> (3, 2, 1); empty text -> (); anything else is a ParamError naming the option."""
    try:
        return tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise ParamError("bands", text, "must be band numbers from 1, separated by commas", "e.g. 3,2,1") from None


def _read(alg: QgsProcessingAlgorithm, params_type: type, f: Field, parameters: dict[str, Any],
          context: QgsProcessingContext, crs: Any) -> Any:
    key, kind = parameter_key(f.name), option_kind(params_type, f)
    if kind == "model":
        return alg.parameterAsFile(parameters, key, context) or None
    if kind == "enum":
        return alg.parameterAsEnumString(parameters, key, context) or None
    if kind == "bool":
        return alg.parameterAsBoolean(parameters, key, context)
    if not given(parameters, key) and alg.parameterDefinition(key).defaultValue() is None:
        return None  # an optional option left empty: the core's default (the model's, the raster's...)
    if kind == "extent":
        rect = (alg.parameterAsExtent(parameters, key, context, crs) if crs is not None
                else alg.parameterAsExtent(parameters, key, context))
        return None if rect.isNull() else (rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum())
    if kind == "bands":
        return band_numbers(alg.parameterAsString(parameters, key, context)) or None
    if kind == "int":
        return alg.parameterAsInt(parameters, key, context)
    return alg.parameterAsDouble(parameters, key, context)


def read_parameters(alg: QgsProcessingAlgorithm, params_type: type, parameters: dict[str, Any],
                    context: QgsProcessingContext, crs: Any = None) -> Any:
    """The `params_type` described by the algorithm's parameters (see `add_parameters`).

    Options the algorithm has no parameter for keep their defaults. `crs`: the CRS an extent
    is wanted in (the input layer's).

    Raises:
        QgsProcessingException: a value the core refuses, with the core's one-line message.
    """
    try:
        return params_type(**{f.name: _read(alg, params_type, f, parameters, context, crs)
                              for f in fields(params_type) if alg.parameterDefinition(parameter_key(f.name))})
    except ParamError as exc:
        raise QgsProcessingException(str(exc)) from None


def options_help(params_type: type, skip: tuple[str, ...] = ()) -> str:
    """Help-panel text for the options of `params_type`: label, unit, what it does, default."""
    lines = []
    for f in fields(params_type):
        if f.name in skip:
            continue
        info = describe(params_type, f.name)
        default = "" if info["default"] in (None, False) else f" Default: {info['default']}."
        lines.append(f"<b>{option_label(params_type, f.name)}</b>: {info['help']}.{default}")
    return "<br>".join(lines)
