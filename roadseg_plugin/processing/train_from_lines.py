"""roadseg:trainfromlines: fine-tune (or train) a model from road lines digitised over images in QGIS."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputString,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingUtils,
)

from ..adapters.options import devices
from ..core.params import (
    BUNDLED_MODEL,
    FINETUNE_MINUTES,
    FINETUNE_VAL_SHARE,
    ROAD_HALF_WIDTH_M,
    InferenceParams,
    describe,
)
from .base import (
    RoadSegAlgorithm,
    import_training,
    in_python_thread,
    layer_path,
    log_to_feedback,
    set_help,
    source_to_frame,
)


class TrainFromLinesAlgorithm(RoadSegAlgorithm):
    RASTER = "RASTER"
    LINES = "LINES"
    BUFFER = "BUFFER"
    AOI = "AOI"
    INIT_MODEL = "INIT_MODEL"
    KEPT = "KEPT"
    SUMMARY = "SUMMARY"
    MINUTES = "MINUTES"
    VAL_FRACTION = "VAL_FRACTION"
    DEVICE = "DEVICE"
    OUTPUT_MODEL = "OUTPUT_MODEL"
    OUTPUT_FOLDER = "OUTPUT_FOLDER"

    def name(self) -> str:
        return "trainfromlines"

    def displayName(self) -> str:
        return self.tr("Train model from drawn road lines")

    def summary(self) -> str:
        return self.tr(
            "Teaches a RoadSeg model your imagery: digitise road centre lines over one or more 8-bit images "
            "(any CRS), and this algorithm buffers them by the road half-width, cuts the images into "
            "training tiles and trains.\n\n"
            "Without an area of interest each image's whole extent counts, so digitise every road in it. "
            "With a start model (the default: the bundled one) this is a guarded fine-tune: whole tiles of the "
            "labelled area are held back for validation, the start model is measured there first, and the "
            "fine-tuned model is kept only when it does better there (IoU, relaxed F1, APLS); otherwise the start "
            "model is written to the output, and the log says so with both sets of figures. Without a start "
            "model a new one is trained and its best epoch written.")

    def tags(self) -> list[str]:
        return super().tags() + ["training", "fine-tuning", "deep learning", "u-net", "digitised lines",
                                 "labels", "model"]

    def initAlgorithm(self, config: dict | None = None) -> None:
        device = describe(InferenceParams, "device")
        for param, text in (
            (QgsProcessingParameterMultipleLayers(self.RASTER, self.tr("Images"), QgsProcessing.TypeRaster),
             "one or more 8-bit images (any CRS) the lines were digitised over"),
            (QgsProcessingParameterFeatureSource(self.LINES, self.tr("Digitised road lines"),
                                                 [QgsProcessing.TypeVectorLine]),
             "road centre lines (any CRS); every road inside the area of interest"),
            (QgsProcessingParameterNumber(self.BUFFER, self.tr("Road half-width (m)"),
                                          QgsProcessingParameterNumber.Double, defaultValue=ROAD_HALF_WIDTH_M,
                                          minValue=0.1),
             f"the lines are buffered by this many metres to make the road labels; {ROAD_HALF_WIDTH_M:g} m suits a "
             "two-lane road; give half the width of the roads you drew (wide arterials: more)"),
            (QgsProcessingParameterFeatureSource(self.AOI, self.tr("Area of interest (fully labelled polygons)"),
                                                 [QgsProcessing.TypeVectorPolygon], optional=True),
             "polygons where you digitised every road: only they are used, and all in them that is not a "
             "road is background; empty: each image's whole extent"),
            (QgsProcessingParameterFile(self.INIT_MODEL, self.tr("Start model (.pt); empty to train from scratch"),
                                        fileFilter="RoadSeg checkpoint (*.pt)", defaultValue=str(BUNDLED_MODEL),
                                        optional=True),
             "the checkpoint to fine-tune; clear it to train a new model from scratch"),
            (QgsProcessingParameterNumber(self.MINUTES, self.tr("Training time (minutes)"),
                                          QgsProcessingParameterNumber.Double, FINETUNE_MINUTES, minValue=0.1,
                                          maxValue=1440.0),
             "how long the model trains: random crops of the labelled tiles, as many steps as fit, the "
             "learning rate lowered towards the end; 10 minutes on a laptop CPU teach it a new imagery "
             "(crop size, batch and learning rate are chosen from the data and the start model)"),
            (QgsProcessingParameterNumber(self.VAL_FRACTION, self.tr("Validation share (of the road drawn)"),
                                          QgsProcessingParameterNumber.Double, FINETUNE_VAL_SHARE, minValue=0.05,
                                          maxValue=0.5),
             "whole areas holding about this share of the drawn roads are held back to measure the start and "
             "the trained model; they are never trained on"),
            (QgsProcessingParameterEnum(self.DEVICE, self.tr(device["label"]), options=devices(),
                                        defaultValue=device["default"], usesStaticStrings=True), device["help"]),
            (QgsProcessingParameterFileDestination(self.OUTPUT_MODEL, self.tr("Trained model"),
                                                   "RoadSeg model (*.pt)"),
             "the best epoch's checkpoint; use it as the Model of Segment roads"),
            (QgsProcessingParameterFolderDestination(self.OUTPUT_FOLDER, self.tr("Training plots and history")),
             "receives loss.png, predictions.gif and history.csv"),
        ):
            self.addParameter(set_help(param, self.tr(text)))
        self.addOutput(QgsProcessingOutputString(self.KEPT, self.tr("Model kept (fine-tuned, start or trained)")))
        self.addOutput(QgsProcessingOutputString(self.SUMMARY, self.tr("Start vs. fine-tuned on the validation area")))

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        self.require_dependencies()
        self.require_training(self.displayName())
        drawn_lines, train = import_training("drawn_lines"), import_training("train")

        layers = self.parameterAsLayerList(parameters, self.RASTER, context)
        if not layers:
            raise QgsProcessingException(self.tr('"{}": choose at least one image layer').format(
                self.parameterDefinition(self.RASTER).description()))
        lines_source = self.parameterAsSource(parameters, self.LINES, context)
        aoi_source = self.parameterAsSource(parameters, self.AOI, context) if parameters.get(self.AOI) else None
        buffer_m = self.parameterAsDouble(parameters, self.BUFFER, context)
        output_model = Path(self.parameterAsFileOutput(parameters, self.OUTPUT_MODEL, context))
        folder = Path(self.parameterAsString(parameters, self.OUTPUT_FOLDER, context))
        config = self.config(parameters, context, feedback, folder, layers)
        scratch = Path(QgsProcessingUtils.generateTempFilename("roadseg_training"))

        def work():  # label tiles from the drawn lines, then fine-tune (guarded) or train on them
            rasters = [layer_path(layer, layer.name(), f"roadseg_image_{i}.tif") for i, layer in enumerate(layers)]
            aoi = source_to_frame(aoi_source) if aoi_source is not None else None
            if config.init is not None:  # never worse without saying so: see training.finetune
                finetune = import_training("finetune")
                return finetune.finetune_from_lines(finetune.FinetuneConfig(
                    rasters=rasters, lines=source_to_frame(lines_source), aoi=aoi, buffer_m=buffer_m, out=folder,
                    init=config.init, minutes=config.minutes, val_fraction=config.val_fraction,
                    device=config.device, on_progress=config.on_progress, is_cancelled=config.is_cancelled))
            config.data = drawn_lines.make_label_dataset(rasters, source_to_frame(lines_source), scratch / "data",
                                                         buffer_m=buffer_m, aoi=aoi)
            feedback.pushInfo(f"{len(list((config.data / 'images').iterdir()))} labelled tiles in {config.data}")
            return train.train_model(config)

        try:
            with self.core_errors(), log_to_feedback(feedback):  # per epoch, early stopping, findings: live
                outcome = in_python_thread(work)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if feedback.isCanceled() and not getattr(outcome, "cancelled", False):
            raise QgsProcessingException(self.tr("Cancelled: no model was written"))
        from ..core.onnx_backend import copy_with_exports

        if hasattr(outcome, "kept"):  # a fine-tune: its messages and summary went to the log as they came
            if outcome.cancelled:
                feedback.reportError(self.tr(f"Cancelled after {outcome.rounds} round(s): the best round so far was "
                                             f"measured, and the {outcome.kept} model is written"), False)
            copy_with_exports(outcome.model, output_model)  # with its ONNX files: runs without torch too
            return {self.OUTPUT_MODEL: str(output_model), self.OUTPUT_FOLDER: str(folder), self.KEPT: outcome.kept,
                    self.SUMMARY: outcome.summary()}
        if not (folder / "best.pt").is_file():
            raise QgsProcessingException(self.tr(f"Training finished without a model in {folder}"))
        copy_with_exports(folder / "best.pt", output_model)
        return {self.OUTPUT_MODEL: str(output_model), self.OUTPUT_FOLDER: str(folder), self.KEPT: "trained",
                self.SUMMARY: outcome.summary(outcome.history[-1]) if outcome.history else ""}

    def config(self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback,
               folder: Path, layers: list) -> Any:
        """The `TrainConfig` (its `data` is filled in once the tiles exist)."""
        train = import_training("train")
        init = self.parameterAsFile(parameters, self.INIT_MODEL, context) or None
        return train.TrainConfig(
            data=Path(), out=folder, init=Path(init) if init else None,
            minutes=self.parameterAsDouble(parameters, self.MINUTES, context), epochs=1_000_000, patience=1_000_000,
            samples_per_epoch=128, val_fraction=self.parameterAsDouble(parameters, self.VAL_FRACTION, context),
            batch_size=8, workers=0,  # no subprocesses in QGIS
            device=self.parameterAsEnumString(parameters, self.DEVICE, context),
            description=f"drawn lines over {', '.join(layer.name() for layer in layers)}",
            on_progress=self.progress(feedback, 5, 100), is_cancelled=feedback.isCanceled)
