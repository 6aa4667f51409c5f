"""Worker side of a region run: one chunk of one raster -> its probability part.

A chunk is predicted with the whole raster's tile grid (`TileGrid` of the full input) by the
engine's own `predict_window`: only the tiles that touch the chunk are read and run, blended with
the whole raster's summed weights, so the part holds the single-process values.

The model is loaded once per worker process (`worker_backend`, keyed by model, device,
backend, TTA and thread count) with ONNX Runtime / torch limited to the worker's share of the
machine's cores, so several workers on one machine do not oversubscribe it.
"""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import affine

from ..params import DEFAULT_BATCH, InferenceParams

if TYPE_CHECKING:
    pass

_BACKENDS: dict[tuple, Any] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class ChunkTask:
    """What a worker needs to predict one chunk (picklable; paths absolute)."""

    source: str
    window: tuple[int, int, int, int]
    part: str
    params: InferenceParams
    threads: int | None = None
    normaliser: Any = None  # the client's `engine.make_normaliser` for the whole raster; None: made here


def worker_backend(params: InferenceParams, threads: int | None) -> Any:
    """This process's model for `params`, loaded on first use (thread-safe)."""
    key = (str(params.model_path), params.device, params.backend, params.tta, threads)
    with _LOCK:
        if key not in _BACKENDS:
            _BACKENDS[key] = _load(params, threads)
        return _BACKENDS[key]


def warm_up(params: InferenceParams, threads: int | None) -> str:
    """Load the model and the vectoriser's compiled kernels in this worker process (run on every
    worker when a run starts, so a model a worker cannot load fails the run before any chunk,
    and the run's speed is not the first tasks' start-up); returns what was loaded."""
    from ..skeleton_pieces import _sknw_kernels

    loaded = worker_backend(params, threads)
    _sknw_kernels()
    return f"{loaded.name} on {loaded.device}"


def _load(params: InferenceParams, threads: int | None) -> Any:
    from ..backends import DihedralTTA, OnnxRuntimeBackend, load_backend

    loaded = load_backend(params.model, device=params.device, backend=params.backend)
    torch = sys.modules.get("torch")  # only when the backend (or the device check) needed it
    if threads and torch is not None:
        torch.set_num_threads(threads)
    if threads and isinstance(loaded, OnnxRuntimeBackend) and loaded.device == "cpu":
        # the file load_backend chose (int8 or fp32 export), opened again with this worker's share
        notes = loaded.notes
        loaded = type(loaded)(loaded.path, "cpu", threads)
        loaded.notes = notes
    return DihedralTTA(loaded) if params.tta else loaded


def segment_chunk(task: ChunkTask) -> dict[str, Any]:
    """Predict one chunk and write its part (see the module notes); returns what the client records.

    Raises:
        RasterError, CheckpointError, OutputError: bad input, model or output folder.
    """
    import rasterio

    from ..atomic import temporary_sibling
    from ..backends import BatchRunner
    from ..engine import make_normaliser, predict_window, window_tiles
    from ..probability_raster import RasterSink, check_written, encoder_for, gdal_cache_mb
    from ..readers import choose_bands, open_raster
    from ..tiling import TileGrid
    from .parts import finish_part

    start = time.perf_counter()
    p = task.params
    loaded = worker_backend(p, task.threads)
    meta = loaded.meta
    tile, overlap = p.tile or meta.tile, meta.overlap if p.overlap is None else p.overlap
    threshold = meta.threshold if p.threshold is None else p.threshold
    bands = list(p.bands) if p.bands else None
    r0, r1, c0, c1 = task.window
    final = Path(task.part)
    with open_raster(task.source, gsd_m=meta.gsd_m, bands=bands, extent=p.extent, native_gsd_m=p.gsd) as reader:
        chosen = choose_bands(reader, meta.in_channels, bands)
        grid = TileGrid(reader.height, reader.width, tile, overlap)
        rows, cols = window_tiles(grid, task.window)
        normalise = task.normaliser or make_normaliser(reader, meta, chosen)[0]
        batch_size = p.batch_size or DEFAULT_BATCH["cuda" if "cuda" in loaded.device else "cpu"]
        runner = BatchRunner(loaded.predict, batch_size)
        georeferenced = reader.crs is not None or reader.transform != affine.Affine.identity()
        grid_of_part = SimpleNamespace(width=c1 - c0, height=r1 - r0, crs=reader.crs,
                                       transform=(reader.transform if georeferenced else affine.Affine.identity())
                                       * affine.Affine.translation(c0, r0))
        tags = {"ROADSEG_VALUES": "binary road mask (1 road, 0 background)" if p.binary
                else "road probability x 255", "ROADSEG_THRESHOLD": f"{threshold:g}"}
        final.parent.mkdir(parents=True, exist_ok=True)
        staged = temporary_sibling(final, ".part.tif")
        try:
            with rasterio.Env(GDAL_CACHEMAX=gdal_cache_mb(reader, c1 - c0 + tile)):  # as the engine
                sink = RasterSink(staged, grid_of_part, tags)
                try:  # the engine's own windowed prediction: the part holds the whole run's values
                    predict_window(reader, grid, task.window, chosen, normalise, runner, sink,
                                   encoder_for(p.binary, threshold))
                finally:
                    sink.close()
            check_written(staged, c1 - c0, r1 - r0, final)
            digest = finish_part(staged, final)
        finally:
            staged.unlink(missing_ok=True)
        warnings = list(reader.warnings) + loaded.notes + runner.notes
    return {"part": str(final), "sha256": digest, "pixels": (r1 - r0) * (c1 - c0), "tiles": len(rows) * len(cols),
            "seconds": time.perf_counter() - start, "backend": loaded.name, "device": loaded.device,
            "threshold": threshold, "warnings": warnings}
