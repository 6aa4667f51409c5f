"""Every option of a RoadSeg run: its default, unit, help text and validation, in one place.

`InferenceParams` (raster -> probability) and `VectoriseParams` (probability -> lines -> file)
are what the CLI, the Segment roads dialog and task, and the Processing algorithms build; none
of them decides a default of its own. Each field carries its help text and unit in its
metadata (`option`), so CLI and Processing help are generated from here.

Options left unset mean "the model's": `InferenceParams.resolve(meta)` settles them once per run
into `RunSettings` (model file, tile, overlap, threshold, batch, depth, the output's tags), which
the pipeline, the engine, region chunks, evaluation and fine-tuning read without deciding a
default again. `model_file` is the one meaning of "no model given": the bundled one.

This module imports no torch, scipy, rasterio or QGIS: the Processing provider and the dialog
use it while QGIS starts, before the heavy packages are known to be installed.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ParamError

if TYPE_CHECKING:
    from .model_meta import ModelMeta

PathLike = str | os.PathLike

BUNDLED_MODEL = Path(__file__).resolve().parent.parent / "models" / "roadseg_default.pt"
MODEL_SUFFIXES = (".pt", ".onnx")
DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("auto", "torch", "onnxruntime", "onnxruntime-int8")
DEFAULT_BATCH = {"cpu": 2, "cuda": 16}  # CPU: no faster beyond 2 tiles, ~150 MB more per tile

# Vector formats: alias -> (GDAL driver, canonical extension); extensions -> alias.
VECTOR_FORMATS = {
    "gpkg": ("GPKG", ".gpkg"),
    "shp": ("ESRI Shapefile", ".shp"),
    "geojson": ("GeoJSON", ".geojson"),
    "fgb": ("FlatGeobuf", ".fgb"),
}
VECTOR_EXTENSIONS = {".gpkg": "gpkg", ".shp": "shp", ".geojson": "geojson", ".json": "geojson", ".fgb": "fgb"}
RASTER_OUTPUT_SUFFIXES = (".tif", ".tiff")  # the probability raster is always a GeoTIFF

# Training from drawn lines (torch-free here: the Processing algorithm declares them at QGIS start).
ROAD_HALF_WIDTH_M = 3.5  # drawn lines are buffered by this; every training set's labels mean this width
FINETUNE_MINUTES = 10.0  # the training time of "Train model from drawn road lines"
FINETUNE_VAL_SHARE = 0.25  # of the drawn road held back, by whole areas, to measure start and tuned

MASK_THRESHOLD = 0.5  # a mask or probability raster that records no threshold of its own
# VectoriseParams options that a segment run settles from InferenceParams (the model's threshold unless the
# user's): adapters of segment runs offer them once, as InferenceParams options.
SET_BY_INFERENCE = ("threshold",)

# Vectoriser clean-up defaults (metres) and its internal block layout (pixels).
MIN_LENGTH_M = 20.0  # drop connected pieces of network shorter than this
SPUR_LENGTH_M = 10.0  # prune dead-end branches shorter than this
GAP_M = 15.0  # bridge aligned line ends closer than this
TOLERANCE_M = 1.0  # Douglas-Peucker tolerance
BLOCK_SIZE = 1024  # vectorise in blocks of this many pixels (measured: 1.5x faster than 2048) ...
HALO_PX = 64  # ... overlapping by this much: exact skeletons and widths for roads up to ~90 px wide
MAX_BLOCK_PX = 16384  # the skeleton tracer (sknw) returns int16 coordinates


def option(default: Any, help: str, unit: str = "", label: str = "", advanced: bool = True,
           choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field with the user-facing description adapters generate their help from.

    Args:
        default: the one default of this option.
        help: one sentence for `--help` and Processing's help panel.
        unit: "m", "px", "0-1" ... shown beside the value.
        label: short label for forms (Processing, the dialog); default from the name.
        advanced: Processing shows it under "Advanced parameters".
        choices: allowed values of a text option.
    """
    meta = {"help": help, "unit": unit, "label": label, "advanced": advanced, "choices": choices}
    return field(default=default, metadata=meta)


def describe(params_type: type, name: str) -> dict[str, Any]:
    """The metadata of one option (`help`, `unit`, `label`, `advanced`, `choices`, `default`)."""
    for f in fields(params_type):
        if f.name == name:
            label = f.metadata["label"] or name.replace("_", " ").capitalize()
            return {**f.metadata, "label": label, "default": f.default}
    raise KeyError(f"{params_type.__name__} has no option {name!r}")


