"""Assemble a training run: data, model, callbacks, trainer. `train_model` is what the CLI and
the QGIS `trainfromlines` algorithm call.

Nothing is lost: `TrainConfig.validate` refuses bad options, and a run folder that is (inside)
the data, before anything is read or written; every data file is read, strictly, before the run
folder is made; best.pt and last.pt are replaced atomically after each epoch, so an interrupted
or failed run keeps its last finished epoch; train.log ends with how the run ended.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from roadseg_plugin.core.atomic import same_file
from roadseg_plugin.core.backends import resolve_device
from roadseg_plugin.core.checkpoint import ModelMeta, load_model
from roadseg_plugin.core.errors import CheckpointError, DatasetError, OutputError, ParamError, RoadSegError
from roadseg_plugin.core.limits import check_batch, check_model_size, check_tile
from roadseg_plugin.core.normalise import MODES, NORMALISATION_KEY
from roadseg_plugin.core.params import DEVICES, read_model_info
from roadseg_plugin.core.unet import build_model

from . import distributed
from .augment import RobustAugment, band_quantiles
from .callbacks import CSVLogger, EarlyStopping, LossPlot, ModelCheckpoint, PredictionGif
from .datasets import RandomCropDataset, Tile, band_stats, load_tiles, normalised_tiles, radiometry_stats, split_tiles
from .losses import LOSSES, Loss
from .sources import Source, crop_weights, load_sources
from .trainer import FitConfig, Trainer

log = logging.getLogger(__name__)
RUN_FILES = ("best.pt", "last.pt", "history.csv", "loss.png", "predictions.gif", "metrics.json")
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def _whole(name: str, value: object, least: int, fix: str = "", optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ParamError(name, value, "must be a whole number", fix)
    if value < least:
        raise ParamError(name, value, f"must be at least {least}", fix)


def _positive(name: str, value: float | None, fix: str, zero_ok: bool = False) -> None:
    """None (unset) or a finite number > 0 (>= 0 with `zero_ok`); NaN and infinity are refused."""
    if value is None:
        return
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        problem = "must be a finite number, 0 or more" if zero_ok else "must be a finite number greater than 0"
        raise ParamError(name, value, problem, fix)


@dataclass
class TrainConfig:
    """Every option of a run; `validate` checks them all before anything is read or written."""

    data: Path | None
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
    scale_jitter: float | None = None  # None: the recipe's (0.25, robust 1.0: crops zoomed 0.5-2x)
    samples_per_epoch: int | None = None
    workers: int = 1
    base_channels: int = 16
    depth: int = 4
    upsampling: str = "bilinear"
    skip_bad: bool = False
    compile: bool = False
    gsd_m: float | None = None
    recipe: str = "default"  # "robust": see RECIPES
    loss: str | None = None  # a name in losses.LOSSES; None: the recipe's
    normalisation: str | None = None  # radiometric normalisation mode of a new model; None: the recipe's
    freeze_encoder: bool = False  # train only the decoder and head (fine-tuning on few labels)
    sources: list[Source] = field(default_factory=list)  # several sets (sources.Source); `data` adds one more
    p_nodata: float | None = None  # share of crops given a synthetic no-data border or hole; None: the recipe's
    description: str = ""
    callbacks: list = field(default_factory=list)
    on_progress: Callable[[float], None] | None = None
    is_cancelled: Callable[[], bool] | None = None

    def validate(self) -> None:
        """Refuse what cannot make a good run, before anything is read or written.

        Raises:
            ParamError: an option out of range, named with its value and a fix
                (`tile 250: must be a multiple of 16 for a depth-4 U-Net; e.g. 256`).
            OutputError: the run folder is, or is inside, the data, or cannot be made; the run
                would replace its own `init` model.
            CheckpointError: `resume` without RUN/last.pt; a missing or damaged `init` model.
        """
        for name, least, fix in (("epochs", 1, "e.g. 50"), ("patience", 1, "e.g. 15"), ("batch_size", 1, "e.g. 16"),
                                 ("workers", 0, "0 loads the data in the main process"),
                                 ("base_channels", 1, "e.g. 16"), ("depth", 1, "e.g. 4")):
            _whole(name, getattr(self, name), least, fix)
        distributed.check_batch_size(self.batch_size)  # the global batch, shared by torchrun's processes
        _whole("samples_per_epoch", self.samples_per_epoch, 1, "or leave it unset for the train area / tile^2",
               optional=True)
        _positive("lr", self.lr, "e.g. 0.001")
        _positive("max_minutes", self.max_minutes, "or leave it unset for no time limit")
        _positive("scale_jitter", self.scale_jitter, "e.g. 0.25; 0 disables it", zero_ok=True)
        for name, value, valid in (("recipe", self.recipe, RECIPES), ("loss", self.loss, LOSSES),
                                   ("normalisation", self.normalisation, MODES)):
            if value is not None and value not in valid:
                raise ParamError(name, value, f"is not one of {', '.join(valid)}")
        _positive("gsd_m", self.gsd_m, "metres per pixel, e.g. 0.5; or leave it unset")
        if self.p_nodata is not None and not 0 <= self.p_nodata <= 1:
            raise ParamError("p_nodata", self.p_nodata, "must lie between 0 and 1", "e.g. 0.3")
        if self.data is None and not self.sources:
            raise ParamError("data", None, "no training data given", "pass --data DIR or --source NAME=DIR")
        for source in self.sources:
            source.check()
        if not any(s.role == "train" for s in self.sources) and self.data is None:
            raise ParamError("source", ",".join(s.name for s in self.sources), "only role=val sets given",
                             "add a training set")
        if not 0 < self.val_fraction < 1:  # also NaN
            raise ParamError("val_fraction", self.val_fraction, "must lie strictly between 0 and 1", "e.g. 0.15")
        if str(self.device) not in DEVICES and not str(self.device).startswith("cuda:"):
            raise ParamError("device", self.device, f"is not one of {', '.join(DEVICES)}")
        # fine-tuning keeps the start model's architecture, so its depth decides the tile sizes
        start = None if self.init is None else read_model_info(self.init)
        depth = self.depth if start is None else start.depth
        base = self.base_channels if start is None else int(start.arch_config.get("base_channels", 16))
        check_model_size(3 if start is None else start.in_channels, base, depth, training=True)
        multiple = 2**depth
        for name in ("tile", "infer_tile"):
            value = getattr(self, name)
            _whole(name, value, multiple, f"e.g. {multiple * 16}")
            if value % multiple:
                raise ParamError(name, value, f"must be a multiple of {multiple} for a depth-{depth} U-Net",
                                 f"e.g. {max(multiple, round(value / multiple) * multiple)}")
        check_tile(self.tile, self.batch_size, base, multiple, training=True, example=256)
        check_batch(self.batch_size, self.tile, base, training=True)
        check_tile(self.infer_tile, 1, base, multiple, name="infer_tile", example=512)
        _whole("overlap", self.overlap, 0, "e.g. 32")
        if not self.overlap < self.infer_tile // 2:
            raise ParamError("overlap", self.overlap, f"must be less than half the infer_tile ({self.infer_tile})",
                             f"e.g. {self.infer_tile // 16}")
        self._check_paths()

    def _check_paths(self) -> None:
        out = Path(self.out)
        real = out.resolve()  # after symlinks and `..`: the folder the files would really land in
        folders = [("data", self.data), ("val", self.val), *((f"source {s.name}", s.path) for s in self.sources)]
        for role, folder in folders:
            if folder is not None and (real == Path(folder).resolve() or Path(folder).resolve() in real.parents):
                raise OutputError(out, f"the run folder is, or is inside, the {role} folder {folder}",
                                  "choose a run folder (--out) outside the dataset; a run never writes into its data")
        existing = next(p for p in (real, *real.parents) if p.exists())
        if not existing.is_dir():
            raise OutputError(out, f"{existing} is a file, not a folder", "choose another run folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise OutputError(out, f"cannot write in {existing}", "choose a run folder you can write to")
        if self.resume and not (out / "last.pt").is_file():
            raise CheckpointError(out / "last.pt", "not found, so there is no run to resume",
                                  "drop --resume to start a new run, or give the --out of the run to continue")
        for name in ("best.pt", "last.pt"):
            if self.init is not None and same_file(Path(self.init), out / name):
                raise OutputError(out / name, "is the start model (--init) and this run would replace it",
                                  "copy it out of the run folder first, or choose another --out")


# What `--recipe` changes; explicit options win. "robust": strong photometric augmentation with
# histogram-matching style transfer (augment.RobustAugment), scale jitter 0.5-2x, BCE + Dice +
# clDice, and radiometric normalisation "auto" (normalise.Radiometry) for a new model.
RECIPES: dict[str, dict[str, Any]] = {
    "default": {"scale_jitter": 0.25, "loss": "bce_dice", "normalisation": "off", "p_nodata": 0.0},
    "robust": {"scale_jitter": 1.0, "loss": "bce_cldice", "normalisation": "auto", "p_nodata": 0.3},
}


def recipe_option(cfg: TrainConfig, name: str) -> Any:
    """`cfg`'s option, or its recipe's when unset (None)."""
    value = getattr(cfg, name)
    return RECIPES[cfg.recipe][name] if value is None else value


def _augmentation(cfg: TrainConfig, tiles: list[Tile]) -> bool | Callable:
    if not cfg.augment or cfg.recipe != "robust":
        return cfg.augment
    return RobustAugment([band_quantiles(t.image, t.valid) for t in tiles])


def _freeze_encoder(model: torch.nn.Module) -> None:
    encoder = getattr(model, "encoder", None)
    if encoder is None:
        raise ParamError("freeze_encoder", True, f"the {type(model).__name__} model has no encoder to freeze")
    for p in encoder.parameters():
        p.requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("encoder frozen: %d of %d parameters train", trainable, sum(p.numel() for p in model.parameters()))


def _model_and_meta(cfg: TrainConfig, train_tiles: list[Tile]) -> tuple[torch.nn.Module, ModelMeta]:
    if cfg.init is not None:  # fine-tune: keep the architecture and normalisation of the start model
        model, meta = load_model(cfg.init)
        fresh = ModelMeta()  # this run's torch version and date, not the start model's
        meta.torch_version, meta.created = fresh.torch_version, fresh.created
        meta.extra = {**meta.extra, "init": str(cfg.init)}
        return model, meta
    arch_config = {"in_channels": train_tiles[0].image.shape[0], "base_channels": cfg.base_channels,
                   "depth": cfg.depth, "upsampling": cfg.upsampling, "batch_norm": True}
    extra: dict[str, Any] = {}
    mode = recipe_option(cfg, "normalisation")
    if mode != "off":  # the training range first: mean and std are those of the mapped tiles
        extra[NORMALISATION_KEY] = radiometry_stats(train_tiles, mode)
        train_tiles = normalised_tiles(train_tiles, ModelMeta(extra=extra), announce=False)
    mean, std = band_stats(train_tiles)
    gsds = [t.gsd_m for t in train_tiles if t.gsd_m]
    meta = ModelMeta(arch="unet", arch_config=arch_config, bands=list(range(1, len(mean) + 1)),
                     band_names=(["red", "green", "blue"] if len(mean) == 3
                                 else [f"band{i + 1}" for i in range(len(mean))]),
                     mean=mean, std=std, gsd_m=cfg.gsd_m or (sum(gsds) / len(gsds) if gsds else 1.0), extra=extra)
    torch.manual_seed(cfg.seed)
    return build_model("unet", **arch_config), meta


def _device(name: str) -> torch.device:
    try:
        device = resolve_device(name)
    except ValueError:  # the only refusal left after validate(): CUDA asked for, none here
        raise ParamError("device", name, "no CUDA GPU is available here", "use --device cpu or auto") from None
    return distributed.device_for(device)  # under torchrun: this process's GPU


def _load_data(cfg: TrainConfig) -> tuple[list[Tile], list[Tile]]:
    train_tiles: list[Tile] = []
    val_tiles: list[Tile] = []
    if cfg.data is not None:
        tiles = load_tiles(cfg.data, skip_bad=cfg.skip_bad)
        if cfg.val is not None:
            train_tiles, val_tiles = tiles, load_tiles(cfg.val, skip_bad=cfg.skip_bad)
        else:
            train_tiles, val_tiles = split_tiles(tiles, cfg.val_fraction, cfg.split_seed)
        if not train_tiles or not val_tiles:
            raise DatasetError(cfg.data, f"{len(tiles)} tile(s) cannot be split into train and validation",
                               "add tiles or pass --val DIR")
        if cfg.sources:  # named like the others, for the per-set figures
            train_tiles = [replace(t, source="data") for t in train_tiles]
            val_tiles = [replace(t, source="data") for t in val_tiles]
    if cfg.sources:
        gsd = cfg.gsd_m or (read_model_info(cfg.init).gsd_m if cfg.init is not None else 1.0)
        more_train, more_val = load_sources(cfg.sources, gsd, cfg.split_seed, cfg.skip_bad)
        train_tiles, val_tiles = train_tiles + more_train, val_tiles + more_val
        if not train_tiles or not val_tiles:
            raise DatasetError(cfg.sources[0].path, "the sources give no training or no validation tiles",
                               "hold tiles back with val=N on a source, or add a role=val set")
    return train_tiles, val_tiles


class _Buffer(logging.Handler):
    """Holds the messages of the checks until the run folder, and so train.log, exists."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def _logging_to(handler: logging.Handler) -> Iterator[None]:
    """Send RoadSeg's messages (INFO and up) to `handler` for the duration; the loggers, not the
    root, so that inside QGIS other plugins' messages stay out of train.log."""
    loggers = [logging.getLogger(name) for name in ("training", "roadseg_plugin")]
    levels = [lg.level for lg in loggers]
    least = logging.INFO if distributed.is_main() else logging.WARNING  # torchrun: progress is rank 0's to tell
    for lg in loggers:
        lg.addHandler(handler)
        if lg.level == logging.NOTSET or lg.level > least:
            lg.setLevel(least)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)


