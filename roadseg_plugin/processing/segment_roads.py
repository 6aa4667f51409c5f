"""roadseg:segmentroads: a raster layer in, road centre lines (and optionally probabilities) out."""
from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingUtils,
    QgsWkbTypes,
)

from .base import (BUNDLED_MODEL, MODEL_FILTER, RoadSegAlgorithm, add_lines, devices, in_python_thread, line_fields,
                   model_meta)

DEFAULT_MIN_LENGTH_M = 20.0


class SegmentRoadsAlgorithm(RoadSegAlgorithm):
    INPUT = "INPUT"
    MODEL = "MODEL"
    DEVICE = "DEVICE"
    EXTENT = "EXTENT"
    THRESHOLD = "THRESHOLD"
    MIN_LENGTH = "MIN_LENGTH"
    TTA = "TTA"
    OUTPUT = "OUTPUT"
    MASK_OUTPUT = "MASK_OUTPUT"

    def name(self) -> str:
        return "segmentroads"

    def displayName(self) -> str:  # noqa: N802 (QGIS API)
        return self.tr("Segment roads")

    def shortHelpString(self) -> str:  # noqa: N802 (QGIS API)
        return self.tr(
            "Finds roads in an aerial image with a RoadSeg model and writes them as centre lines "
            "(fields id, length_m, width_m, mean_prob) in the image's CRS.\n\n"
            "Any raster layer works: files, VRTs, GeoPackage rasters and web map layers (give an extent "
            "for those). The image is read at the model's resolution (about 1 m per pixel for the "
            "bundled model).\n\n"
            "Threshold -1 uses the model's own threshold. Lines shorter than the minimum length (metres) "
            "are dropped. Test-time augmentation averages 8 flips/rotations: slower, a little better. "
            "The optional probability raster holds 0-255 road probabilities.")

    def initAlgorithm(self, config: dict | None = None) -> None:  # noqa: N802 (QGIS API)
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Aerial image")))
        self.addParameter(QgsProcessingParameterFile(
            self.MODEL, self.tr("Model (.pt); empty for the bundled model"), fileFilter=MODEL_FILTER,
            defaultValue=str(BUNDLED_MODEL), optional=True))
        self.addParameter(QgsProcessingParameterEnum(
            self.DEVICE, self.tr("Device"), options=devices(), defaultValue="auto", usesStaticStrings=True))
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, self.tr("Extent (default: whole layer)"),
                                                       optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.THRESHOLD, self.tr("Road probability threshold (-1: the model's)"),
            QgsProcessingParameterNumber.Double, defaultValue=-1.0, minValue=-1.0, maxValue=1.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.MIN_LENGTH, self.tr("Minimum road length (m)"), QgsProcessingParameterNumber.Double,
            defaultValue=DEFAULT_MIN_LENGTH_M, minValue=0.0))
        self.addParameter(QgsProcessingParameterBoolean(self.TTA, self.tr("Test-time augmentation"),
                                                        defaultValue=False))
        self.addParameter(QgsProcessingParameterFeatureSink(self.OUTPUT, self.tr("Road lines"),
                                                            QgsProcessing.TypeVectorLine))
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.MASK_OUTPUT, self.tr("Road probability raster"), optional=True, createByDefault=False))

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:  # noqa: N802 (QGIS API)
        self.require_dependencies()
        from ..core.engine import segment_raster
        from ..core.vectorise import vectorise_raster
        from ..qgis_reader import raster_source

        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException(self.invalidRasterError(parameters, self.INPUT))
        extent = self.parameterAsExtent(parameters, self.EXTENT, context, layer.crs()) \
            if parameters.get(self.EXTENT) else None
        threshold = self.parameterAsDouble(parameters, self.THRESHOLD, context)
        mask_path = self.parameterAsOutputLayer(parameters, self.MASK_OUTPUT, context)
        prob_path = mask_path or QgsProcessingUtils.generateTempFilename("roadseg_probability.tif")
        model = self.parameterAsFile(parameters, self.MODEL, context) or None
        device = self.parameterAsEnumString(parameters, self.DEVICE, context)
        tta = self.parameterAsBoolean(parameters, self.TTA, context)
        min_length = self.parameterAsDouble(parameters, self.MIN_LENGTH, context)

        def work():  # the core: segment, then vectorise
            result = segment_raster(
                raster_source(layer, extent, model_meta(model).gsd_m), prob_path, model, device=device,
                threshold=None if threshold < 0 else threshold, tta=tta, on_progress=self.progress(feedback, 0, 90),
                is_cancelled=feedback.isCanceled)
            feedback.pushInfo(f"Segmented {result.width}x{result.height} px with {result.backend} on {result.device} "
                              f"in {result.seconds:.1f} s")
            for warning in result.warnings:
                feedback.pushWarning(warning)
            return vectorise_raster(result.path, threshold=result.threshold, min_length=min_length,
                                    on_progress=self.progress(feedback, 90, 98), is_cancelled=feedback.isCanceled)

        with self.core_errors():
            lines = in_python_thread(work)
        sink, dest_id = self.parameterAsSink(parameters, self.OUTPUT, context, line_fields(),
                                             QgsWkbTypes.LineString, layer.crs())
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, self.OUTPUT))
        count = add_lines(sink, lines, feedback)
        feedback.pushInfo(f"{count} road line(s), {lines['length_m'].sum() / 1000:.2f} km")
        feedback.setProgress(100)
        outputs = {self.OUTPUT: dest_id}
        if mask_path:
            outputs[self.MASK_OUTPUT] = mask_path
        return outputs
