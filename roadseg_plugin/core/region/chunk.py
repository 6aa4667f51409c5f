"""Worker side of a region run: one chunk of one raster -> its probability part.

A chunk is predicted with the whole raster's tile grid (`TileGrid` of the full input): only the
tiles that touch the chunk are read and run, and they are blended into a `RollingBlend` over a
`GridView`, the chunk's window of that grid with the whole raster's summed weights. The tiles,
their reflection padding at the raster's edges, the weights and the order in which tiles are
summed are those of `engine.segment_raster`, so the part holds the single-process values.

The model is loaded once per worker process (`worker_backend`, keyed by model, device,
backend, TTA and thread count) with ONNX Runtime / torch limited to the worker's share of the
machine's cores, so several workers on one machine do not oversubscribe it.
"""
from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import affine
import numpy as np

from ..params import DEFAULT_BATCH, InferenceParams

if TYPE_CHECKING:
    from ..readers import RasterReader
    from ..tiling import TileGrid

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


class GridView:
    """The window rows r0:r1, columns c0:c1 of a `TileGrid`, in the shape the engine's helpers
    (`RollingBlend`, `cut_tile`) take a whole grid: tile origins are given shifted by the
    window's corner, and the summed blend weights are the whole grid's."""

    def __init__(self, grid: Any, r0: int, r1: int, c0: int, c1: int) -> None:
        self.tile, self.overlap, self.margin = grid.tile, grid.overlap, grid.margin
        self.height, self.width = r1 - r0, c1 - c0
        self.row_weight, self.col_weight = grid.row_weight[r0:r1], grid.col_weight[c0:c1]

    def raster_rows(self, row_origin: int) -> tuple[int, int]:
        first = row_origin - self.margin
        return max(first, 0), min(first + self.tile, self.height)


class _Columns:
    """Columns c0:c1 of a reader, as a reader (for `read_rows`, which reads whole rows)."""

    def __init__(self, reader: Any, c0: int, c1: int) -> None:
        self.reader, self.c0, self.width = reader, c0, c1 - c0

    def read(self, window: Any, bands: list[int]) -> tuple[np.ndarray, np.ndarray]:
        from rasterio.windows import Window

        return self.reader.read(Window(window.col_off + self.c0, window.row_off, window.width, window.height), bands)


def touching(origins: list[int], margin: int, tile: int, lo: int, hi: int) -> list[int]:
    """The tile origins (padded coordinates) whose raster span reaches into [lo, hi)."""
    return [o for o in origins if o - margin < hi and o - margin + tile > lo]


def _batches(reader: Any, grid: Any, rows: list[int], cols: list[int], bands: list[int], normalise: Any,
             batch_size: int, window: tuple[int, int, int, int]) -> Iterator[Any]:
    """The chunk's tiles in row-major order, batched like `engine.iter_tile_batches`, with the
    chunk-local origins and the chunk row before which everything is final after each tile row."""
    from ..engine import TileBatch
    from ..readers import read_rows
    from ..tiling import cut_tile

    r0, r1, c0, c1 = window
    t, m = grid.tile, grid.margin
    xa, xb = max(cols[0] - m, 0), min(cols[-1] - m + t, grid.width)
    strip_view = GridView(grid, 0, grid.height, xa, xb)
    view = GridView(grid, r0, r1, c0, c1)
    done = {r: view.raster_rows(nxt - r0)[0] for r, nxt in pairwise(rows)}
    done[rows[-1]] = view.height
    origins = [(r, c) for r in rows for c in cols]
    strip_row = data = valid = None
    for i in range(0, len(origins), batch_size):
        part = origins[i:i + batch_size]
        batch = TileBatch(np.empty((len(part), len(bands), t, t), np.float32), np.empty((len(part), t, t), bool),
                          [(r - r0, c - c0) for r, c in part], [done[r] if c == cols[-1] else None for r, c in part])
        for j, (r, c) in enumerate(part):
            if r != strip_row:
                data = valid = None
                y0, y1 = grid.raster_rows(r)
                data, valid = read_rows(cast("RasterReader", _Columns(reader, xa, xb)), y0, y1, bands)
                strip_row = r
            assert data is not None and valid is not None
            raw, batch.valid[j] = cut_tile(data, valid, cast("TileGrid", strip_view), r, c - xa)
            normalise(raw, batch.valid[j], out=batch.tiles[j])
        yield batch


def segment_chunk(task: ChunkTask) -> dict[str, Any]:
    """Predict one chunk and write its part (see the module notes); returns what the client records.

    Raises:
        RasterError, CheckpointError, OutputError: bad input, model or output folder.
    """
    import rasterio

    from ..atomic import temporary_sibling
    from ..backends import BatchRunner
    from ..engine import OUTPUT_BLOCK, Prefetcher, RasterSink, _encoder, check_written, gdal_cache_mb, make_normaliser
    from ..readers import choose_bands, open_raster
    from ..tiling import RollingBlend, TileGrid
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
        rows = touching(grid.row_origins, grid.margin, tile, r0, r1)
        cols = touching(grid.col_origins, grid.margin, tile, c0, c1)
        normalise = task.normaliser or make_normaliser(reader, meta, chosen)[0]
        batch_size = p.batch_size or DEFAULT_BATCH["cuda" if "cuda" in loaded.device else "cpu"]
        runner = BatchRunner(loaded.predict, batch_size)
        georeferenced = reader.crs is not None or reader.transform != affine.Affine.identity()
        grid_of_part = SimpleNamespace(width=c1 - c0, height=r1 - r0, crs=reader.crs,
                                       transform=(reader.transform if georeferenced else affine.Affine.identity())
                                       * affine.Affine.translation(c0, r0))
        tags = {"ROADSEG_VALUES": "binary road mask (1 road, 0 background)" if p.binary
                else "road probability x 255", "ROADSEG_THRESHOLD": f"{threshold:g}"}
        blend = RollingBlend(cast(TileGrid, GridView(grid, r0, r1, c0, c1)), OUTPUT_BLOCK)
        encode = _encoder(p.binary, threshold)
        final.parent.mkdir(parents=True, exist_ok=True)
        staged = temporary_sibling(final, ".part.tif")
        try:
            cache = gdal_cache_mb(SimpleNamespace(count=reader.count, dtype=reader.dtype, width=c1 - c0 + tile))
            with rasterio.Env(GDAL_CACHEMAX=cache):  # as the engine: one band of input blocks, not 5 % of RAM
                sink = RasterSink(staged, grid_of_part, tags)
                batches = Prefetcher(_batches(reader, grid, rows, cols, chosen, normalise, runner.limit, task.window))
                try:
                    for batch in batches:
                        probs = runner(batch.tiles)
                        for prob, ok, (r, c), finished in zip(probs, batch.valid, batch.origins, batch.finished,
                                                              strict=True):
                            blend.add(prob, ok, r, c)
                            if finished is not None and (out := blend.pop(finished, encode)) is not None:
                                sink.write(*out)
                finally:
                    batches.close()
                    sink.close()
            check_written(staged, c1 - c0, r1 - r0, final)
            digest = finish_part(staged, final)
        finally:
            staged.unlink(missing_ok=True)
        warnings = list(reader.warnings) + loaded.notes + runner.notes
    return {"part": str(final), "sha256": digest, "pixels": (r1 - r0) * (c1 - c0), "tiles": len(rows) * len(cols),
            "seconds": time.perf_counter() - start, "backend": loaded.name, "device": loaded.device,
            "threshold": threshold, "warnings": warnings}