def option_names(params_type: type) -> list[str]:
    return [f.name for f in fields(params_type)]


def model_file(model: PathLike | None) -> Path:
    """The model file of a run: `model`, or the bundled model when none is given (None or "")."""
    return Path(model) if model is not None and os.fspath(model) else BUNDLED_MODEL


def check_threshold(value: float | None, name: str = "threshold") -> float | None:
    """None (the model's or the raster's own threshold) or a probability strictly inside (0, 1)."""
    if value is None:
        return None
    value = float(value)
    if math.isnan(value) or not 0.0 < value < 1.0:
        raise ParamError(name, value, "must lie strictly between 0 and 1", "e.g. 0.5; leave it unset for the model's")
    return value


def _check_positive(name: str, value: float | None, allow_zero: bool = False, integer: bool = False) -> None:
    if value is None:
        return
    if isinstance(value, float) and math.isnan(value):
        raise ParamError(name, value, "is not a number")
    if isinstance(value, float) and math.isinf(value):
        raise ParamError(name, value, "must be a finite number", "give an ordinary number, e.g. 1")
    if integer and (isinstance(value, bool) or int(value) != value):
        raise ParamError(name, value, "must be a whole number")
    if value < 0 or (value == 0 and not allow_zero):
        raise ParamError(name, value, "must not be negative" if allow_zero else "must be greater than 0")


@dataclass(frozen=True)
class InferenceParams:
    """Raster -> road probability: which model, where it runs and how the raster is read and tiled."""

    model: str | None = option(None, "model: a checkpoint (.pt) or exported .onnx file; empty for the bundled model",
                               label="Model", advanced=False)
    device: str = option("auto", "where the model runs: auto (the GPU when there is one), cpu or cuda",
                         label="Device", advanced=False, choices=DEVICES)
    backend: str = option("auto", "auto (torch on CUDA; on CPU whichever of fp32 ONNX Runtime and the int8 model "
                                  "made from this checkpoint is faster on this CPU), torch, onnxruntime or "
                                  "onnxruntime-int8",
                          label="Backend", choices=BACKENDS)
    threshold: float | None = option(None, "road probability above which a pixel is road; unset: the model's own",
                                     unit="0-1", label="Road probability threshold", advanced=False)
    extent: tuple[float, float, float, float] | None = option(
        None, "area to process, xmin,ymin,xmax,ymax in the raster's CRS; unset: the whole raster", label="Extent")
    bands: tuple[int, ...] | None = option(None, "bands to feed the model, e.g. 3,2,1; unset: the first non-alpha "
                                                 "bands", label="Bands")
    tile: int | None = option(None, "tile size fed to the model, a multiple of 2^depth; unset: the model's",
                              unit="px", label="Tile size")
    overlap: int | None = option(None, "pixels shared by neighbouring tiles, under half the tile; unset: the model's",
                                 unit="px", label="Tile overlap")
    batch_size: int | None = option(None, f"tiles per forward pass; unset: {DEFAULT_BATCH['cpu']} on CPU, "
                                          f"{DEFAULT_BATCH['cuda']} on CUDA", label="Batch size")
    tta: bool = option(False, "average the 8 flips/rotations of each tile (8x slower, slightly better)",
                       label="Test-time augmentation")
    binary: bool = option(False, "write a 0/1 road mask instead of probability x 255", label="Binary mask output")
    gsd: float | None = option(None, "metres per pixel of a raster without georeferencing; it is resampled to the "
                                     "model's resolution as a georeferenced one would be", unit="m",
                               label="Pixel size of a non-georeferenced raster")

    def __post_init__(self) -> None:
        check = object.__setattr__  # frozen: normalise types once, here
        if self.model is not None:
            check(self, "model", str(self.model) or None)
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            raise ParamError("device", self.device, f"is not one of {', '.join(DEVICES)}")
        if self.backend not in BACKENDS:
            raise ParamError("backend", self.backend, f"is not one of {', '.join(BACKENDS)}")
        check(self, "threshold", check_threshold(self.threshold))
        if self.extent is not None:
            try:
                xmin, ymin, xmax, ymax = (float(v) for v in self.extent)
            except (TypeError, ValueError):
                raise ParamError("extent", self.extent, "must be four numbers xmin,ymin,xmax,ymax") from None
            if not (xmax > xmin and ymax > ymin) or not all(map(math.isfinite, (xmin, ymin, xmax, ymax))):
                raise ParamError("extent", self.extent, "is empty", "xmax must exceed xmin and ymax ymin")
            check(self, "extent", (xmin, ymin, xmax, ymax))
        if self.bands is not None:
            bands = tuple(self.bands)
            if not bands or any(isinstance(b, bool) or int(b) != b or b < 1 for b in bands):
                raise ParamError("bands", self.bands, "must be band numbers from 1", "e.g. 1,2,3")
            check(self, "bands", tuple(int(b) for b in bands))
        for name in ("tile", "batch_size"):
            _check_positive(name, getattr(self, name), integer=True)
        _check_positive("overlap", self.overlap, allow_zero=True, integer=True)
        if self.gsd is not None and math.isinf(self.gsd):
            raise ParamError("gsd", self.gsd, "must be a finite number", "the raster's metres per pixel, e.g. 0.5")
        _check_positive("gsd", self.gsd)
        if self.tile is not None and self.overlap is not None:
            from .limits import check_overlap

            check_overlap(self.overlap, self.tile)

    @property
    def model_path(self) -> Path:
        """The model file: the one given, or the bundled model."""
        return model_file(self.model)

    def resolve(self, meta: ModelMeta) -> RunSettings:
        """This run's settled values: each option left unset becomes the model's (`meta`, read from
        `model_path`), and every option is checked against the model, before it is loaded or any
        pixel is read.

        Raises:
            ParamError: a tile the model cannot take, an overlap of half the tile or more, a tile or
                batch too large for this machine, or as many bands as the model does not take.
        """
        from .limits import check_batch, check_overlap, check_tile

        path, multiple = self.model_path, 2**meta.depth
        tile = meta.tile if self.tile is None else self.tile
        if tile % multiple:
            raise ParamError("tile", tile, f"must be a multiple of {multiple} for the model {path}",
                             f"e.g. {max(multiple, tile // multiple * multiple)}")
        overlap = meta.overlap if self.overlap is None else self.overlap
        check_overlap(overlap, tile)
        settings = RunSettings(
            model=path, meta=meta, device=self.device, backend=self.backend, tile=tile, overlap=overlap,
            threshold=meta.threshold if self.threshold is None else self.threshold, depth=meta.depth,
            cpu_batch=self.batch_size or DEFAULT_BATCH["cpu"], cuda_batch=self.batch_size or DEFAULT_BATCH["cuda"],
            bands=self.bands, extent=self.extent, gsd=self.gsd, tta=self.tta, binary=self.binary)
        base = int(meta.arch_config.get("base_channels", 16))
        check_tile(tile, 1, base, multiple, example=meta.tile)  # one tile must fit; then the batch
        check_batch(settings.batch_for(self.device), tile, base)  # "auto": the CPU's (GPU memory is not RAM)
        if self.bands is not None and len(self.bands) != meta.in_channels:
            raise ParamError("bands", ",".join(map(str, self.bands)),
                             f"{len(self.bands)} band(s) chosen but the model {path} takes {meta.in_channels}",
                             "pass exactly that many band numbers")
        return settings

    def with_changes(self, **changes: Any) -> InferenceParams:
        return replace(self, **changes)


