"""Segment a raster of any size into a road-probability GeoTIFF, in bounded memory.

Three threads form a pipeline. A reader thread reads one strip of raster rows per tile row,
reflection-pads it at the raster's edges, cuts and normalises tiles and queues batches. The
calling thread runs the model on each batch and blends the tiles into a `RollingBlend`, a
band of rows that rolls down the raster. Finished rows go to a writer thread that encodes
and writes them. Memory is a few tile rows times the raster width, whatever its height.

Output: one uint8 band, tiled and DEFLATE-compressed, on the grid the model saw (the input's
CRS and transform, or a resampled grid, see `readers.open_raster`). Values are road
probability x 255, or with `binary=True` 1 for road and 0 for background. Pixels without
input data (nodata value, alpha or mask band, all-white uint8 pixels, NaN) are written as 0
and flagged invalid in the file's internal mask band, so they are no-data to GDAL and QGIS and
still read as "no road" by anything that ignores masks.

`segment` takes a run's settled values (`params.RunSettings`) and decides no default itself;
`predict_raster`, the prediction of a raster or of a window of it into a file, serves it and the
region run's chunks alike; `segment_raster` is `segment` with keyword options, for scripts.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import affine
import numpy as np
import rasterio
from rasterio.windows import Window

from .atomic import reads_file
from .backends import Backend, BatchRunner, load_backend
from .errors import Cancelled, OutputError
from .model_meta import ModelMeta
from .normalise import InputNormaliser, Radiometry, choose_stretch, data_valid
from .params import InferenceParams, RunSettings, read_model_info
from .probability_raster import OUTPUT_BLOCK, RasterSink, check_written, encoder_for, gdal_cache_mb, temporary_output
from .readers import ColumnView, RasterReader, band_stretch, choose_bands, open_raster, read_rows
from .tiling import GridView, RollingBlend, TileGrid, cut_tile, touching

STRIP_WIDTH = 64 * OUTPUT_BLOCK  # wider rasters are predicted in column strips (bounded memory)
Window4 = tuple[int, int, int, int]  # rows r0:r1, columns c0:c1 of the grid the engine predicts on


@dataclass
class SegmentResult:
    """What `segment_raster` wrote and how.

    Attributes:
        path: the GeoTIFF written.
        width, height, crs, transform: its grid (the model's GSD when the input was resampled).
        gsd_m: metres per pixel of that grid; None when unknown (no CRS).
        backend, device: "torch" or "onnxruntime", and where it ran.
        threshold: the road threshold (the model's unless one was given).
        tile, overlap: the tiling used.
        seconds: wall time of the whole call.
        warnings: things the user should know (resampling, value stretch, no georeferencing).
    """

    path: Path
    width: int
    height: int
    crs: Any
    transform: affine.Affine
    gsd_m: float | None
    backend: str
    device: str
    threshold: float
    tile: int
    overlap: int
    seconds: float
    warnings: list[str] = field(default_factory=list)
    radiometry_distance: float | None = None  # see `normalise.distance`; None when not measured


@dataclass
class TileBatch:
    """Normalised tiles, their valid masks, padded origins and, per tile, the raster row
    before which everything is final once the tile is blended (None mid tile-row)."""

    tiles: np.ndarray
    valid: np.ndarray
    origins: list[tuple[int, int]]
    finished: list[int | None]


class _DataOnly:
    """A reader whose reads also flag the engine's own no-data (all-white 8-bit pixels, see
    `readers.read_rows`) invalid, so raster statistics leave it out."""

    def __init__(self, reader: RasterReader) -> None:
        self._reader = reader
        if hasattr(reader, "read_overview"):
            self.read_overview = lambda bands, max_size=1024: self._data(*reader.read_overview(bands, max_size))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)

    def read(self, window: Window, bands: list[int]) -> tuple[np.ndarray, np.ndarray]:
        return self._data(*self._reader.read(window, bands))

    @staticmethod
    def _data(data: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return data, data_valid(data, valid)


def make_normaliser(reader: RasterReader, meta: ModelMeta, bands: list[int]) -> tuple[InputNormaliser, list[str]]:
    """The raw-values -> model-input function for `reader`, and notes about any value stretch.

    Non-8-bit values are stretched per band from their 2-98 percentiles; 8-bit ones only when
    the model's radiometric normalisation asks for it (`normalise.Radiometry`), from statistics
    of an overview (or a sample) of the whole raster without its no-data.
    """
    radiometry = Radiometry.from_meta(meta)
    if reader.dtype == "uint8" and radiometry.mode == "off":
        return InputNormaliser(meta, "uint8"), []
    source = _DataOnly(reader) if reader.dtype == "uint8" else reader
    limits = band_stretch(source, bands, radiometry.low, radiometry.high)
    stretch = choose_stretch(meta, reader.dtype, limits, reader.name)
    normaliser = InputNormaliser(meta, reader.dtype, stretch.source, stretch.target)
    normaliser.distance = stretch.distance  # the "unlike the model's imagery" advice reads it
    return normaliser, stretch.notes


def window_tiles(grid: TileGrid, window: Window4 | None = None) -> tuple[list[int], list[int]]:
    """The row and column tile origins of `grid` that touch `window` (the whole grid by default)."""
    r0, r1, c0, c1 = window or (0, grid.height, 0, grid.width)
    return (touching(grid.row_origins, grid.margin, grid.tile, r0, r1),
            touching(grid.col_origins, grid.margin, grid.tile, c0, c1))


def iter_tile_batches(reader: RasterReader, grid: TileGrid, bands: list[int], normalise: InputNormaliser,
                      batch_size: int, window: Window4 | None = None) -> Iterator[TileBatch]:
    """Batches of normalised tiles in row-major order, reading one strip per tile row.

    With `window` (rows r0:r1, columns c0:c1) only the whole grid's tiles that touch it are cut
    (from the columns they span), their origins and finished rows relative to the window: blended
    into a `RollingBlend` over `GridView(grid, *window)`, they give the window's pixels exactly
    as the whole raster's run does.
    """
    r0, r1, c0, c1 = window or (0, grid.height, 0, grid.width)
    rows, cols = window_tiles(grid, window)
    t, m = grid.tile, grid.margin
    xa, xb = max(cols[0] - m, 0), min(cols[-1] - m + t, grid.width)  # the columns these tiles span
    columns, span = ColumnView(reader, xa, xb), GridView(grid, 0, grid.height, xa, xb)
    view = GridView(grid, r0, r1, c0, c1)
    done = {r: view.raster_rows(nxt - r0)[0] for r, nxt in pairwise(rows)}
    done[rows[-1]] = view.height
    origins = [(r, c) for r in rows for c in cols]
    strip_row, data, valid = None, None, None
    for i in range(0, len(origins), batch_size):
        part = origins[i:i + batch_size]
        batch = TileBatch(np.empty((len(part), len(bands), t, t), np.float32), np.empty((len(part), t, t), bool),
                          [(r - r0, c - c0) for r, c in part], [done[r] if c == cols[-1] else None for r, c in part])
        for j, (r, c) in enumerate(part):
            if r != strip_row:
                data = valid = None  # free the previous strip before reading the next
                data, valid = read_rows(columns, *grid.raster_rows(r), bands)
                strip_row = r
            assert data is not None and valid is not None
            raw, batch.valid[j] = cut_tile(data, valid, span, r, c - xa)
            normalise(raw, batch.valid[j], out=batch.tiles[j])
        yield batch


class Prefetcher:
    """Runs an iterator in a background thread, keeping up to `depth` items ready."""

    _END = object()

    def __init__(self, items: Iterator, depth: int = 1) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(items,), name="roadseg-reader", daemon=True)
        self._thread.start()

    def _run(self, items: Iterator) -> None:
        try:
            for item in items:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put(exc)

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def column_strips(window: Window4, width: int | None = None) -> list[Window4]:
    """`window` cut into windows of its whole rows, `width` columns wide (a multiple of the output block).

    The engine's memory grows with the width it blends at once (a band of rows of it); very wide
    rasters are therefore predicted strip by strip, each exactly as the whole raster would be
    (see `iter_tile_batches`), at the cost of the tiles that straddle two strips running twice.
    """
    r0, r1, c0, c1 = window
    width = width or STRIP_WIDTH
    if c1 - c0 <= width:
        return [window]
    return [(r0, r1, c, min(c + width, c1)) for c in range(c0, c1, width)]


def predict_window(reader: RasterReader, grid: TileGrid, window: Window4, bands: list[int],
                   normaliser: InputNormaliser, runner: BatchRunner, sink: RasterSink,
                   encode: Callable[[np.ndarray], np.ndarray], sink_origin: tuple[int, int] = (0, 0),
                   on_tiles: Callable[[int], None] | None = None,
                   is_cancelled: Callable[[], bool] | None = None) -> None:
    """Predict the pixels of `window` and write them to `sink` at `sink_origin` (row, column).

    Args:
        on_tiles: called with the number of tiles just predicted (for progress).
        is_cancelled: polled between batches; True raises `Cancelled`.
    """
    r0, r1, c0, c1 = window
    blend = RollingBlend(GridView(grid, r0, r1, c0, c1), OUTPUT_BLOCK)
    batches = Prefetcher(iter_tile_batches(reader, grid, bands, normaliser, runner.limit, window))
    row0, col0 = sink_origin
    try:
        for batch in batches:
            if is_cancelled is not None and is_cancelled():
                raise Cancelled()
            probs = _predict_valid(runner, batch)
            for prob, valid, (r, c), finished in zip(probs, batch.valid, batch.origins, batch.finished, strict=True):
                blend.add(prob, valid, r, c)
                if finished is not None and (out := blend.pop(finished, encode)) is not None:
                    sink.write(row0 + out[0], out[1], out[2], col0)
            if on_tiles is not None:
                on_tiles(len(batch.origins))
    finally:
        batches.close()


def _predict_valid(runner: BatchRunner, batch: TileBatch) -> np.ndarray:
    """The batch's probabilities; tiles without a single valid pixel (beyond an area of interest,
    a web map's empty tiles, a no-data border) are 0 without running the model: their pixels are
    written as no-data whatever the model says, and a pixel's validity is the same in every tile."""
    keep = batch.valid.reshape(len(batch.valid), -1).any(axis=1)
    if keep.all():
        return runner(batch.tiles)
    probs = np.zeros((len(batch.tiles), *batch.tiles.shape[2:]), np.float32)
    if keep.any():
        probs[keep] = runner(batch.tiles[keep])
    return probs


def window_grid(reader: RasterReader, window: Window4, name: object) -> SimpleNamespace:
    """The grid of `window` (rows r0:r1, columns c0:c1) of `reader`'s: its size, CRS and the
    transform of its first pixel (pixel units when the raster has no georeferencing), named after
    the raster (else `name`) in errors."""
    r0, r1, c0, c1 = window
    georeferenced = reader.crs is not None or reader.transform != affine.Affine.identity()
    origin = reader.transform if georeferenced else affine.Affine.identity()
    return SimpleNamespace(name=getattr(reader, "name", name), width=c1 - c0, height=r1 - r0, crs=reader.crs,
                           transform=origin * affine.Affine.translation(c0, r0))


def predict_raster(reader: RasterReader, settings: RunSettings, model: Backend, normaliser: InputNormaliser,
                   bands: list[int], path: Path, name: Path, window: Window4 | None = None,
                   on_progress: Callable[[float], None] | None = None,
                   is_cancelled: Callable[[], bool] | None = None) -> tuple[int, list[str]]:
    """The one prediction routine, of the engine and of each region chunk: the probabilities of
    `window` of `reader` (the whole raster by default) written to the GeoTIFF `path` on the
    window's grid, then checked (errors name `name`, the file `path` stands for).

    The tiles are those of the whole raster's grid that touch the window, blended with the whole
    raster's weights (`predict_window`), so a window holds the whole run's values; wide windows
    are predicted in column strips (`column_strips`).

    Args:
        settings: tiling, batch, threshold, binary and the output's tags.
        model: the loaded backend; its device picks the batch (`RunSettings.batch_for`).
        normaliser, bands: the raster's value normalisation and the bands fed to the model.
        on_progress: called with the fraction done, up to 0.99 (the caller finishes).
        is_cancelled: polled between batches; True raises `Cancelled`.

    Returns:
        The number of tiles predicted, and notes for the user (a batch reduced on GPU out of memory).
    """
    grid = TileGrid(reader.height, reader.width, settings.tile, settings.overlap)
    window = window or (0, grid.height, 0, grid.width)
    r0, r1, c0, c1 = window
    runner = BatchRunner(model.predict, settings.batch_for(model.device))
    encode = encoder_for(settings.binary, settings.threshold)
    strips = column_strips(window)
    total = sum(len(rows) * len(cols) for rows, cols in (window_tiles(grid, w) for w in strips))
    done = [0]

    def count(n: int) -> None:
        done[0] += n
        if on_progress is not None:
            on_progress(0.99 * done[0] / total)

    with rasterio.Env(GDAL_CACHEMAX=gdal_cache_mb(reader, min(c1 - c0, STRIP_WIDTH) + settings.tile)):
        sink = RasterSink(path, window_grid(reader, window, name), settings.tags)
        try:
            for strip in strips:
                predict_window(reader, grid, strip, bands, normaliser, runner, sink, encode,
                               (strip[0] - r0, strip[2] - c0), count, is_cancelled)
        finally:
            sink.close()
    check_written(path, c1 - c0, r1 - r0, name)
    return total, runner.notes


def segment(src: str | os.PathLike | RasterReader, dst: str | os.PathLike, settings: RunSettings,
            on_progress: Callable[[float], None] | None = None,
            is_cancelled: Callable[[], bool] | None = None) -> SegmentResult:
    """Predict roads over a whole raster and write a uint8 GeoTIFF (see the module notes).

    Args:
        src: a raster path (opened with `open_raster`, cropped to the settings' extent and
            resampled to the model's GSD when it differs by more than 25 %) or a `RasterReader`
            used as is.
        dst: the GeoTIFF to write; written under a temporary name and renamed on success.
        settings: the run's settled values (`InferenceParams.resolve`).
        on_progress: called with the fraction done, 0..1.
        is_cancelled: polled between batches; when it returns True, `Cancelled` is raised.

    Returns:
        A `SegmentResult`.

    Raises:
        RasterError, CheckpointError, OutputError: bad input or output; nothing is written.
        Cancelled: the run was cancelled; nothing is written.
        ValueError: a device or backend that cannot be used here.
    """
    start = time.perf_counter()
    dst = Path(dst)
    if isinstance(src, (str, os.PathLike)) and reads_file(src, dst):  # the pipeline's own rule, for direct calls
        raise OutputError(dst, "output would overwrite the input raster", "choose another output name")
    meta, bands, extent, gsd = settings.meta, settings.band_list, settings.extent, settings.gsd
    if isinstance(src, (str, os.PathLike)):
        open_raster(src, bands=bands, extent=extent, native_gsd_m=gsd).close()  # a bad raster before the model
    with ThreadPoolExecutor(1, thread_name_prefix="roadseg-load") as pool:  # the model loads while the
        loading = pool.submit(load_backend, settings.model, device=settings.device,  # statistics are read
                              backend=settings.backend, tta=settings.tta)
        reader = (open_raster(src, gsd_m=meta.gsd_m, bands=bands, extent=extent, native_gsd_m=gsd)
                  if isinstance(src, (str, os.PathLike)) else src)
        try:
            chosen = choose_bands(reader, meta.in_channels, bands)
            normaliser, notes = make_normaliser(reader, meta, chosen)
            loaded = loading.result()
        except BaseException:
            if reader is not src:
                reader.close()  # type: ignore[union-attr]  # only readers opened here
            raise
    try:
        tmp = temporary_output(dst)
        try:
            _, runner_notes = predict_raster(reader, settings, loaded, normaliser, chosen, tmp, dst,
                                             on_progress=on_progress, is_cancelled=is_cancelled)
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
        if on_progress is not None:
            on_progress(1.0)
        return SegmentResult(dst, reader.width, reader.height, reader.crs, reader.transform,
                             getattr(reader, "gsd_m", None), loaded.name, loaded.device, settings.threshold,
                             settings.tile, settings.overlap, time.perf_counter() - start,
                             list(getattr(reader, "warnings", [])) + notes + loaded.notes + runner_notes,
                             normaliser.distance)
    finally:
        if reader is not src:
            reader.close()  # type: ignore[union-attr]  # only readers opened here


def segment_raster(src: str | os.PathLike | RasterReader, dst: str | os.PathLike,
                   model: str | os.PathLike | None = None, *, on_progress: Callable[[float], None] | None = None,
                   is_cancelled: Callable[[], bool] | None = None, **options: Any) -> SegmentResult:
    """`segment` with the options of `InferenceParams` as keywords (device, backend, tile, overlap,
    batch_size, bands, threshold, binary, tta, extent, gsd), settled by `InferenceParams.resolve`:
    for scripts, benchmarks and tests. `model` None means the bundled model.

    Raises:
        ParamError: an option the model cannot take; and those of `segment`.
    """
    params = InferenceParams(model=None if model is None else os.fspath(model), **options)
    return segment(src, dst, params.resolve(read_model_info(params.model_path)), on_progress, is_cancelled)
