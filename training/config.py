"""Every option of a training run, its default and help text, in one place: `TrainConfig`.

The training CLI is generated from its fields (`cli_options`), as the plugin's CLI is from
`roadseg_plugin.core.params`; the QGIS algorithm and fine-tuning build it too. `validate`
refuses bad values before anything is read or written. `RECIPES` holds what `--recipe`
changes; an option given explicitly wins (`recipe_option`).
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from roadseg_plugin.core.atomic import same_file
from roadseg_plugin.core.errors import CheckpointError, OutputError, ParamError
from roadseg_plugin.core.limits import check_batch, check_model_size, check_overlap, check_tile
from roadseg_plugin.core.normalise import MODES
from roadseg_plugin.core.params import DEVICES, read_model_info

from . import distributed
from .losses import LOSSES
from .sources import Source


def opt(default: Any, help: str, flag: str = "", choices: Callable[[], tuple[str, ...]] | None = None,
        required: bool = False) -> Any:
    """A `TrainConfig` field with its help text; `default` list makes a fresh list each time."""
    meta = {"help": help, "flag": flag, "choices": choices, "required": required}
    if default is list:
        return field(default_factory=list, metadata=meta)
    return field(default=default, metadata=meta)


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

    data: Path | None = opt(None, "folder with images/ and masks/ (or --source, or both)")
    out: Path = opt(None, "run folder: best.pt, last.pt, plots, train.log", required=True)
    val: Path | None = opt(None, "separate validation folder (default: --val-fraction of --data's tiles)")
    val_fraction: float = opt(0.15, "share of --data's tiles held out, whole, for validation")
    epochs: int = opt(200, "passes of samples-per-epoch random crops")
    patience: int = opt(15, "stop after this many epochs without a better validation figure")
    tile: int = opt(256, "training crop size in pixels")
    infer_tile: int = opt(512, "tile size stored for whole-tile prediction")
    overlap: int = opt(32, "tile overlap stored for whole-tile prediction")
    batch_size: int = opt(16, "crops per optimiser step over all processes: under torchrun --nproc-per-node N "
                              "each process trains on batch-size / N (a multiple of N)")
    lr: float = opt(1e-3, "peak learning rate")
    device: str = opt("auto", f"{', '.join(DEVICES)} (auto: CUDA when present) or cuda:N")
    init: Path | None = opt(None, "fine-tune from this checkpoint")
    resume: bool = opt(False, "continue from RUN/last.pt")
    seed: int = opt(0, "seed of weights init and crops")
    split_seed: int = opt(0, "seed of the train/validation tile split (separate, so a continued run keeps "
                             "the same validation tiles)")
    max_minutes: float | None = opt(None, "stop before this wall-clock budget is spent (run in pieces with --resume)")
    minutes: float | None = opt(None, "a training time: rounds of samples-per-epoch crops with a step schedule, as "
                                      "many as fit (fine-tuning)")
    augment: bool = opt(True, "random flips, rotations, colour and scale jitter")
    scale_jitter: float | None = opt(None, "random zoom range, 0 disables (default: the recipe's, 0.25; robust "
                                           "1.0 = 0.5-2x)")
    samples_per_epoch: int | None = opt(None, "crops per epoch (default: train area / tile^2)")
    workers: int = opt(1, "DataLoader worker processes (0: in the main process)")
    base_channels: int = opt(16, "width of the first U-Net level")
    depth: int = opt(4, "U-Net levels")
    upsampling: str = opt("bilinear", "decoder upsampling", choices=lambda: ("bilinear", "transpose"))
    skip_bad: bool = opt(False, "warn about and skip unusable pairs")
    compile: bool = opt(False, "torch.compile the model (helps on CUDA)")
    gsd_m: float | None = opt(None, "metres per pixel of --data (default: from the rasters, else 1.0)", flag="--gsd")
    recipe: str = opt("default", "robust: strong photometric augmentation + style transfer, scale jitter 0.5-2x, "
                                 "BCE+Dice+clDice, radiometric normalisation auto, no-data crops",
                      choices=lambda: tuple(RECIPES))
    loss: str | None = opt(None, "default: the recipe's", choices=lambda: tuple(LOSSES))
    normalisation: str | None = opt(None, "radiometric normalisation stored in a new model (default: the "
                                          "recipe's)", choices=lambda: MODES)
    freeze_encoder: bool = opt(False, "train only the decoder and head (fine-tuning on few labels)")
    sources: list[Source] = opt(list, "a labelled set with its pixel size, held-out tiles and share of the crops "
                                      "(repeatable): NAME=DIR[,gsd=METRES][,val=N][,weight=W][,labels=as-is|"
                                      "centreline][,nodata=white|black][,role=train|val]; role=val sets are "
                                      "validated, never trained on", flag="--source")
    p_nodata: float | None = opt(None, "share of crops given a synthetic no-data border or hole (default: the "
                                       "recipe's, 0; robust 0.3)")
    description: str = opt("", "what the model was trained on (default: from the data)")
    # set by callers, not on the command line
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
        if self.out is None:
            raise ParamError("out", None, "no run folder given", "pass --out RUN")
        for name, least, fix in (("epochs", 1, "e.g. 50"), ("patience", 1, "e.g. 15"), ("batch_size", 1, "e.g. 16"),
                                 ("workers", 0, "0 loads the data in the main process"),
                                 ("base_channels", 1, "e.g. 16"), ("depth", 1, "e.g. 4")):
            _whole(name, getattr(self, name), least, fix)
        distributed.check_batch_size(self.batch_size)  # the global batch, shared by torchrun's processes
        _whole("samples_per_epoch", self.samples_per_epoch, 1, "or leave it unset for the train area / tile^2",
               optional=True)
        _positive("lr", self.lr, "e.g. 0.001")
        _positive("max_minutes", self.max_minutes, "or leave it unset for no time limit")
        _positive("minutes", self.minutes, "a training time, e.g. 10; or leave it unset to train by epochs")
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
        check_overlap(self.overlap, self.infer_tile, "infer_tile")
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


def cli_options() -> list[tuple[str, Any]]:
    """(flag, dataclass field) of every option the command line takes, in declaration order."""
    out = []
    for f in fields(TrainConfig):
        if "help" not in f.metadata:
            continue
        flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
        out.append((flag, f))
    return out


def default_of(name: str) -> Any:
    """The one default of a `TrainConfig` option."""
    f = next(f for f in fields(TrainConfig) if f.name == name)
    return f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