@dataclass(frozen=True)
class RunSettings:
    """One run's settled values (`InferenceParams.resolve`): the user's options, each unset one
    replaced by the model's and all checked against it. The pipeline, the engine, region chunks,
    evaluation and fine-tuning read these and decide no default of their own.

    Attributes:
        model: the model file (the bundled one when none was given).
        meta: its metadata.
        device, backend: as given ("auto" is decided where the model is loaded: a region run's
            workers may differ from its client).
        tile, overlap: the tiling; threshold: the road threshold; depth: the U-Net's (tiles are
            multiples of 2**depth).
        cpu_batch, cuda_batch: tiles per forward pass on either kind of device (`batch_for`).
        bands, extent, gsd, tta, binary: the user's, as in `InferenceParams`.
    """

    model: Path
    meta: ModelMeta = field(repr=False, compare=False)
    device: str
    backend: str
    tile: int
    overlap: int
    threshold: float
    depth: int
    cpu_batch: int
    cuda_batch: int
    bands: tuple[int, ...] | None = None
    extent: tuple[float, float, float, float] | None = None
    gsd: float | None = None
    tta: bool = False
    binary: bool = False

    def batch_for(self, device: str) -> int:
        """Tiles per forward pass on `device`, the device the model was loaded on ("auto": the CPU's)."""
        return self.cuda_batch if str(device).startswith("cuda") else self.cpu_batch

    @property
    def band_list(self) -> list[int] | None:
        """The bands to read, as the readers take them (None: the first non-alpha bands)."""
        return list(self.bands) if self.bands else None

    @property
    def tags(self) -> dict[str, str]:
        """The metadata of the probability raster: what its values are and the threshold that goes with them."""
        return {"ROADSEG_VALUES": "binary road mask (1 road, 0 background)" if self.binary
                else "road probability x 255", "ROADSEG_THRESHOLD": f"{self.threshold:g}"}


