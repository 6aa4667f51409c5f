"""roadseg:evaluatemodel: how well a model finds the roads of a reference (drawn lines or a mask)."""
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

from ..core.params import InferenceParams
from .base import (
    RoadSegAlgorithm,
    add_parameters,
    import_training,
    in_python_thread,
    layer_path,
    options_help,
    read_parameters,
    source_to_frame,
)

# The whole raster is compared with the reference, as probabilities (not a 0/1 mask); the
# non-georeferenced pixel size is left out as references need a CRS anyway.
NOT_EVALUATED = ("extent", "binary", "gsd")


def score(prob_path: str, truth_from_grid: Any, threshold: float) -> dict[str, Any]:
    """Pixel, relaxed and APLS figures of the probability raster against the reference (QGIS-free).

    `truth_from_grid(shape, transform, crs)` returns the boolean reference on the prediction's grid.
    """
    import rasterio

    from ..core.apls import apls
    from ..core.metrics import pixel_counts

    with rasterio.open(prob_path) as src:
        pred = src.read(1) >= threshold * 255  # probability x 255 (the engine's encoding)
        valid = src.dataset_mask() > 0
        truth = truth_from_grid((src.height, src.width), src.transform, src.crs)
    figures = pixel_counts(pred, truth, valid).metrics()
    figures["apls"] = float(apls(truth, pred, valid))
    figures.update(threshold=threshold, valid_pixels=int(valid.sum()), reference_pixels=int((truth & valid).sum()))
    return figures


class EvaluateModelAlgorithm(RoadSegAlgorithm):
    RASTER = "RASTER"
    LINES = "LINES"
    BUFFER = "BUFFER"
    REFERENCE_MASK = "REFERENCE_MASK"
    OUTPUT_JSON = "OUTPUT_JSON"
    IOU = "IOU"
    F1 = "F1"
    RELAXED_F1 = "RELAXED_F1"
    APLS = "APLS"

    def name(self) -> str:
        return "evaluatemodel"

    def displayName(self) -> str:
        return self.tr("Evaluate model")

    def shortHelpString(self) -> str:
        return self.tr(
            "Runs a model over an image and compares its roads with a reference: road lines you digitised "
            "(buffered by the road half-width, in metres) or a road mask raster (0/1 or 0/255).\n\n"
            "Outputs IoU, F1 and relaxed F1 (a road pixel counts when the other side has one within 3 px) "
            "over the image's valid pixels, and APLS, which compares the road graphs' shortest paths "
            "(1 = same connectivity). All figures, with precision and recall, go to the JSON file.\n\n"
        ) + options_help(InferenceParams, skip=NOT_EVALUATED)

    def initAlgorithm(self, config: dict | None = None) -> None:
        self.addParameter(QgsProcessingParameterRasterLayer(self.RASTER, self.tr("Aerial image")))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.LINES, self.tr("Reference road lines"), [QgsProcessing.TypeVectorLine], optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.BUFFER, self.tr("Road half-width of the reference lines (m)"), QgsProcessingParameterNumber.Double,
            defaultValue=3.5, minValue=0.1))
        self.addParameter(QgsProcessingParameterRasterLayer(
            self.REFERENCE_MASK, self.tr("Reference road mask (instead of lines)"), optional=True))
        add_parameters(self, InferenceParams, skip=NOT_EVALUATED)
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT_JSON, self.tr("Figures (JSON)"),
                                                                "JSON (*.json)"))
        for key, label in ((self.IOU, "IoU"), (self.F1, "F1"), (self.RELAXED_F1, "Relaxed F1"), (self.APLS, "APLS")):
            self.addOutput(QgsProcessingOutputNumber(key, self.tr(label)))

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        self.require_dependencies()
        from ..core.engine import segment_raster
        from ..task import layer_source

        drawn_lines = import_training("drawn_lines")
        layer = self.parameterAsRasterLayer(parameters, self.RASTER, context)
        if layer is None:
            raise QgsProcessingException(self.invalidRasterError(parameters, self.RASTER))
        reference = self.parameterAsRasterLayer(parameters, self.REFERENCE_MASK, context)
        lines_source = self.parameterAsSource(parameters, self.LINES, context) if parameters.get(self.LINES) else None
        if reference is None and lines_source is None:
            raise QgsProcessingException(self.tr("Give reference road LINES or a REFERENCE_MASK raster"))
        buffer_m = self.parameterAsDouble(parameters, self.BUFFER, context)
        params = read_parameters(self, InferenceParams, parameters, context, layer.crs())

        def work():  # segment, then compare with the reference on the prediction's grid
            result = segment_raster(
                layer_source(layer, params), QgsProcessingUtils.generateTempFilename("roadseg_eval.tif"),
                params.model, device=params.device, backend=params.backend, tile=params.tile,
                overlap=params.overlap, batch_size=params.batch_size,
                bands=list(params.bands) if params.bands else None, threshold=params.threshold, tta=params.tta,
                on_progress=self.progress(feedback, 0, 80), is_cancelled=feedback.isCanceled)
            if reference is not None:
                mask_path = layer_path(reference, "REFERENCE_MASK", "roadseg_reference.tif")
                return score(result.path, lambda *grid: drawn_lines.mask_on_grid(mask_path, *grid), result.threshold)
            lines = source_to_frame(lines_source)
            return score(result.path, lambda *grid: drawn_lines.rasterise_lines(lines, *grid, buffer_m),
                         result.threshold)

        with self.core_errors():
            figures = in_python_thread(work)
        figures.update(model=str(params.model_path),
                       raster=layer.source(), reference="mask" if reference is not None else "lines")
        path = Path(self.parameterAsFileOutput(parameters, self.OUTPUT_JSON, context))
        path.write_text(json.dumps(figures, indent=2))
        feedback.pushInfo(", ".join(f"{k}={figures[k]:.4f}" for k in ("iou", "f1", "relaxed_f1", "apls")))
        return {self.OUTPUT_JSON: str(path), self.IOU: figures["iou"], self.F1: figures["f1"],
                self.RELAXED_F1: figures["relaxed_f1"], self.APLS: figures["apls"]}
