"""roadseg:vectorisemask: a road mask or probability raster in, cleaned-up centre lines out.

The threshold and clean-up options are generated from `VectoriseParams` (`base.add_parameters`; lengths as
distances linked to INPUT) and the run is `core.pipeline.vectorise_file`, as for
`python -m roadseg_plugin vectorise`. Lines QGIS loads on completion are named after the input
and styled as the Segment roads task styles them.
"""
from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterRasterLayer,
    QgsWkbTypes,
)

from ..adapters.styles import ROADS_NAME, style_on_load, style_roads
from ..core.params import VectoriseParams
from .base import (
    RoadSegAlgorithm,
    add_lines,
    add_parameters,
    check_sink_destination,
    in_python_thread,
    layer_path,
    lengths_note,
    line_fields,
    read_parameters,
    set_help,
)
from .segment_roads import SINK_OPTIONS


class VectoriseMaskAlgorithm(RoadSegAlgorithm):
    INPUT = "INPUT"
    OUTPUT = "OUTPUT"

    def name(self) -> str:
        return "vectorisemask"

    def displayName(self) -> str:
        return self.tr("Vectorise road mask")

    def summary(self) -> str:
        return self.tr(
            "Turns a road raster (a RoadSeg probability raster with values 0-255, or a 0/1 or 0/255 mask) "
            "into road centre lines with fields id, length_m, width_m and mean_prob.\n\n"
            "Pixels at or above the threshold (a probability, 0-1) are road. Lengths are in the units "
            "of the raster's CRS (metres for UTM and most projected CRSs; the dialog converts other "
            "units); for a raster in degrees they are metres.")

    def tags(self) -> list[str]:
        return super().tags() + ["mask", "skeleton", "centre lines", "centerlines", "vectorise", "vectorize",
                                 "raster to vector", "clean-up"]

    def initAlgorithm(self, config: dict | None = None) -> None:
        self.addParameter(set_help(QgsProcessingParameterRasterLayer(
            self.INPUT, self.tr("Road mask or probability raster")), self.tr(
            "a RoadSeg probability raster (0-255), or a road mask with values 0/1 or 0/255")))
        add_parameters(self, VectoriseParams, skip=SINK_OPTIONS, parent=self.INPUT)
        self.addParameter(set_help(QgsProcessingParameterFeatureSink(
            self.OUTPUT, self.tr("Road lines"), QgsProcessing.TypeVectorLine), self.tr(
            "road centre lines with id, length_m, width_m and mean_prob, in the raster's CRS; any vector format")))

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        self.require_dependencies()
        from ..core.pipeline import vectorise_file

        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException(self.invalidRasterError(parameters, self.INPUT))
        vectorise = read_parameters(self, VectoriseParams, parameters, context, layer.crs())
        if lengths_note(layer.crs()):
            feedback.pushInfo(f"{lengths_note(layer.crs())}: minimum road length {vectorise.min_length:g} m")
        check_sink_destination(self, parameters, self.OUTPUT, context, [layer.source()])

        def work():
            path = layer_path(layer, self.parameterDefinition(self.INPUT).description(), "roadseg_mask.tif")
            feedback.setProgress(10)
            return vectorise_file(path, None, vectorise, on_progress=self.progress(feedback, 10, 80),
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
        style_on_load(context, dest_id, self.tr(ROADS_NAME).format(layer.name()), style_roads)
        return {self.OUTPUT: dest_id}
