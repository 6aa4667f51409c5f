"""Road mask -> clean centreline network as attributed lines (a GeoDataFrame).

The cleaned skeleton lines come from `road_stream` (block/halo skeletons, sknw, the clean-up of
`road_graph`: chains merged, spurs pruned, gaps bridged, short components dropped), a row of
blocks at a time. They are simplified (Douglas-Peucker), optionally smoothed (Chaikin) and
moved to map coordinates; `iter_raster_frames` hands them out as they are finished, so a
raster's lines are written in memory that follows its width, not its area.

All clean-up lengths are true metres on the ground, converted with the ground size of a pixel
at the centre of the mask (`gsd.pixel_size_m`: degrees at the centre latitude, a projection's
scale factor at the centre point, so Web Mercator's "metres" count as the 0.74 m they are at
42 N). Without a CRS, map units are taken as metres; without a transform, pixels are 1 m and
coordinates are pixel coordinates (x = column + 0.5, y = row + 0.5, y pointing down).

Attributes: `id` 1..n; `length_m` the length of the line as written, on the ground: the sum of
the geodesic lengths of its segments on the CRS's ellipsoid (`gsd.segment_lengths_m`; a
projected CRS's vertices are taken back to its geographic coordinates), so a rotated or sheared
transform, UTM or Web Mercator give what a GIS measures on the ellipsoid; without a CRS its
planar length; `width_m` the mean over the line's skeleton pixels of 2 * d - 1 px (d: distance
to the nearest background pixel, as scipy's EDT), times the side of a square of the pixel's
ground area (the transform's determinant in square metres at the centre); `mean_prob` the
mean probability over the same pixels, NaN when no probability is given (0 would read as
"certainly not a road"; NaN is written as null).

Writers live in `vector_io`; `apls` reuses `road_graph` so skeleton -> graph has one home.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from .errors import RasterError
from .gsd import IMAGE_FRAME, centre, metres_per_unit, segment_lengths_m
from .gsd import pixel_size_m as _pixel_size_m  # private: the old vectorise.pixel_size_m had other arguments
from .params import BLOCK_SIZE, GAP_M, HALO_PX, MASK_THRESHOLD, MIN_LENGTH_M, SPUR_LENGTH_M, TOLERANCE_M
from .road_graph import _array_reader, _as_mask, _check
from .road_stream import Line, iter_lines

log = logging.getLogger(__name__)

FIELDS = ("id", "length_m", "width_m", "mean_prob")  # <= 10 characters: Shapefile-safe
_SMOOTH_PASSES = 2


# ----------------------------------------------------------------------------- units

def _scale(transform, crs, shape: tuple[int, int]) -> tuple[float, float]:
    """Metres per pixel step along (rows, columns), the order `road_graph` takes (see `gsd`)."""
    from affine import Affine

    t = Affine.identity() if transform is None else transform
    x_m, y_m = _pixel_size_m(crs, t, shape[1], shape[0])
    return y_m, x_m


def _pixel_side_m(transform, crs, shape: tuple[int, ...]) -> float:
    """The side of a square with a pixel's ground area, in metres (the transform's determinant)."""
    from affine import Affine

    t = Affine.identity() if transform is None else transform
    x, y = centre(t, shape[1], shape[0])
    fx, fy = metres_per_unit(crs, y, x)
    return math.sqrt(abs(t.a * t.e - t.b * t.d) * fx * fy)


def _lengths_m(xy: np.ndarray, idx: np.ndarray, crs, n: int) -> np.ndarray:
    """Ground metres along each of `n` lines given as map coordinates `xy` with line numbers `idx`."""
    same = idx[1:] == idx[:-1]
    step = segment_lengths_m(crs, xy[:-1][same], xy[1:][same])
    return np.bincount(idx[1:][same], step, minlength=n)


# ------------------------------------------------------------------------ lines, frames

def _chaikin(xy: np.ndarray, passes: int = _SMOOTH_PASSES) -> np.ndarray:
    """Corner cutting that keeps both end points (junctions stay shared)."""
    for _ in range(passes):
        if len(xy) < 3:
            break
        q = 0.75 * xy[:-1] + 0.25 * xy[1:]
        r = 0.25 * xy[:-1] + 0.75 * xy[1:]
        xy = np.vstack([xy[:1], np.column_stack([q, r]).reshape(-1, 2)[1:-1], xy[-1:]])
    return xy


def _corners(coords: list[np.ndarray]) -> list[np.ndarray]:
    """Drop vertices inside straight pixel runs (same step before and after).

    The lines keep their exact shape, and Douglas-Peucker (which never keeps a vertex in the
    middle of a straight run) gets far less work.
    """
    sizes = np.array([len(c) for c in coords])
    flat = np.concatenate(coords)
    step = np.diff(flat, axis=0)
    keep = np.ones(len(flat), bool)
    keep[1:-1] = np.any(step[1:] != step[:-1], axis=1)
    ends = np.cumsum(sizes)
    keep[ends - 1] = keep[ends - sizes] = True
    return np.split(flat[keep], np.cumsum(np.add.reduceat(keep, ends - sizes))[:-1])


def _linestrings(coords: list[np.ndarray]) -> np.ndarray:
    return shapely.linestrings(np.concatenate(coords), indices=np.repeat(np.arange(len(coords)),
                                                                         [len(c) for c in coords]))


def _oriented_line(line: Line) -> tuple[tuple, Line]:
    """The line from its smaller end (a ring: its smaller direction), and its sort key: the same
    order of lines whatever the blocks and bands they were found in."""
    pts = line.pts
    ends, turned = (tuple(pts[0]), tuple(pts[-1])), (tuple(pts[-1]), tuple(pts[0]))
    backwards = turned < ends or (ends == turned and len(pts) > 2 and tuple(pts[-2]) < tuple(pts[1]))
    line = line.reversed() if backwards else line
    return (*line.pts[0], *line.pts[-1], *line.pts[min(1, len(line.pts) - 1)], len(line.pts)), line


def _frame(lines: list[Line], transform, crs, shape: tuple[int, ...], tolerance: float,
           smooth: bool, has_prob: bool, first_id: int = 1):
    """The GeoDataFrame of `lines` (pixel coordinates) in map coordinates, ids from `first_id`."""
    import geopandas as gpd
    from affine import Affine

    if not lines:
        return gpd.GeoDataFrame({"id": np.zeros(0, np.int64), **{f: np.zeros(0) for f in FIELDS[1:]}},
                                geometry=gpd.GeoSeries([], crs=crs), crs=crs)
    data = [line for _, line in sorted((_oriented_line(line) for line in lines), key=lambda kl: kl[0])]
    geometry = _linestrings(_corners([line.pts[:, ::-1] + 0.5 for line in data]))  # (x, y) = (col, row) + 0.5
    px = _pixel_side_m(transform, crs, shape)
    tol_px = tolerance / px
    if tol_px > 0:  # Douglas-Peucker keeps line ends; only rings could collapse (13x slower guard)
        ring = shapely.is_closed(geometry)
        geometry[ring] = shapely.simplify(geometry[ring], tol_px, preserve_topology=True)
        geometry[~ring] = shapely.simplify(geometry[~ring], tol_px, preserve_topology=False)
    if smooth:
        geometry = _linestrings([_chaikin(shapely.get_coordinates(g)) for g in geometry])
    n = np.array([np.count_nonzero(~np.isnan(line.width)) for line in data])
    sw = np.array([np.nansum(line.width, dtype=np.float64) for line in data])
    width = np.where(n > 0, sw / np.maximum(n, 1) * px, np.nan)
    sp = np.array([np.sum(line.prob, dtype=np.float64) for line in data])
    prob = sp / np.maximum(n, 1) if has_prob else np.full(len(data), np.nan)
    t = transform if transform is not None else Affine.identity()
    geometry = shapely.transform(geometry, lambda c: np.column_stack([t.a * c[:, 0] + t.b * c[:, 1] + t.c,
                                                                      t.d * c[:, 0] + t.e * c[:, 1] + t.f]))
    xy, idx = shapely.get_coordinates(geometry, return_index=True)
    length = _lengths_m(xy, idx, crs, len(data))
    return gpd.GeoDataFrame({"id": np.arange(first_id, first_id + len(data), dtype=np.int64), "length_m": length,
                             "width_m": width, "mean_prob": prob}, geometry=geometry, crs=crs)


def vectorise_mask(mask: np.ndarray, transform=None, crs=None, prob: np.ndarray | None = None, *,
                   min_length: float = MIN_LENGTH_M, spur_length: float = SPUR_LENGTH_M, gap: float = GAP_M,
                   tolerance: float = TOLERANCE_M, smooth: bool = False, block_size: int | None = None,
                   halo: int = HALO_PX, on_progress: Callable[[float], None] | None = None,
                   is_cancelled: Callable[[], bool] | None = None):
    """Road centrelines of a boolean (H, W) mask as a GeoDataFrame of LineStrings.

    Args:
        mask: road pixels (non-zero = road).
        transform: affine pixel -> map transform (None: pixel coordinates, 1 m pixels).
        crs: anything geopandas accepts, or None.
        prob: optional probabilities (float 0..1 or uint8 0..255) for `mean_prob`.
        min_length, spur_length, gap, tolerance: clean-up lengths in metres (see module).
        smooth: Chaikin-smooth the simplified lines (end points and junctions stay put).
        block_size: process in blocks of this many pixels (default: blocks of BLOCK_SIZE
            only above `road_graph.AUTO_BLOCK_PIXELS`); results do not break at block edges.
        halo: block overlap in pixels; roads wider than about `halo` may differ near edges.
        on_progress: called with the fraction of blocks done.
        is_cancelled: polled per block; when it returns True, `Cancelled` is raised.

    Returns:
        Columns `id` (1..n), `length_m`, `width_m` (mean road width, metres), `mean_prob`
        (mean probability along the line, NaN when `prob` is None) and the geometry, in
        `crs`. Lines meet at junctions with identical end coordinates.
    """
    mask = _as_mask(mask)
    _check(min_length, spur_length, gap, tolerance, block_size, halo)
    shape = (int(mask.shape[0]), int(mask.shape[1]))
    scale = _scale(transform, crs, shape)
    read, prob_scale = _array_reader(mask, prob)
    lines = [line for batch in iter_lines(read, shape, scale, prob_scale, min_length=min_length,
                                          spur_length=spur_length, gap=gap, block_size=block_size, halo=halo,
                                          on_progress=on_progress, is_cancelled=is_cancelled) for line in batch]
    return _frame(lines, transform, crs, mask.shape, tolerance, smooth, prob is not None)


def _raster_is_binary(src, band: int) -> bool:
    """uint8 rasters whose values are all 0/1 are masks; others hold probability * 255.

    The engine's own outputs say which they are (tag ROADSEG_VALUES): trust that first, since a
    probability map of a road-free area can also hold only 0s and 1s.
    """
    values = src.tags().get("ROADSEG_VALUES", "")
    if values:
        return values.startswith("binary")
    for _, window in src.block_windows(band):
        if src.read(band, window=window).max(initial=0) > 1:
            return False
    return True


def vectorise_raster(path: str | Path, *, threshold: float = MASK_THRESHOLD, band: int = 1,
                     min_length: float = MIN_LENGTH_M, spur_length: float = SPUR_LENGTH_M, gap: float = GAP_M,
                     tolerance: float = TOLERANCE_M, smooth: bool = False, block_size: int | None = BLOCK_SIZE,
                     halo: int = HALO_PX, on_progress: Callable[[float], None] | None = None,
                     is_cancelled: Callable[[], bool] | None = None):
    """Road centrelines of a mask or probability raster, read in windowed blocks, as one frame.

    Which pixels are road: a uint8 band whose values are all 0/1 is a binary mask (1 = road,
    no `mean_prob`); any other uint8 band holds probability * 255 and a pixel is road when
    its value > threshold * 255 (a threshold above 1 is taken in raw 0..255 units); a float
    band holds probabilities 0..1 (road when > threshold); other integer bands are masks
    (non-zero = road). Nodata pixels are never road. The raster's transform and CRS are used (a
    raster without any georeferencing: the frame QGIS draws it in, `gsd.IMAGE_FRAME`).
    The lines are collected in memory; `iter_raster_frames` hands them out a row of blocks at a
    time instead (what the pipeline writes files from). See `vectorise_mask` for the arguments.

    Raises:
        RasterError: the file cannot be opened or read (truncated, damaged), the band does not
            exist, or it is placed by ground control points or RPCs only (warp it first).
    """
    with RasterLines(path, threshold=threshold, band=band, min_length=min_length, spur_length=spur_length, gap=gap,
                     tolerance=tolerance, smooth=smooth, block_size=block_size, halo=halo, on_progress=on_progress,
                     is_cancelled=is_cancelled) as source:
        frame = source.frame([line for batch in source.batches() for line in batch])
    log.info("%s: %d road lines, %.1f km", path, len(frame), frame["length_m"].sum() / 1000)
    return frame


def iter_raster_frames(path: str | Path, **options: Any) -> Iterator:
    """The road lines of `vectorise_raster(path, **options)`, a GeoDataFrame per row of blocks as
    soon as its lines are final (ids continue from frame to frame; at least one frame, maybe
    empty). Memory follows the raster's width, not its area or its length of road."""
    with RasterLines(path, **options) as source:
        first_id = 1
        for batch in source.batches():
            frame = source.frame(batch, first_id)
            first_id += len(frame)
            yield frame
        if first_id == 1:
            yield source.frame([])


