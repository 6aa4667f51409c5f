"""Overlapping tile grid, blending window and the whole-array tiled predictor.

The grid and the window are shared by `predict_array` (whole images, used by validation and
evaluation) and the streaming raster engine, so both blend tiles identically.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .errors import Cancelled
from .limits import check_overlap

PredictBatch = Callable[[np.ndarray], np.ndarray]  # (N, C, t, t) float32 -> (N, t, t) probabilities


def tile_origins(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets covering [0, length) with tiles of `tile`; the last tile ends at `length`."""
    if length <= tile:
        return [0]
    origins = list(range(0, length - tile, stride))
    origins.append(length - tile)
    return origins


def blend_ramp(tile: int, overlap: int) -> np.ndarray:
    """One axis of `blend_window`: 1 inside, a raised cosine over `overlap` pixels at each end."""
    ramp = np.ones(tile, dtype=np.float32)
    if overlap > 0:
        edge = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
        edge = 0.5 - 0.5 * np.cos(np.pi * edge)  # raised cosine, never exactly zero
        ramp[:overlap] = edge
        ramp[-overlap:] = edge[::-1]
    return ramp


def blend_window(tile: int, overlap: int) -> np.ndarray:
    """Weights that fall smoothly to near zero over `overlap` pixels at each tile border.

    Overlapping tiles weighted this way sum to a smooth surface, so predictions near a
    tile's border (which see zero padding) barely count and no seams appear.
    """
    ramp = blend_ramp(tile, overlap)
    return np.outer(ramp, ramp).astype(np.float32)


def iter_batches(items: list, batch_size: int) -> Iterator[list]:
    for i in range(0, len(items), batch_size):
        yield items[i:i + batch_size]


def predict_array(image: np.ndarray, predict_batch: PredictBatch, tile: int, overlap: int,
                  batch_size: int = 8, on_progress: Callable[[float], None] | None = None,
                  is_cancelled: Callable[[], bool] | None = None) -> np.ndarray:
    """Predict a whole (C, H, W) normalised image; returns (H, W) float32 probabilities.

    The image is reflection-padded as `TileGrid` lays it out (half the overlap, and up to one
    tile when smaller), so raster edges are predicted from context like any interior pixel.

    Raises:
        ValueError: overlap negative or not under half the tile.
    """
    _, h, w = image.shape
    grid = TileGrid(h, w, tile, overlap)
    m = grid.margin
    padded = np.pad(image, ((0, 0), (m, grid.pad_h), (m, grid.pad_w)), mode="reflect")
    window = blend_window(tile, overlap)
    acc = np.zeros(padded.shape[1:], dtype=np.float32)
    origins = [(r, c) for r in grid.row_origins for c in grid.col_origins]
    done = 0
    for batch in iter_batches(origins, batch_size):
        if is_cancelled is not None and is_cancelled():
            raise Cancelled()
        tiles = np.stack([padded[:, r:r + tile, c:c + tile] for r, c in batch])
        probs = predict_batch(np.ascontiguousarray(tiles, dtype=np.float32))
        for (r, c), p in zip(batch, probs, strict=True):
            acc[r:r + tile, c:c + tile] += p * window
        done += len(batch)
        if on_progress is not None:
            on_progress(done / len(origins))
    # The summed window weight is separable (see TileGrid), divided out as the streaming blend does.
    out = acc[m:m + h, m:m + w]
    out /= grid.row_weight[:, None]
    out /= grid.col_weight[None, :]
    return out


class TileGrid:
    """The tile layout of an (height, width) raster, shared by `predict_array` and the engine.

    Tiles live in padded coordinates: the raster is reflection-padded by `margin` (half the
    overlap) at the top/left and by `pad_h`/`pad_w` at the bottom/right; `predict_array` pads
    the whole image by exactly these, so streaming and whole-array predictions agree.
    Because the grid is a product of row and column origins, the summed blend weight of a
    pixel is `row_weight[y] * col_weight[x]`: no weight image is ever stored.

    Args:
        height: raster rows.
        width: raster columns.
        tile: tile size in pixels.
        overlap: pixels shared by neighbouring tiles.
    """

    def __init__(self, height: int, width: int, tile: int, overlap: int) -> None:
        check_overlap(overlap, tile)
        self.height, self.width, self.tile, self.overlap = height, width, tile, overlap
        self.margin = overlap // 2
        self.pad_h = max(self.margin, tile - height - self.margin)
        self.pad_w = max(self.margin, tile - width - self.margin)
        stride = tile - overlap
        self.row_origins = tile_origins(height + self.margin + self.pad_h, tile, stride)
        self.col_origins = tile_origins(width + self.margin + self.pad_w, tile, stride)
        ramp = blend_ramp(tile, overlap)
        self.row_weight = self._summed(ramp, self.row_origins, height)
        self.col_weight = self._summed(ramp, self.col_origins, width)

    def _summed(self, ramp: np.ndarray, origins: list[int], length: int) -> np.ndarray:
        total = np.zeros(length + self.margin + self.tile, dtype=np.float32)
        for o in origins:
            total[o:o + self.tile] += ramp
        return total[self.margin:self.margin + length]

    @property
    def n_tiles(self) -> int:
        return len(self.row_origins) * len(self.col_origins)

    def raster_rows(self, row_origin: int) -> tuple[int, int]:
        """Raster rows [first, stop) that a tile row starting at padded row `row_origin` covers."""
        first = row_origin - self.margin
        return max(first, 0), min(first + self.tile, self.height)


