"""roadseg:segmentregion: many or huge rasters in, one line layer of the whole region out, on Dask.

The same code as `python -m roadseg_plugin segment-region` (`core.region.segment_region`): the
inputs are cut into chunks and segmented by Dask workers, a local cluster of worker processes
or the workers of a running scheduler; the output folder receives `roads.gpkg` (or the format
chosen), one probability VRT per input, the parts and `region.json` (for Resume). The other
options are generated from `InferenceParams` / `VectoriseParams` like Segment roads'.
"""
from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputMultipleLayers,
    QgsProcessingOutputNumber,
    QgsProcessingOutputVectorLayer,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from ..core.params import SET_BY_INFERENCE, InferenceParams, VectoriseParams
from .base import RoadSegAlgorithm, add_parameters, in_python_thread, options_help, read_parameters

DEFAULT_CHUNK = 8192  # = core.region.plan.DEFAULT_CHUNK (the provider must load without dask)


def require_dask() -> None:
    """Dask is needed by this algorithm only: say how to install it into RoadSeg's package folder."""
    import shlex
    from importlib.util import find_spec

    from ..install.deps import python_executable
    from ..install.packages import packages_dir

    if find_spec("distributed") is None:
        try:
            target = f" --target {shlex.quote(str(packages_dir()))}"
        except Exception:  # noqa: BLE001 - no QGIS profile to name: plain pip
            target = ""
        raise QgsProcessingException(
            "Segment roads over a region needs Dask, which QGIS's Python cannot import: "
            f"{shlex.quote(python_executable())} -m pip install{target} 'dask[distributed]>=2024.1,<2027'")


class SegmentRegionAlgorithm(RoadSegAlgorithm):
    INPUTS = "INPUTS"
    SCHEDULER = "SCHEDULER"
    WORKERS = "WORKERS"
    CHUNK = "CHUNK"
    RESUME = "RESUME"
    SKIP_BAD = "SKIP_BAD"
    OUTPUT_FOLDER = "OUTPUT_FOLDER"
    LINES = "LINES"
    PROBABILITY = "PROBABILITY"
    N_LINES = "N_LINES"
    LENGTH_KM = "LENGTH_KM"

    def name(self) -> str:
        return "segmentregion"

    def displayName(self) -> str:
        return self.tr("Segment roads over a region (Dask)")

    def shortHelpString(self) -> str:
        return self.tr(
            "Segments roads in many or very large rasters at once: each is cut into chunks that Dask workers "
            "segment in parallel, either a local cluster of worker processes on this machine or the workers of a "
            "running Dask scheduler (tcp://host:8786; they must reach the model and the rasters at the same paths). "
            "The results equal Segment roads run on each raster.\n\n"
            "The output folder receives roads.gpkg (fields id, length_m, width_m, mean_prob and source, the raster "
            "each line comes from; in the first raster's CRS), one road probability VRT per raster, the parts and "
            "region.json. Resume finishes an interrupted run in the same folder. Only raster files can be used "
            "(every worker reads them itself).\n\n"
        ) + options_help(InferenceParams) + "<br>" + options_help(VectoriseParams, skip=SET_BY_INFERENCE)

    def initAlgorithm(self, config: dict | None = None) -> None:
        self.addParameter(QgsProcessingParameterMultipleLayers(self.INPUTS, self.tr("Aerial images"),
                                                               QgsProcessing.TypeRaster))
        self.addParameter(QgsProcessingParameterString(
            self.SCHEDULER, self.tr("Dask scheduler address (empty: a local cluster)"), None, False, True))
        self.addParameter(QgsProcessingParameterNumber(
            self.WORKERS, self.tr("Local worker processes (empty: one per core)"), QgsProcessingParameterNumber.Integer,
            None, True, 1, 1024))
        chunk = QgsProcessingParameterNumber(self.CHUNK, self.tr("Chunk size (px)"),
                                             QgsProcessingParameterNumber.Integer, DEFAULT_CHUNK, False, 256, 1 << 20)
        chunk.setFlags(chunk.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(chunk)
        self.addParameter(QgsProcessingParameterBoolean(self.RESUME, self.tr("Resume the run in the output folder"),
                                                        False))
        self.addParameter(QgsProcessingParameterBoolean(self.SKIP_BAD, self.tr("Skip unreadable rasters"), False))
        add_parameters(self, InferenceParams)
        add_parameters(self, VectoriseParams, skip=SET_BY_INFERENCE)
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT_FOLDER, self.tr("Output folder")))
        self.addOutput(QgsProcessingOutputVectorLayer(self.LINES, self.tr("Road lines"),
                                                      QgsProcessing.TypeVectorLine))
        self.addOutput(QgsProcessingOutputMultipleLayers(self.PROBABILITY,
                                                         self.tr("Road probability (a VRT per raster)")))
        self.addOutput(QgsProcessingOutputNumber(self.N_LINES, self.tr("Number of road lines")))
        self.addOutput(QgsProcessingOutputNumber(self.LENGTH_KM, self.tr("Road length (km)")))

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        self.require_dependencies()
        require_dask()
        from ..adapters.qgis_reader import local_file
        from ..core.region import segment_region

        layers = self.parameterAsLayerList(parameters, self.INPUTS, context)
        if not layers:
            raise QgsProcessingException(self.tr("No raster given"))
        files = []
        for layer in layers:
            path = local_file(layer)
            if path is None:
                raise QgsProcessingException(f"{layer.name()}: not a plain raster file; every Dask worker reads the "
                                             "rasters itself: export the layer to a GeoTIFF first")
            files.append(path)
        params = read_parameters(self, InferenceParams, parameters, context, layers[0].crs())
        vectorise = read_parameters(self, VectoriseParams, parameters, context)
        scheduler = self.parameterAsString(parameters, self.SCHEDULER, context).strip() or None
        workers = self.parameterAsInt(parameters, self.WORKERS, context) if parameters.get(self.WORKERS) else None
        folder = self.parameterAsString(parameters, self.OUTPUT_FOLDER, context)

        def progress(p: Any) -> None:
            feedback.setProgress(99 * p.fraction)

        def work():  # in a Python thread (see in_python_thread): the client and the stitching use pyproj
            return segment_region(files, folder, params, vectorise, scheduler=scheduler, workers=workers,
                                  chunk=self.parameterAsInt(parameters, self.CHUNK, context),
                                  resume=self.parameterAsBoolean(parameters, self.RESUME, context),
                                  skip_bad=self.parameterAsBoolean(parameters, self.SKIP_BAD, context),
                                  on_progress=progress, on_message=feedback.pushInfo,
                                  is_cancelled=feedback.isCanceled)

        from ..core.errors import Cancelled

        with self.core_errors():
            try:
                result = in_python_thread(work)
            except Cancelled:
                raise QgsProcessingException(f"Cancelled: the finished parts stay in {folder}; run again with "
                                             "Resume to finish") from None
        for warning in result.warnings:
            feedback.pushWarning(warning)
        feedback.pushInfo(f"{result.chunks} chunk(s) on {result.workers} worker(s): {result.pixels_run / 1e6:.1f} Mpx "
                          f"at {result.mpx_s:.2f} Mpx/s; {result.n_lines} road line(s), {result.length_km:.2f} km")
        feedback.setProgress(100)
        return {self.OUTPUT_FOLDER: str(result.folder), self.LINES: str(result.lines_path),
                self.PROBABILITY: [str(r) for r in result.rasters], self.N_LINES: result.n_lines,
                self.LENGTH_KM: result.length_km}