def _log_end(handler: logging.Handler, cfg: TrainConfig, trainer: Trainer | None,
             exc: BaseException | None = None) -> None:
    """The last line of train.log: how the run ended and which run files exist. Written to the
    file only: the CLI says it in its own words on the console."""
    out = Path(cfg.out)
    kept = ", ".join(name for name in RUN_FILES if (out / name).exists()) or "no model"
    saved = f"last.pt holds epoch {trainer.saved_epoch}; " if trainer is not None and trainer.saved_epoch else ""
    resume = "; --resume continues" if (out / "last.pt").exists() else ""
    exc_info = None
    if exc is None and cfg.is_cancelled is not None and cfg.is_cancelled():
        level, message = logging.WARNING, f"cancelled; {saved}kept: {kept}"
    elif exc is None:
        level, message = logging.INFO, f"done: {trainer.epoch if trainer else 0} epoch(s); wrote {kept}"
    elif isinstance(exc, Exception):
        level, message = logging.ERROR, f"failed: {exc}; {saved}kept: {kept}"
        if not isinstance(exc, RoadSegError):  # a bug, not bad input: keep the traceback
            exc_info = (type(exc), exc, exc.__traceback__)
    else:  # Ctrl-C, SIGTERM
        level, message = logging.WARNING, f"interrupted; {saved}kept: {kept}{resume}"
    handler.handle(log.makeRecord(log.name, level, __file__, 0, message, None, exc_info))