def check_memory(width: int, height: int, gsd_m: float | None, *, min_length: float = MIN_LENGTH_M,
                 spur_length: float = SPUR_LENGTH_M, gap: float = GAP_M, tolerance: float = TOLERANCE_M,
                 smooth: bool = False, block_size: int | None = BLOCK_SIZE, halo: int = HALO_PX) -> None:
    """Refuse vectoriser options whose memory on a raster of this size, of `gsd_m` metre pixels,
    does not fit this machine (`limits.check_vectorise`): the band `road_stream` cleans at a time
    holds the centre lines of `block_size` + 2 x context rows, and the context grows with the gap
    and spur lengths in pixels."""
    from .limits import check_vectorise
    from .road_stream import context_rows

    step = gsd_m or 1.0
    context = context_rows((step, step), spur_length, gap)
    larger = ("gap", gap) if gap >= spur_length else ("spur_length", spur_length)
    check_vectorise(width, height, block_size or BLOCK_SIZE, halo, context, *larger)


VECTORISE_CACHE_MB = 64  # GDAL's block cache while vectorising (its default, 5 % of RAM, grows with area)


class RasterLines:
    """An open mask or probability raster and how its road lines are read (see `vectorise_raster`)."""

    def __init__(self, path: str | Path, *, threshold: float = MASK_THRESHOLD, band: int = 1,
                 min_length: float = MIN_LENGTH_M, spur_length: float = SPUR_LENGTH_M, gap: float = GAP_M,
                 tolerance: float = TOLERANCE_M, smooth: bool = False, block_size: int | None = BLOCK_SIZE,
                 halo: int = HALO_PX, on_progress: Callable[[float], None] | None = None,
                 is_cancelled: Callable[[], bool] | None = None) -> None:
        _check(min_length, spur_length, gap, tolerance, block_size, halo)
        self.path, self.band, self.threshold = path, band, threshold
        self.tolerance, self.smooth = tolerance, smooth
        self.options: dict[str, Any] = dict(min_length=min_length, spur_length=spur_length, gap=gap,
                            block_size=block_size or BLOCK_SIZE, halo=halo, on_progress=on_progress,
                            is_cancelled=is_cancelled)

    def __enter__(self) -> RasterLines:
        import rasterio

        from .readers import strict_reading

        strict_reading()
        self._env = rasterio.Env(GDAL_CACHEMAX=VECTORISE_CACHE_MB)
        self._env.__enter__()
        try:
            self.src = rasterio.open(self.path)
        except (rasterio.errors.RasterioIOError, OSError) as exc:
            self._env.__exit__(None, None, None)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
            raise RasterError(self.path, f"cannot open the raster ({first})",
                              "check the path and that it is a GeoTIFF (or another GDAL raster)") from exc
        try:
            _check_georeferencing(self.src, self.path)
            self.transform, _, self.crs = georeferencing(self.src)
            scale = _scale(self.transform, self.src.crs, self.src.shape)
            options = {k: v for k, v in self.options.items() if k not in ("on_progress", "is_cancelled")}
            check_memory(self.src.width, self.src.height, min(scale), **options)
            with self._reading():
                self._prepare()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.src.close()
        self._env.__exit__(None, None, None)

    @contextmanager
    def _reading(self) -> Iterator[None]:
        import rasterio

        try:
            yield
        except rasterio.errors.RasterioError as exc:
            from .readers import gdal_reason

            raise RasterError(self.path, f"reading failed ({gdal_reason(exc)})",
                              "the file may be truncated or damaged; copy or export it again") from None

    def _prepare(self) -> None:
        from rasterio.windows import Window

        src, band = self.src, self.band
        if not 1 <= band <= src.count:
            raise RasterError(src.name, f"band {band} does not exist (the raster has {src.count})",
                              f"choose a band between 1 and {src.count}")
        dtype = np.dtype(src.dtypes[band - 1])
        nodata = src.nodatavals[band - 1]
        if dtype == np.uint8:
            mode = "binary" if _raster_is_binary(src, band) else "prob"
            cut, self.prob_scale = (self.threshold if self.threshold > 1 else self.threshold * 255.0), 1 / 255
        else:
            mode = "prob" if dtype.kind == "f" else "binary"
            cut, self.prob_scale = self.threshold, 1.0
        self.has_prob = mode == "prob"

        def read(r0: int, r1: int, c0: int, c1: int) -> tuple[np.ndarray, np.ndarray | None]:
            raw = src.read(band, window=Window(c0, r0, c1 - c0, r1 - r0))
            road = raw != 0 if mode == "binary" else raw > cut
            if nodata is not None:
                road &= ~np.isnan(raw) if np.isnan(nodata) else raw != nodata
            return road, (raw if mode == "prob" else None)

        self.read = read

    def batches(self) -> Iterator[list[Line]]:
        """The finished lines, a batch per row of blocks (pixel coordinates)."""
        src = self.src
        lines = iter_lines(self.read, src.shape, _scale(self.transform, src.crs, src.shape), self.prob_scale,
                           **self.options)
        while True:
            with self._reading():
                batch = next(lines, None)
            if batch is None:
                return
            yield batch

    def frame(self, lines: list[Line], first_id: int = 1):
        return _frame(lines, self.transform, self.crs, self.src.shape, self.tolerance, self.smooth,
                      self.has_prob, first_id)


def _check_georeferencing(src, path) -> None:
    """Refuse a raster placed by GCPs or RPCs only: its lines would silently be in pixel units."""
    from affine import Affine

    if src.transform != Affine.identity() or src.crs is not None:
        return
    if src.gcps[0] or src.rpcs:
        kind = "ground control points" if src.gcps[0] else "RPCs"
        raise RasterError(path, f"the raster is placed by {kind} only, without a geotransform",
                          "warp it to a map grid first (gdalwarp), or segment the image again")


def georeferencing(src) -> tuple[Any, Any, str | None]:
    """(transform, CRS, CRS text for the lines) of an open raster's grid; a raster without any
    georeferencing is in the frame QGIS draws it in (`gsd.IMAGE_FRAME`)."""
    from affine import Affine

    transform, crs_text = src.transform, None
    if transform == Affine.identity() and src.crs is None:
        transform = Affine(*IMAGE_FRAME)
    if src.crs is not None:
        epsg = src.crs.to_epsg()
        crs_text = f"EPSG:{epsg}" if epsg else src.crs.to_wkt()
    return transform, src.crs, crs_text
