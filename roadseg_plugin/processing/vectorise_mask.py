"""roadseg:vectorisemask: a road mask or probability raster in, cleaned-up centre lines out."""
from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsWkbTypes,
)

from .base import RoadSegAlgorithm, add_lines, in_python_thread, layer_path, line_fields

# (key, label, default) in metres; the defaults are core.vectorise.VectoriseParams' (a test checks)
CLEANUP = (
    ("MIN_LENGTH", "Minimum road length (m)", 20.0),
    ("SPUR_LENGTH", "Remove dead-end spurs shorter than (m)", 10.0),
    ("GAP", "Bridge gaps between aligned line ends up to (m)", 15.0),
    ("TOLERANCE", "Simplification tolerance (m)", 1.0),
)


class VectoriseMaskAlgorithm(RoadSegAlgorithm):
    INPUT = "INPUT"
    THRESHOLD = "THRESHOLD"
    MIN_LENGTH = "MIN_LENGTH"
    SPUR_LENGTH = "SPUR_LENGTH"
    GAP = "GAP"
    TOLERANCE = "TOLERANCE"
    SMOOTH = "SMOOTH"
    OUTPUT = "OUTPUT"

    def name(self) -> str:
        return "vectorisemask"

    def displayName(self) -> str:  # noqa: N802 (QGIS API)
        return self.tr("Vectorise road mask")

    def shortHelpString(self) -> str:  # noqa: N802 (QGIS API)
        return self.tr(
            "Turns a road raster (a RoadSeg probability raster with values 0-255, or a 0/1 or 0/255 mask) "
            "into road centre lines with fields id, length_m, width_m and mean_prob.\n\n"
            "Pixels at or above the threshold (a probability, 0-1) are road. The clean-up distances are "
            "in metres: lines shorter than the minimum length are dropped, dead-end spurs shorter than the "
            "spur length are pruned, aligned line ends up to the gap length apart are joined, and lines are "
            "simplified (and optionally smoothed).")

    def initAlgorithm(self, config: dict | None = None) -> None:  # noqa: N802 (QGIS API)
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Road mask or probability raster")))
        self.addParameter(QgsProcessingParameterNumber(
            self.THRESHOLD, self.tr("Road probability threshold"), QgsProcessingParameterNumber.Double,
            defaultValue=0.5, minValue=0.0, maxValue=1.0))
        for key, label, default in CLEANUP:
            self.addParameter(QgsProcessingParameterNumber(
                key, self.tr(label), QgsProcessingParameterNumber.Double, defaultValue=default, minValue=0.0))
        self.addParameter(QgsProcessingParameterBoolean(self.SMOOTH, self.tr("Smooth lines"), defaultValue=False))
        self.addParameter(QgsProcessingParameterFeatureSink(self.OUTPUT, self.tr("Road lines"),
                                                            QgsProcessing.TypeVectorLine))

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:  # noqa: N802 (QGIS API)
        self.require_dependencies()
        from ..core.vectorise import vectorise_raster

        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException(self.invalidRasterError(parameters, self.INPUT))
        cleanup = {key.lower(): self.parameterAsDouble(parameters, key, context) for key, _, _ in CLEANUP}
        cleanup["smooth"] = self.parameterAsBoolean(parameters, self.SMOOTH, context)
        threshold = self.parameterAsDouble(parameters, self.THRESHOLD, context)

        def work():
            path = layer_path(layer, "INPUT", "roadseg_mask.tif")
            feedback.setProgress(10)
            return vectorise_raster(path, threshold=threshold, on_progress=self.progress(feedback, 10, 80),
                                    is_cancelled=feedback.isCanceled, **cleanup)

        with self.core_errors():
            lines = in_python_thread(work)
        feedback.setProgress(80)
        sink, dest_id = self.parameterAsSink(parameters, self.OUTPUT, context, line_fields(),
                                             QgsWkbTypes.LineString, layer.crs())
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, self.OUTPUT))
        count = add_lines(sink, lines, feedback)
        feedback.pushInfo(f"{count} road line(s)")
        feedback.setProgress(100)
        return {self.OUTPUT: dest_id}
