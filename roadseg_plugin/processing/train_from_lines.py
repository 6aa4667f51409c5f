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
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingUtils,
)

from ..core.params import BUNDLED_MODEL, InferenceParams, describe
from .base import RoadSegAlgorithm, devices, import_training, in_python_thread, layer_path, source_to_frame


class TrainFromLinesAlgorithm(RoadSegAlgorithm):
    RASTER = "RASTER"
    LINES = "LINES"
    BUFFER = "BUFFER"
    AOI = "AOI"
    INIT_MODEL = "INIT_MODEL"
    EPOCHS = "EPOCHS"
    VAL_FRACTION = "VAL_FRACTION"
    TILE = "TILE"
    BATCH_SIZE = "BATCH_SIZE"
    DEVICE = "DEVICE"
    OUTPUT_MODEL = "OUTPUT_MODEL"
    OUTPUT_FOLDER = "OUTPUT_FOLDER"

    def name(self) -> str:
        return "trainfromlines"

    def displayName(self) -> str:
        return self.tr("Train model from drawn road lines")

    def shortHelpString(self) -> str:
        return self.tr(
            "Teaches a RoadSeg model your imagery: digitise road centre lines over one or more 8-bit images "
            "(any CRS), and this algorithm buffers them by the road half-width, cuts the images into "
            "training tiles and trains.\n\n"
            "Area of interest (optional): polygons where you digitised every road. Only those areas are "
            "used, and everything in them that is not a road is background. Without it, each image's "
            "whole extent counts, so digitise every road in it.\n\n"
            "The start model (default: the bundled one) is fine-tuned; clear it to train a new model from "
            "scratch. Whole tiles are held back for validation. The best epoch is written to the output "
            "model; the output folder receives loss.png, predictions.gif and history.csv.")

    def initAlgorithm(self, config: dict | None = None) -> None:
        self.addParameter(QgsProcessingParameterMultipleLayers(self.RASTER, self.tr("Images"),
                                                               QgsProcessing.TypeRaster))
        self.addParameter(QgsProcessingParameterFeatureSource(self.LINES, self.tr("Digitised road lines"),
                                                              [QgsProcessing.TypeVectorLine]))
        self.addParameter(QgsProcessingParameterNumber(
            self.BUFFER, self.tr("Road half-width (m)"), QgsProcessingParameterNumber.Double,
            defaultValue=3.5, minValue=0.1))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.AOI, self.tr("Area of interest (fully labelled polygons)"), [QgsProcessing.TypeVectorPolygon],
            optional=True))
        self.addParameter(QgsProcessingParameterFile(
            self.INIT_MODEL, self.tr("Start model (.pt); empty to train from scratch"),
            fileFilter="RoadSeg checkpoint (*.pt)",
            defaultValue=str(BUNDLED_MODEL), optional=True))
        self.addParameter(QgsProcessingParameterNumber(self.EPOCHS, self.tr("Epochs"),
                                                       QgsProcessingParameterNumber.Integer, 20, minValue=1))
        self.addParameter(QgsProcessingParameterNumber(
            self.VAL_FRACTION, self.tr("Validation fraction (of tiles)"), QgsProcessingParameterNumber.Double,
            0.2, minValue=0.01, maxValue=0.9))
        self.addParameter(QgsProcessingParameterNumber(self.TILE, self.tr("Training crop size (px)"),
                                                       QgsProcessingParameterNumber.Integer, 256, minValue=32))
        self.addParameter(QgsProcessingParameterNumber(self.BATCH_SIZE, self.tr("Batch size"),
                                                       QgsProcessingParameterNumber.Integer, 8, minValue=1))
        device = describe(InferenceParams, "device")
        self.addParameter(QgsProcessingParameterEnum(
            self.DEVICE, self.tr(device["label"]), options=devices(), defaultValue=device["default"],
            usesStaticStrings=True))
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT_MODEL, self.tr("Trained model"),
                                                                "RoadSeg model (*.pt)"))
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT_FOLDER,
                                                                  self.tr("Training plots and history")))

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        self.require_dependencies()
        drawn_lines, train = import_training("drawn_lines"), import_training("train")

        layers = self.parameterAsLayerList(parameters, self.RASTER, context)
        if not layers:
            raise QgsProcessingException(self.tr("RASTER: choose at least one image layer"))
        lines_source = self.parameterAsSource(parameters, self.LINES, context)
        aoi_source = self.parameterAsSource(parameters, self.AOI, context) if parameters.get(self.AOI) else None
        buffer_m = self.parameterAsDouble(parameters, self.BUFFER, context)
        output_model = Path(self.parameterAsFileOutput(parameters, self.OUTPUT_MODEL, context))
        folder = Path(self.parameterAsString(parameters, self.OUTPUT_FOLDER, context))
        config = self.config(parameters, context, feedback, folder, layers)
        scratch = Path(QgsProcessingUtils.generateTempFilename("roadseg_training"))

        def work():  # label tiles from the drawn lines, then train on them
            rasters = [layer_path(layer, "RASTER", f"roadseg_image_{i}.tif") for i, layer in enumerate(layers)]
            aoi = source_to_frame(aoi_source) if aoi_source is not None else None
            config.data = drawn_lines.make_label_dataset(rasters, source_to_frame(lines_source), scratch / "data",
                                                         buffer_m=buffer_m, aoi=aoi)
            feedback.pushInfo(f"{len(list((config.data / 'images').iterdir()))} labelled tiles in {config.data}")
            return train.train_model(config)

        try:
            with self.core_errors():
                trainer = in_python_thread(work)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if feedback.isCanceled():
            raise QgsProcessingException(self.tr("Cancelled: no model was written"))
        if not (folder / "best.pt").is_file():
            raise QgsProcessingException(self.tr(f"Training finished without a model in {folder}"))
        output_model.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / "best.pt", output_model)
        for row in trainer.history[-1:]:
            feedback.pushInfo(trainer.summary(row))
        return {self.OUTPUT_MODEL: str(output_model), self.OUTPUT_FOLDER: str(folder)}

    def config(self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback,
               folder: Path, layers: list) -> Any:
        """The `TrainConfig` (its `data` is filled in once the tiles exist)."""
        train = import_training("train")
        init = self.parameterAsFile(parameters, self.INIT_MODEL, context) or None
        return train.TrainConfig(
            data=Path(), out=folder, init=Path(init) if init else None,
            epochs=self.parameterAsInt(parameters, self.EPOCHS, context),
            val_fraction=self.parameterAsDouble(parameters, self.VAL_FRACTION, context),
            tile=self.parameterAsInt(parameters, self.TILE, context),
            batch_size=self.parameterAsInt(parameters, self.BATCH_SIZE, context), workers=0,  # no subprocesses in QGIS
            device=self.parameterAsEnumString(parameters, self.DEVICE, context),
            description=f"drawn lines over {', '.join(layer.name() for layer in layers)}",
            on_progress=self.progress(feedback, 5, 100), is_cancelled=feedback.isCanceled)