def _make_trainer(cfg: TrainConfig, model: torch.nn.Module, meta: ModelMeta, train_tiles: list[Tile],
                  val_tiles: list[Tile], device: torch.device) -> Trainer:
    out = Path(cfg.out)
    # crops of `tile` train the model; whole-tile prediction uses bigger tiles (more context, fewer seams)
    meta.tile, meta.overlap = cfg.infer_tile, cfg.overlap
    meta.extra = {**meta.extra, "train_tile": cfg.tile}
    shown = ", ".join(t.name for t in val_tiles[:8]) + ("..." if len(val_tiles) > 8 else "")
    meta.data = cfg.description or (f"{cfg.data}: {len(train_tiles)} train / {len(val_tiles)} val tiles "
                                    f"({shown} for validation)")
    if cfg.sources and not cfg.description:
        counts = [f"{name} {sum(t.source == name for t in train_tiles)}/{sum(t.source == name for t in val_tiles)}"
                  for name in dict.fromkeys(t.source for t in train_tiles + val_tiles)]
        meta.data = f"sets (train/val tiles): {', '.join(counts)}; validation: {shown}"
    area = sum(t.valid.sum() for t in train_tiles)
    length = cfg.samples_per_epoch or max(cfg.batch_size, math.ceil(area / cfg.tile**2))
    crops_from = normalised_tiles(train_tiles, meta)  # the start model's normalisation when fine-tuning
    weights = crop_weights(crops_from, cfg.sources) if cfg.sources else None
    data = RandomCropDataset(crops_from, cfg.tile, length, meta.mean, meta.std, _augmentation(cfg, crops_from),
                             recipe_option(cfg, "scale_jitter"), cfg.seed, weights=weights,
                             p_nodata=recipe_option(cfg, "p_nodata"))
    if cfg.freeze_encoder:
        _freeze_encoder(model)
    callbacks = [ModelCheckpoint(out / "best.pt"), EarlyStopping(patience=cfg.patience),
                 CSVLogger(out / "history.csv"), LossPlot(out / "loss.png"),
                 PredictionGif(out / "predictions.gif", size=min(cfg.tile, 256)), *cfg.callbacks]
    fit = FitConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, workers=cfg.workers,
                    max_minutes=cfg.max_minutes, compile=cfg.compile, on_progress=cfg.on_progress,
                    is_cancelled=cfg.is_cancelled)
    watch_only = {s.name for s in cfg.sources if s.role == "val"}
    trainer = Trainer(model, meta, data, [t for t in val_tiles if t.source not in watch_only], out, fit, device,
                      callbacks)
    trainer.watch_tiles = [t for t in val_tiles if t.source in watch_only]
    if cfg.resume:
        trainer.load_last()
    log.info("training on %s: %d train tiles (%d crops/epoch), %d val tiles; recipe %s, loss %s", device,
             len(train_tiles), length, len(val_tiles), cfg.recipe, recipe_option(cfg, "loss"))
    return trainer


