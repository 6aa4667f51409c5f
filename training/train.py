"""Assemble a training run: data, model, callbacks, trainer. `train_model` is what the CLI and
the QGIS `trainfromlines` algorithm call."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable
from pathlib import Path

import torch

from roadseg_plugin.core.backends import resolve_device
from roadseg_plugin.core.checkpoint import ModelMeta, load_model
from roadseg_plugin.core.errors import DatasetError
from roadseg_plugin.core.unet import build_model

from .callbacks import CSVLogger, EarlyStopping, LossPlot, ModelCheckpoint, PredictionGif
from .datasets import RandomCropDataset, Tile, band_stats, load_tiles, split_tiles
from .trainer import FitConfig, Trainer

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    data: Path
    out: Path
    val: Path | None = None
    val_fraction: float = 0.15
    epochs: int = 200
    patience: int = 15
    tile: int = 256
    infer_tile: int = 512
    overlap: int = 32
    batch_size: int = 16
    lr: float = 1e-3
    device: str = "auto"
    init: Path | None = None
    resume: bool = False
    seed: int = 0
    split_seed: int = 0  # separate from `seed`, so a continued run keeps the same validation tiles
    max_minutes: float | None = None
    augment: bool = True
    scale_jitter: float = 0.25
    samples_per_epoch: int | None = None
    workers: int = 1
    base_channels: int = 16
    depth: int = 4
    upsampling: str = "bilinear"
    skip_bad: bool = False
    compile: bool = False
    gsd_m: float | None = None
    description: str = ""
    callbacks: list = field(default_factory=list)
    on_progress: Callable[[float], None] | None = None
    is_cancelled: Callable[[], bool] | None = None


def _model_and_meta(cfg: TrainConfig, train_tiles: list[Tile]) -> tuple[torch.nn.Module, ModelMeta]:
    if cfg.init is not None:  # fine-tune: keep the architecture and normalisation of the start model
        model, meta = load_model(cfg.init)
        fresh = ModelMeta()  # this run's torch version and date, not the start model's
        meta.torch_version, meta.created = fresh.torch_version, fresh.created
        meta.extra = {**meta.extra, "init": str(cfg.init)}
        return model, meta
    arch_config = {"in_channels": train_tiles[0].image.shape[0], "base_channels": cfg.base_channels,
                   "depth": cfg.depth, "upsampling": cfg.upsampling, "batch_norm": True}
    mean, std = band_stats(train_tiles)
    gsds = [t.gsd_m for t in train_tiles if t.gsd_m]
    meta = ModelMeta(arch="unet", arch_config=arch_config, bands=list(range(1, len(mean) + 1)),
                     band_names=["red", "green", "blue"][: len(mean)] if len(mean) == 3 else [f"band{i + 1}" for i in range(len(mean))],
                     mean=mean, std=std, gsd_m=cfg.gsd_m or (sum(gsds) / len(gsds) if gsds else 1.0))
    torch.manual_seed(cfg.seed)
    return build_model("unet", **arch_config), meta


def train_model(cfg: TrainConfig) -> Trainer:
    """Train and return the finished trainer; RUN gets best.pt, last.pt, plots and logs."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    tiles = load_tiles(cfg.data, skip_bad=cfg.skip_bad)
    if cfg.val is not None:
        train_tiles, val_tiles = tiles, load_tiles(cfg.val, skip_bad=cfg.skip_bad)
    else:
        train_tiles, val_tiles = split_tiles(tiles, cfg.val_fraction, cfg.split_seed)
    if not train_tiles or not val_tiles:
        raise DatasetError(cfg.data, f"{len(tiles)} tile(s) cannot be split into train and validation",
                           "add tiles or pass --val DIR")
    model, meta = _model_and_meta(cfg, train_tiles)
    # crops of `tile` train the model; whole-tile prediction uses bigger tiles (more context, fewer seams)
    meta.tile, meta.overlap = cfg.infer_tile, cfg.overlap
    meta.extra = {**meta.extra, "train_tile": cfg.tile}
    meta.data = cfg.description or (f"{cfg.data}: {len(train_tiles)} train / {len(val_tiles)} val tiles "
                                    f"({', '.join(t.name for t in val_tiles[:8])}{'...' if len(val_tiles) > 8 else ''} for validation)")
    area = sum(t.valid.sum() for t in train_tiles)
    length = cfg.samples_per_epoch or max(cfg.batch_size, math.ceil(area / cfg.tile**2))
    data = RandomCropDataset(train_tiles, cfg.tile, length, meta.mean, meta.std, cfg.augment,
                             cfg.scale_jitter, cfg.seed)
    device = resolve_device(cfg.device)
    callbacks = [ModelCheckpoint(out / "best.pt"), EarlyStopping(patience=cfg.patience),
                 CSVLogger(out / "history.csv"), LossPlot(out / "loss.png"),
                 PredictionGif(out / "predictions.gif", size=min(cfg.tile, 256)), *cfg.callbacks]
    fit = FitConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, workers=cfg.workers,
                    max_minutes=cfg.max_minutes, compile=cfg.compile, on_progress=cfg.on_progress,
                    is_cancelled=cfg.is_cancelled)
    trainer = Trainer(model, meta, data, val_tiles, out, fit, device, callbacks)
    if cfg.resume and (out / "last.pt").exists():
        trainer.load_last()
    log.info("training on %s: %d train tiles (%d crops/epoch), %d val tiles", device, len(train_tiles),
             length, len(val_tiles))
    trainer.fit()
    return trainer