def touching(origins: list[int], margin: int, tile: int, lo: int, hi: int) -> list[int]:
    """The tile origins (padded coordinates) whose raster span reaches into [lo, hi)."""
    return [o for o in origins if o - margin < hi and o - margin + tile > lo]


class GridView:
    """The window rows r0:r1, columns c0:c1 of a `TileGrid`, in the shape `RollingBlend` and
    `cut_tile` take a whole grid: tile origins are given shifted by the window's corner, and the
    summed blend weights are the whole grid's, so a window blends exactly as the whole raster."""

    def __init__(self, grid: TileGrid, r0: int, r1: int, c0: int, c1: int) -> None:
        self.tile, self.overlap, self.margin = grid.tile, grid.overlap, grid.margin
        self.height, self.width = r1 - r0, c1 - c0
        self.row_weight, self.col_weight = grid.row_weight[r0:r1], grid.col_weight[c0:c1]

    def raster_rows(self, row_origin: int) -> tuple[int, int]:
        first = row_origin - self.margin
        return max(first, 0), min(first + self.tile, self.height)


class RollingBlend:
    """Blends tile predictions into a band of raster rows that rolls down the raster.

    Memory is `rows x width` floats whatever the raster height. Rows above the current tile
    row are final and are handed out by `pop`, in multiples of `block` rows (so a tiled
    GeoTIFF receives whole block rows) except at the raster's end.

    Args:
        grid: the tile layout.
        block: output block height; flushed rows are multiples of it.
    """

    def __init__(self, grid: TileGrid | GridView, block: int = 256) -> None:
        self.grid, self.block = grid, block
        rows = min(grid.height, grid.tile + block)
        self.acc = np.zeros((rows, grid.width), dtype=np.float32)
        self.valid = np.zeros((rows, grid.width), dtype=bool)
        self.window = blend_window(grid.tile, grid.overlap)
        self.start = 0  # raster row held in self.acc[0]

    def add(self, prob: np.ndarray, valid: np.ndarray, row_origin: int, col_origin: int) -> None:
        """Accumulate one (tile, tile) probability tile and its valid mask at a padded origin."""
        g = self.grid
        y0, y1 = g.raster_rows(row_origin)
        x0 = max(col_origin - g.margin, 0)
        x1 = min(col_origin - g.margin + g.tile, g.width)
        ty, tx = y0 - (row_origin - g.margin), x0 - (col_origin - g.margin)
        h, w = y1 - y0, x1 - x0
        b0 = y0 - self.start
        if b0 < 0 or b0 + h > self.acc.shape[0]:
            raise RuntimeError("tile outside the rolling band; tiles must come in row-major order")
        self.acc[b0:b0 + h, x0:x1] += prob[ty:ty + h, tx:tx + w] * self.window[ty:ty + h, tx:tx + w]
        self.valid[b0:b0 + h, x0:x1] = valid[ty:ty + h, tx:tx + w]

    def pop(self, finished: int, encode: Callable[[np.ndarray], np.ndarray] | None = None,
            ) -> tuple[int, np.ndarray, np.ndarray] | None:
        """Hand out rows [start, finished) rounded down to whole blocks (all at the raster end).

        Args:
            finished: rows above this one will receive no more tiles.
            encode: turns the (n, width) float32 probabilities into what is returned; it may
                work in place (they are a view of the band, about to be recycled).

        Returns:
            (first row, encoded (n, width) probabilities with invalid pixels at 0, (n, width)
            valid mask), or None when no whole block is finished yet.
        """
        if finished < self.grid.height:
            finished = self.start + (finished - self.start) // self.block * self.block
        n = finished - self.start
        if n <= 0:
            return None
        g = self.grid
        prob = self.acc[:n]
        prob /= g.row_weight[self.start:finished, None]
        prob /= g.col_weight[None, :]
        valid = self.valid[:n].copy()
        prob[~valid] = 0.0
        values = encode(prob) if encode is not None else prob.copy()
        first = self.start
        self._shift(n)
        self.start = finished
        return first, values, valid

    def _shift(self, n: int) -> None:
        """Move the band up by n rows, in non-overlapping chunks (no temporary copy)."""
        rows = self.acc.shape[0]
        for top in range(0, rows - n, n):
            stop = min(top + n, rows - n)
            self.acc[top:stop] = self.acc[top + n:stop + n]
            self.valid[top:stop] = self.valid[top + n:stop + n]
        self.acc[rows - n:] = 0.0
        self.valid[rows - n:] = False


def cut_tile(data: np.ndarray, valid: np.ndarray, grid: TileGrid | GridView, row_origin: int,
             col_origin: int) -> tuple[np.ndarray, np.ndarray]:
    """One (C, tile, tile) tile cut from `data`, the full-width raster rows under its tile row.

    Beyond the raster's edges the tile is reflected exactly as `predict_array` pads the whole
    image (the mirrored pixels always lie inside the tile's own part of the raster).
    """
    first, x = row_origin - grid.margin, col_origin - grid.margin
    y0, y1 = grid.raster_rows(row_origin)
    x0, x1 = max(x, 0), min(x + grid.tile, grid.width)
    part, ok = data[:, :, x0:x1], valid[:, x0:x1]
    pad = ((y0 - first, first + grid.tile - y1), (x0 - x, x + grid.tile - x1))
    if any(pad[0]) or any(pad[1]):
        mode: Any = "reflect" if min(ok.shape) > 1 else "edge"
        part, ok = np.pad(part, ((0, 0), *pad), mode=mode), np.pad(ok, pad, mode=mode)
    return part, ok
