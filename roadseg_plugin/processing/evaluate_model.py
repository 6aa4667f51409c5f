"""roadseg:evaluatemodel: how well a model finds the roads of a reference (drawn lines or a mask).

An optional area of interest (polygons) limits the comparison to where the reference is complete:
pixels outside it count for no metric, and APLS compares only the road graphs inside it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingUtils,
)

from ..core.params import ROAD_HALF_WIDTH_M, InferenceParams
from .base import (
    RoadSegAlgorithm,
    add_parameters,
    import_training,
    in_python_thread,
    layer_path,
    read_parameters,
    set_help,
    source_to_frame,
)

# The whole raster is compared with the reference, as probabilities (not a 0/1 mask); the
# non-georeferenced pixel size is left out as references need a CRS anyway.
NOT_EVALUATED = ("extent", "binary", "gsd")


def score(prob_path: str, truth_from_grid: Any, threshold: float, aoi_from_grid: Any = None) -> dict[str, Any]:
    """Pixel, relaxed and APLS figures of the probability raster against the reference (QGIS-free).

    `truth_from_grid(shape, transform, crs)` returns the boolean reference on the prediction's grid;
    `aoi_from_grid` (same arguments), when given, the pixels to judge: the others are left out of
    every figure, as no-data pixels are.

    Raises:
        DatasetError: the area of interest covers no valid pixel of the raster.
    """
    import rasterio

    from ..core.apls import apls
    from ..core.errors import DatasetError
    from ..core.metrics import pixel_counts

    with rasterio.open(prob_path) as src:
        pred = src.read(1) >= threshold * 255  # probability x 255 (the engine's encoding)
        valid = src.dataset_mask() > 0
        truth = truth_from_grid((src.height, src.width), src.transform, src.crs)
        if aoi_from_grid is not None:
            valid &= aoi_from_grid((src.height, src.width), src.transform, src.crs)
            if not valid.any():
                raise DatasetError("", "the area of interest covers none of the raster's valid pixels",
                                   "draw it over the raster (check both layers' CRS)")
    figures = pixel_counts(pred, truth, valid).metrics()
    figures["apls"] = float(apls(truth, pred, valid))
    figures.update(threshold=threshold, valid_pixels=int(valid.sum()), reference_pixels=int((truth & valid).sum()))
    return figures


class EvaluateModelAlgorithm(RoadSegAlgorithm):
    RASTER = "RASTER"
    LINES = "LINES"
    BUFFER = "BUFFER"
    REFERENCE_MASK = "REFERENCE_MASK"
    AOI = "AOI"
    OUTPUT_JSON = "OUTPUT_JSON"
    IOU = "IOU"
    F1 = "F1"
    RELAXED_F1 = "RELAXED_F1"
    APLS = "APLS"

    def name(self) -> str:
        return "evaluatemodel"

    def displayName(self) -> str:
        return self.tr("Evaluate model")

    def summary(self) -> str:
        return self.tr(
            "Runs a model over an image and compares its roads with a reference: road lines you digitised "
            "(buffered by the road half-width, in metres) or a road mask raster (0/1 or 0/255).\n\n"
            "Outputs IoU, F1 and relaxed F1 (a road pixel counts when the other side has one within 3 px) "
            "over the image's valid pixels, and APLS, which compares the road graphs' shortest paths "
            "(1 = same connectivity). All figures, with precision and recall, go to the JSON file.\n\n"
            "Reference lines drawn over part of the image: give the area where you drew every road as the "
            "area of interest, or the roads elsewhere count as false positives.")

    def tags(self) -> list[str]:
        return super().tags() + ["evaluation", "accuracy", "metrics", "iou", "f1", "apls", "validation",
                                 "reference", "ground truth"]

    def initAlgorithm(self, config: dict | None = None) -> None:
        self.addParameter(set_help(QgsProcessingParameterRasterLayer(self.RASTER, self.tr("Aerial image")), self.tr(
            "the image the model segments")))
        self.addParameter(set_help(QgsProcessingParameterFeatureSource(
            self.LINES, self.tr("Reference road lines"), [QgsProcessing.TypeVectorLine], optional=True), self.tr(
            "road centre lines you digitised (any CRS); give these or a reference road mask")))
        self.addParameter(set_help(QgsProcessingParameterNumber(
            self.BUFFER, self.tr("Road half-width of the reference lines (m)"), QgsProcessingParameterNumber.Double,
            defaultValue=ROAD_HALF_WIDTH_M, minValue=0.1),
            self.tr("the reference lines are buffered by this many metres")))
        self.addParameter(set_help(QgsProcessingParameterRasterLayer(
            self.REFERENCE_MASK, self.tr("Reference road mask (instead of lines)"), optional=True), self.tr(
            "a raster with roads 1 or 255 and background 0, used instead of reference lines")))
        self.addParameter(set_help(QgsProcessingParameterFeatureSource(
            self.AOI, self.tr("Area of interest (where the reference is complete)"),
            [QgsProcessing.TypeVectorPolygon], optional=True), self.tr(
            "polygons (any CRS); only pixels inside them are compared; empty: the whole image")))
        add_parameters(self, InferenceParams, skip=NOT_EVALUATED)
        self.addParameter(set_help(QgsProcessingParameterFileDestination(
            self.OUTPUT_JSON, self.tr("Figures (JSON)"), "JSON (*.json)"), self.tr(
            "every figure, with precision, recall, the threshold and the pixel counts")))
        for key, label in ((self.IOU, "IoU"), (self.F1, "F1"), (self.RELAXED_F1, "Relaxed F1"), (self.APLS, "APLS")):
            self.addOutput(QgsProcessingOutputNumber(key, self.tr(label)))

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        self.require_dependencies()
        from ..adapters.layers import layer_source
        from ..core.engine import segment_raster

        drawn_lines = import_training("drawn_lines")
        layer = self.parameterAsRasterLayer(parameters, self.RASTER, context)
        if layer is None:
            raise QgsProcessingException(self.invalidRasterError(parameters, self.RASTER))
        reference = self.parameterAsRasterLayer(parameters, self.REFERENCE_MASK, context)
        lines_source = self.parameterAsSource(parameters, self.LINES, context) if parameters.get(self.LINES) else None
        if reference is None and lines_source is None:
            raise QgsProcessingException(self.tr('Give "{}" or a "{}"').format(
                self.parameterDefinition(self.LINES).description(),
                self.parameterDefinition(self.REFERENCE_MASK).description()))
        aoi_source = self.parameterAsSource(parameters, self.AOI, context) if parameters.get(self.AOI) else None
        buffer_m = self.parameterAsDouble(parameters, self.BUFFER, context)
        params = read_parameters(self, InferenceParams, parameters, context, layer.crs())

        def work():  # segment, then compare with the reference on the prediction's grid
            result = segment_raster(
                layer_source(layer, params), QgsProcessingUtils.generateTempFilename("roadseg_eval.tif"),
                params.model, device=params.device, backend=params.backend, tile=params.tile,
                overlap=params.overlap, batch_size=params.batch_size,
                bands=list(params.bands) if params.bands else None, threshold=params.threshold, tta=params.tta,
                on_progress=self.progress(feedback, 0, 80), is_cancelled=feedback.isCanceled)
            aoi = source_to_frame(aoi_source) if aoi_source is not None else None
            in_aoi = (lambda *grid: drawn_lines.rasterise_areas(aoi, *grid)) if aoi is not None else None
            if reference is not None:
                mask_path = layer_path(reference, self.parameterDefinition(self.REFERENCE_MASK).description(),
                                       "roadseg_reference.tif")
                return score(result.path, lambda *grid: drawn_lines.mask_on_grid(mask_path, *grid), result.threshold,
                             in_aoi)
            lines = source_to_frame(lines_source)
            return score(result.path, lambda *grid: drawn_lines.rasterise_lines(lines, *grid, buffer_m),
                         result.threshold, in_aoi)

        with self.core_errors():
            figures = in_python_thread(work)
        figures.update(model=str(params.model_path), raster=layer.source(),
                       reference="mask" if reference is not None else "lines", aoi=aoi_source is not None)
        path = Path(self.parameterAsFileOutput(parameters, self.OUTPUT_JSON, context))
        path.write_text(json.dumps(figures, indent=2))
        feedback.pushInfo(", ".join(f"{k}={figures[k]:.4f}" for k in ("iou", "f1", "relaxed_f1", "apls")))
        return {self.OUTPUT_JSON: str(path), self.IOU: figures["iou"], self.F1: figures["f1"],
                self.RELAXED_F1: figures["relaxed_f1"], self.APLS: figures["apls"]}
