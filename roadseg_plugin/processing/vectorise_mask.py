"""roadseg:vectorisemask: a road mask or probability raster in, cleaned-up centre lines out.

The clean-up options are generated from `VectoriseParams` (`base.add_parameters`) and the run is
`core.pipeline.vectorise_file`, as for `python -m roadseg_plugin vectorise`.
"""
from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsWkbTypes,
)

from ..core.params import VectoriseParams
from .base import (
    RoadSegAlgorithm,
    add_lines,
    add_parameters,
    given,
    in_python_thread,
    layer_path,
    line_fields,
    options_help,
    read_parameters,
)
from .segment_roads import SINK_OPTIONS


class VectoriseMaskAlgorithm(RoadSegAlgorithm):
    INPUT = "INPUT"
    THRESHOLD = "THRESHOLD"
    OUTPUT = "OUTPUT"

    def name(self) -> str:
        return "vectorisemask"

    def displayName(self) -> str:
        return self.tr("Vectorise road mask")

    def shortHelpString(self) -> str:
        return self.tr(
            "Turns a road raster (a RoadSeg probability raster with values 0-255, or a 0/1 or 0/255 mask) "
            "into road centre lines with fields id, length_m, width_m and mean_prob.\n\n"
            "Pixels at or above the threshold (a probability, 0-1) are road; left empty, it is the one "
            "RoadSeg stored in a probability raster it wrote, else 0.5. The clean-up distances are in "
            "metres.\n\n"
        ) + options_help(VectoriseParams, skip=SINK_OPTIONS)

    def initAlgorithm(self, config: dict | None = None) -> None:
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Road mask or probability raster")))
        threshold = QgsProcessingParameterNumber(
            self.THRESHOLD, self.tr("Road probability threshold (0-1)"), QgsProcessingParameterNumber.Double,
            None, True, 0.0, 1.0)
        threshold.setHelp(self.tr("empty: the threshold stored in a RoadSeg probability raster, else 0.5"))
        self.addParameter(threshold)
        add_parameters(self, VectoriseParams, skip=SINK_OPTIONS)
        self.addParameter(QgsProcessingParameterFeatureSink(self.OUTPUT, self.tr("Road lines"),
                                                            QgsProcessing.TypeVectorLine))

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        self.require_dependencies()
        from ..core.pipeline import vectorise_file

        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException(self.invalidRasterError(parameters, self.INPUT))
        vectorise = read_parameters(self, VectoriseParams, parameters, context)
        threshold = (self.parameterAsDouble(parameters, self.THRESHOLD, context)
                     if given(parameters, self.THRESHOLD) else None)  # None: the raster's own, else 0.5

        def work():
            path = layer_path(layer, "INPUT", "roadseg_mask.tif")
            feedback.setProgress(10)
            return vectorise_file(path, None, vectorise, threshold, on_progress=self.progress(feedback, 10, 80),
                                  is_cancelled=feedback.isCanceled)

        with self.core_errors():
            result = in_python_thread(work)
        feedback.setProgress(80)
        sink, dest_id = self.parameterAsSink(parameters, self.OUTPUT, context, line_fields(),
                                             QgsWkbTypes.LineString, layer.crs())
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, self.OUTPUT))
        count = add_lines(sink, result.lines, feedback)
        feedback.pushInfo(f"{count} road line(s), threshold {result.threshold:g}")
        feedback.setProgress(100)
        return {self.OUTPUT: dest_id}
