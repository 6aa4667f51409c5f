"""The probability GeoTIFF the engine writes: a writer thread, the value encoding, the GDAL
cache bound, and the check that the file is complete before it is renamed into place.

One uint8 band, tiled and DEFLATE-compressed; probability x 255 (or 0/1 for a binary mask);
pixels without input data are 0 and flagged invalid in the file's internal mask band.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from pathlib import Path

import affine
import numpy as np
import rasterio
from rasterio.errors import RasterioError
from rasterio.windows import Window

from .atomic import temporary_sibling
from .errors import OutputError, RasterError
from .readers import RasterReader

OUTPUT_BLOCK = 256
# GDAL's GTiff keeps a tile's offset and size in arrays it refuses beyond 2 GB (8 bytes per tile
# in a BigTIFF): about 4.2 million px a side at 256 px tiles ("File too large regarding tile size").
MAX_TILES = 2**31 // 8


def check_size(width: int, height: int, name: object) -> None:
    """Refuse a grid the probability GeoTIFF cannot hold, naming the raster (a web map's whole
    world, a continent-wide view at 1 m), before any work."""
    tiles = -(-width // OUTPUT_BLOCK) * -(-height // OUTPUT_BLOCK)
    if tiles > MAX_TILES:
        raise RasterError(name, f"the area to process is {width:,} x {height:,} px at the model's resolution, "
                          "more than one GeoTIFF holds", "choose a smaller area (an extent or polygons)")


def gdal_message(exc: BaseException, path: object, limit: int = 160) -> str:
    """GDAL's reason for a failure on `path`, without the path it starts with (errors name the
    user's file, never a temporary one) and, when long, cut at a word with "...", never mid-word."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    for prefix in (f"{path}: ", f"{Path(str(path)).name}: "):
        if text.startswith(prefix):
            text = text[len(prefix):]
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0].rstrip(",;:") + "..."
    return text


class RasterSink:
    """Writes finished row bands from a writer thread into a tiled, compressed GeoTIFF.

    Args:
        path: file to create (the engine passes a temporary name).
        reader: gives the size, CRS and transform of the grid.
        tags: dataset metadata to store.
    """

    def __init__(self, path: Path, reader: RasterReader, tags: dict[str, str]) -> None:
        check_size(reader.width, reader.height, getattr(reader, "name", path))
        georeferenced = reader.crs is not None or reader.transform != affine.Affine.identity()
        profile = dict(driver="GTiff", width=reader.width, height=reader.height, count=1, dtype="uint8",
                       crs=reader.crs, transform=reader.transform if georeferenced else None, tiled=True,
                       blockxsize=OUTPUT_BLOCK, blockysize=OUTPUT_BLOCK, compress="deflate", predictor=2,
                       bigtiff="if_safer")
        try:
            self.dataset = rasterio.open(path, "w", **profile)
        except RasterioError as exc:
            raise OutputError(path, f"cannot create the output ({gdal_message(exc, path)})",
                              "choose a writable folder with free space") from None
        self.dataset.update_tags(**tags)
        self.dataset.set_band_description(1, tags.get("ROADSEG_VALUES", ""))
        self.path = path
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._run, name="roadseg-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self.error is not None:
                continue  # drain after a failure; the engine reports it
            row, col, values, valid = item
            window = Window(col, row, values.shape[1], values.shape[0])
            try:
                self.dataset.write(values, 1, window=window)
                self.dataset.write_mask(valid.astype(np.uint8) * np.uint8(255), window=window)
            except BaseException as exc:
                self.error = exc

    def write(self, row: int, values: np.ndarray, valid: np.ndarray, col: int = 0) -> None:
        """Queue (rows, width) uint8 values and valid mask starting at raster row `row`, column
        `col` (blocks while the writer is a band behind)."""
        self._raise_error()
        self._queue.put((row, col, values, valid))

    def _raise_error(self) -> None:
        if self.error is not None:
            raise OutputError(self.path, f"writing failed ({gdal_message(self.error, self.path)})",
                              "check the free disk space and permissions")

    def close(self) -> None:
        """Finish writing and close the file; raises the writer's error if it had one."""
        self._queue.put(None)
        self._thread.join()
        try:
            self.dataset.close()
        except RasterioError as exc:
            self.error = self.error or exc
        self._raise_error()


def encoder_for(binary: bool, threshold: float) -> Callable[[np.ndarray], np.ndarray]:
    if binary:
        return lambda prob: (prob >= threshold).astype(np.uint8)

    def probability(prob: np.ndarray) -> np.ndarray:
        prob *= np.float32(255)  # in place: the band of rows is the engine's largest array
        return np.rint(prob, out=prob).astype(np.uint8)

    return probability


def gdal_cache_mb(reader: RasterReader, width: int | None = None) -> int:
    """A GDAL block cache for one 512-row band of input blocks (shared by consecutive strips)
    plus the output's block row.

    GDAL's default (5 % of RAM) would keep filling with decoded blocks as the raster is
    read, so memory would grow with the raster; this bound only grows with its width.
    """
    input_row = reader.count * np.dtype(reader.dtype).itemsize * 1.25
    return 16 + int((width or reader.width) * (512 * input_row + OUTPUT_BLOCK * 2) / 2**20)


def check_written(path: Path, width: int, height: int, name: Path) -> None:
    """The GeoTIFF at `path` opens, has the run's size and every block of its band on disk.

    GDAL reports a failed write when the file is closed only through messages, not errors: with
    the disk full or a file size limit reached the file is left without its directory, or (when
    space came back mid-run) with blocks missing, which would read as "no road".

    Raises:
        OutputError: the raster is incomplete; the message names `name`, the file it stands for.
    """
    from rasterio.errors import RasterBlockError

    fix = "free some disk space (or raise the file size limit) and run again"
    try:
        with rasterio.open(path) as src:
            if (src.width, src.height) != (width, height):
                raise OutputError(name, f"was written as {src.width} x {src.height} px, not {width} x {height}", fix)
            for (i, j), _ in src.block_windows(1):
                if src.block_size(1, i, j) <= 0:
                    raise RasterBlockError(f"block {i},{j} is empty")
    except (RasterioError, RasterBlockError):
        raise OutputError(name, "not written completely (is the disk full?)", fix) from None


def temporary_output(dst: Path) -> Path:
    if dst.is_dir():
        raise OutputError(dst, "is a folder", "give a file name such as roads.tif")
    try:
        return temporary_sibling(dst, ".part.tif")
    except OSError as exc:
        raise OutputError(dst, f"cannot write here ({exc.strerror})", "choose a writable folder") from None