@dataclass(frozen=True)
class VectoriseParams:
    """Probability -> road lines -> file: clean-up lengths (metres) and the output format."""

    threshold: float | None = option(None, "road probability at or above which a pixel is road; unset: the one "
                                           "RoadSeg recorded in the raster, else 0.5",
                                     unit="0-1", label="Road probability threshold", advanced=False)
    min_length: float = option(MIN_LENGTH_M, "drop pieces of network shorter than this", unit="m",
                               label="Minimum road length", advanced=False)
    spur_length: float = option(SPUR_LENGTH_M, "prune dead-end branches shorter than this", unit="m",
                                label="Remove dead-end spurs shorter than")
    gap: float = option(GAP_M, "bridge aligned line ends closer than this", unit="m",
                        label="Bridge gaps between aligned line ends up to")
    tolerance: float = option(TOLERANCE_M, "simplification tolerance (Douglas-Peucker)", unit="m",
                              label="Simplification tolerance")
    smooth: bool = option(False, "smooth the lines (Chaikin); end points and junctions stay put",
                          label="Smooth lines")
    format: str | None = option(None, "gpkg, shp, geojson or fgb; unset: from the output file's extension",
                                label="Output format", choices=tuple(VECTOR_FORMATS))
    block_size: int | None = option(None, f"vectorise in blocks of this many pixels; unset: {BLOCK_SIZE} for "
                                          "files and for large arrays", unit="px", label="Block size")
    halo: int = option(HALO_PX, "block overlap; roads wider than this may differ near block edges", unit="px",
                       label="Block halo")

    def __post_init__(self) -> None:
        object.__setattr__(self, "threshold", check_threshold(self.threshold))
        for name in ("min_length", "spur_length", "gap", "tolerance"):
            _check_positive(name, getattr(self, name), allow_zero=True)
        _check_positive("block_size", self.block_size, integer=True)
        _check_positive("halo", self.halo, integer=True)
        if self.block_size is not None and not 64 <= self.block_size <= MAX_BLOCK_PX:
            raise ParamError("block_size", self.block_size, f"must lie between 64 and {MAX_BLOCK_PX} pixels",
                             f"e.g. {BLOCK_SIZE}")
        block = self.block_size or BLOCK_SIZE
        if not 32 <= self.halo <= block:
            raise ParamError("halo", self.halo, f"must lie between 32 and the block size ({block})", f"e.g. {HALO_PX}")
        if self.format is not None:
            object.__setattr__(self, "format", vector_format(self.format))

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the vectoriser's clean-up (`vectorise_mask`, `vectorise_raster`,
        `check_memory`); the threshold (a raster's only) and the format are handed on their own."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("format", "threshold")}

    def for_run(self, settings: RunSettings) -> VectoriseParams:
        """These options with the segment run's settled threshold (InferenceParams' option, the model's
        unless given), the one the probability raster records.

        Raises:
            ParamError: a different threshold set here (a segment run's threshold is set once).
        """
        if self.threshold is not None and self.threshold != settings.threshold:
            raise ParamError("threshold", self.threshold, f"is set for the road lines but the run's threshold is "
                             f"{settings.threshold:g}", "set the threshold once, with the model's options")
        return replace(self, threshold=settings.threshold)

    def with_changes(self, **changes: Any) -> VectoriseParams:
        return replace(self, **changes)


def vector_format(name: str) -> str:
    """The format alias (gpkg, shp, geojson, fgb) for an alias or a GDAL driver name."""
    key = str(name).strip().lower()
    for alias, (driver, _) in VECTOR_FORMATS.items():
        if key in (alias, driver.lower()):
            return alias
    raise ParamError("format", name, "is not a vector format RoadSeg writes",
                     f"use one of {', '.join(VECTOR_FORMATS)}")


def read_model_info(path: PathLike | None = None) -> ModelMeta:
    """The metadata of a `.pt` checkpoint or exported `.onnx` model, without torch.

    None (or "") means the bundled model (`model_file`). Checkpoints are read with a restricted
    unpickler that only sees the metadata (tensors are never built); ONNX files with `onnx`, else
    ONNX Runtime.

    Raises:
        CheckpointError: missing, damaged or unsafe file, or metadata with wrong types.
    """
    from .model_meta import read_meta

    return read_meta(model_file(path))