@contextmanager
def _training_loss(loss: Loss) -> Iterator[None]:
    """The loss `Trainer.train_epoch` minimises, for the duration of a fit.

    The trainer calls `masked_bce_dice` by name; until `FitConfig` takes a loss this swaps that
    name in the trainer's module (one fit at a time: the QGIS algorithm and the CLI run one).
    """
    from . import trainer as trainer_module

    before = trainer_module.masked_bce_dice
    trainer_module.masked_bce_dice = loss
    try:
        yield
    finally:
        trainer_module.masked_bce_dice = before


def train_model(cfg: TrainConfig) -> Trainer:
    """Train and return the finished trainer; RUN gets best.pt, last.pt, plots and train.log.

    Nothing is written before the options, the start model and every data file have passed;
    then train.log records the run and ends with how it ended (done, cancelled, interrupted or
    failed, and which files are kept).

    Raises:
        RoadSegError: bad options, model or data (nothing written), or a failure mid-run.
        KeyboardInterrupt: Ctrl-C; best.pt and last.pt keep the last finished epoch.
    """
    cfg.validate()
    device = _device(cfg.device)
    with distributed.process_group(device):  # under torchrun only; left again also on an error or Ctrl-C
        return _train(cfg, device)


def _train(cfg: TrainConfig, device: torch.device) -> Trainer:
    early = _Buffer()
    with _logging_to(early):
        train_tiles, val_tiles = _load_data(cfg)
        model, meta = _model_and_meta(cfg, train_tiles)
    out = Path(cfg.out)
    if distributed.is_main():  # under torchrun the other processes write nothing
        out.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(out / "train.log", encoding="utf-8")  # appends on resume
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    else:
        handler = logging.NullHandler()
    for record in early.records:
        handler.handle(record)
    trainer = None
    try:
        with _logging_to(handler):
            trainer = _make_trainer(cfg, model, meta, train_tiles, val_tiles, device)
            with _training_loss(LOSSES[recipe_option(cfg, "loss")]):
                trainer.fit()
    except BaseException as exc:
        _log_end(handler, cfg, trainer, exc)
        raise
    else:
        _log_end(handler, cfg, trainer)
    finally:
        handler.close()
    return trainer
