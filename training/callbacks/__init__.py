"""Training callbacks, one job each: `on_epoch_end(trainer, logs)` and optional state for resume."""
from .base import Callback
from .csv_logger import CSVLogger
from .early_stopping import EarlyStopping
from .loss_plot import LossPlot
from .model_checkpoint import ModelCheckpoint
from .prediction_gif import PredictionGif

__all__ = ["Callback", "CSVLogger", "EarlyStopping", "LossPlot", "ModelCheckpoint", "PredictionGif"]
