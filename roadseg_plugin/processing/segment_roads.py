"""roadseg:segmentroads: a raster layer in, road centre lines (and optionally probabilities) out.

A thin translation: the options are generated from `InferenceParams` / `VectoriseParams`
(`base.add_parameters`; the clean-up lengths as distances linked to INPUT), read back into them,
and handed with the layer to `core.pipeline.extract_roads`, the chain the CLI and the Segment
roads task run too. Outputs QGIS loads on completion are named after the input layer and styled
as the task styles them (`styles.style_on_load`).
"""
from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsWkbTypes,
)

from ..adapters.options import qgis_message
from ..adapters.styles import PROBABILITY_NAME, ROADS_NAME, style_on_load, style_probability, style_roads
from ..core.params import SET_BY_INFERENCE, InferenceParams, VectoriseParams
from .base import (
    RoadSegAlgorithm,
    add_lines,
    add_parameters,
    check_sink_destination,
    given,
    in_python_thread,
    lengths_note,
    line_fields,
    polygons_in,
    read_parameters,
    set_help,
)

# The feature sink writes the lines in the format QGIS picks from OUTPUT; the core's is unused.
SINK_OPTIONS = ("format",)


class SegmentRoadsAlgorithm(RoadSegAlgorithm):
    INPUT = "INPUT"
    AOI = "AOI"
    OUTPUT = "OUTPUT"
    MASK_OUTPUT = "MASK_OUTPUT"

    def name(self) -> str:
        return "segmentroads"

    def displayName(self) -> str:
        return self.tr("Segment roads")

    def summary(self) -> str:
        return self.tr(
            "Finds roads in an aerial image with a RoadSeg model and writes them as centre lines "
            "(fields id, length_m, width_m, mean_prob) in the image's CRS.\n\n"
            "Any raster layer works: files, VRTs, GeoPackage rasters and web map layers (XYZ, WMS: give an "
            "extent or areas of interest, as their whole extent is the world). Areas of interest limit the "
            "work to the inside of polygons (the selected ones with \"Selected features only\"). The image is "
            "read at the model's ground resolution (about 1 m per pixel for the bundled model; in Web "
            "Mercator a map unit is less than a metre away from the equator). Options left empty take the "
            "model's or RoadSeg's default. Lengths (minimum length, spur, gap, tolerance, and length_m) are "
            "true metres on the ground, whatever the CRS.")

    def tags(self) -> list[str]:
        return super().tags() + ["segmentation", "extraction", "deep learning", "u-net", "aerial imagery",
                                 "centre lines", "centerlines", "vectorise", "raster to vector"]

    def initAlgorithm(self, config: dict | None = None) -> None:
        self.addParameter(set_help(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Aerial image")), self.tr(
            "any raster layer with the bands the model takes (8-bit RGB for the bundled model)")))
        self.addParameter(set_help(QgsProcessingParameterFeatureSource(
            self.AOI, self.tr("Areas of interest (polygons)"), [QgsProcessing.TypeVectorPolygon], optional=True),
            self.tr("only the image inside these polygons is processed (with an Extent too: inside both); "
                    "empty: the Extent, else the whole image (a web map needs one or the other)")))
        add_parameters(self, InferenceParams)
        add_parameters(self, VectoriseParams, skip=SINK_OPTIONS + SET_BY_INFERENCE, parent=self.INPUT)
        self.addParameter(set_help(QgsProcessingParameterFeatureSink(
            self.OUTPUT, self.tr("Road lines"), QgsProcessing.TypeVectorLine), self.tr(
            "road centre lines with id, length_m, width_m and mean_prob, in the image's CRS; any vector format")))
        self.addParameter(set_help(QgsProcessingParameterRasterDestination(
            self.MASK_OUTPUT, self.tr("Road probability raster"), optional=True, createByDefault=False), self.tr(
            "optional GeoTIFF of road probabilities x 255 (0/1 with the binary mask option)")))

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        self.require_dependencies()
        from ..adapters.layers import layer_source
        from ..core.pipeline import extract_roads

        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException(self.invalidRasterError(parameters, self.INPUT))
        params = read_parameters(self, InferenceParams, parameters, context, layer.crs())
        vectorise = read_parameters(self, VectoriseParams, parameters, context, layer.crs())
        if lengths_note(layer.crs()):
            feedback.pushInfo(f"{lengths_note(layer.crs())}: minimum road length {vectorise.min_length:g} m")
        mask_path = self.parameterAsOutputLayer(parameters, self.MASK_OUTPUT, context) or None
        aoi = polygons_in(self.parameterAsSource(parameters, self.AOI, context) if given(parameters, self.AOI)
                          else None, layer.crs(), context)
        check_sink_destination(self, parameters, self.OUTPUT, context, [layer.source(), params.model_path])

        def work():  # in a Python thread: the reader and the vectoriser use pyproj
            return extract_roads(layer_source(layer, params, aoi), None, params, vectorise, prob_out=mask_path,
                                 on_progress=self.progress(feedback, 0, 98), is_cancelled=feedback.isCanceled)

        with self.core_errors():
            result = in_python_thread(work)
        seg = result.segment
        feedback.pushInfo(f"Segmented {seg.width}x{seg.height} px with {seg.backend} on {seg.device} "
                          f"in {seg.seconds:.1f} s (threshold {result.threshold:g})")
        for warning in result.warnings:
            feedback.pushWarning(qgis_message(warning, self))
        sink, dest_id = self.parameterAsSink(parameters, self.OUTPUT, context, line_fields(),
                                             QgsWkbTypes.LineString, layer.crs())
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, self.OUTPUT))
        count = add_lines(sink, result.lines, feedback)
        feedback.pushInfo(f"{count} road line(s), {result.length_km:.2f} km")
        feedback.setProgress(100)
        style_on_load(context, dest_id, self.tr(ROADS_NAME).format(layer.name()), style_roads)
        outputs = {self.OUTPUT: dest_id}
        if mask_path:
            maximum = 1 if params.binary else 255
            style_on_load(context, mask_path, self.tr(PROBABILITY_NAME).format(layer.name()),
                          lambda loaded: style_probability(loaded, maximum))
            outputs[self.MASK_OUTPUT] = mask_path
        return outputs
