"""Road mask -> clean centreline network as attributed lines (a GeoDataFrame).

The cleaned skeleton graph comes from `road_graph` (block/halo skeletons, sknw, clean-up:
chains merged, spurs pruned, gaps bridged, short components dropped). Its lines are
simplified (Douglas-Peucker), optionally smoothed (Chaikin) and moved to map coordinates.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import shapely

from .errors import RasterError
from .gsd import IMAGE_FRAME, centre, metres_per_unit, segment_lengths_m
from .gsd import pixel_size_m as _pixel_size_m  # private: the old vectorise.pixel_size_m had other arguments
from .params import BLOCK_SIZE, GAP_M, HALO_PX, MASK_THRESHOLD, MIN_LENGTH_M, SPUR_LENGTH_M, TOLERANCE_M
from .road_graph import _array_reader, _as_mask, _check, _graph

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


def _frame(graph: nx.MultiGraph, transform, crs, shape: tuple[int, ...], tolerance: float,
           smooth: bool, has_prob: bool):
    import geopandas as gpd
    from affine import Affine

    paths: list[tuple] = []  # each line starts at its smaller end; lines sorted by it: same order whatever the blocks
    for _, _, d in graph.edges(data=True):
        pts = d["pts"] if tuple(d["pts"][0]) <= tuple(d["pts"][-1]) else d["pts"][::-1]
        paths.append((tuple(pts[0]) + tuple(pts[-1]), len(paths), pts, d))
    paths.sort(key=lambda p: p[:2])
    data = [d for *_, d in paths]
    if not data:
        return gpd.GeoDataFrame({"id": np.zeros(0, np.int64), **{f: np.zeros(0) for f in FIELDS[1:]}},
                                geometry=gpd.GeoSeries([], crs=crs), crs=crs)
    lines = _linestrings(_corners([pts[:, ::-1] + 0.5 for *_, pts, _ in paths]))  # (x, y) = (col, row) + 0.5
    px = _pixel_side_m(transform, crs, shape)
    tol_px = tolerance / px
    if tol_px > 0:  # Douglas-Peucker keeps line ends; only rings could collapse (13x slower guard)
        ring = shapely.is_closed(lines)
        lines[ring] = shapely.simplify(lines[ring], tol_px, preserve_topology=True)
        lines[~ring] = shapely.simplify(lines[~ring], tol_px, preserve_topology=False)
    if smooth:
        lines = _linestrings([_chaikin(shapely.get_coordinates(g)) for g in lines])
    n = np.array([len(d["s"]) for d in data])
    sums = np.array([d["s"].sum(axis=0) for d in data]).reshape(-1, 2)  # width px, probability
    width = np.where(n > 0, sums[:, 0] / np.maximum(n, 1) * px, np.nan)
    prob = sums[:, 1] / np.maximum(n, 1) if has_prob else np.full(len(data), np.nan)
    t = transform if transform is not None else Affine.identity()
    lines = shapely.transform(lines, lambda c: np.column_stack([t.a * c[:, 0] + t.b * c[:, 1] + t.c,
                                                                t.d * c[:, 0] + t.e * c[:, 1] + t.f]))
    xy, idx = shapely.get_coordinates(lines, return_index=True)
    length = _lengths_m(xy, idx, crs, len(data))
    return gpd.GeoDataFrame({"id": np.arange(1, len(data) + 1, dtype=np.int64), "length_m": length,
                             "width_m": width, "mean_prob": prob}, geometry=lines, crs=crs)


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
    graph = _graph(read, shape, scale, prob_scale, min_length=min_length, spur_length=spur_length,
                   gap=gap, block_size=block_size, halo=halo, on_progress=on_progress,
                   is_cancelled=is_cancelled)
    return _frame(graph, transform, crs, mask.shape, tolerance, smooth, prob is not None)


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
    """Road centrelines of a mask or probability raster, read in windowed blocks.

    Which pixels are road: a uint8 band whose values are all 0/1 is a binary mask (1 = road,
    no `mean_prob`); any other uint8 band holds probability * 255 and a pixel is road when
    its value > threshold * 255 (a threshold above 1 is taken in raw 0..255 units); a float
    band holds probabilities 0..1 (road when > threshold); other integer bands are masks
    (non-zero = road). Nodata pixels are never road. The raster's transform and CRS are used (a
    raster without any georeferencing: the frame QGIS draws it in, `gsd.IMAGE_FRAME`).
    Memory is bounded by `block_size` (+ halo); see `vectorise_mask` for the other arguments.

    Raises:
        RasterError: the file cannot be opened or read (truncated, damaged), the band does not
            exist, or it is placed by ground control points or RPCs only (warp it first).
    """
    import rasterio

    _check(min_length, spur_length, gap, tolerance, block_size, halo)
    try:
        src = rasterio.open(path)
    except (rasterio.errors.RasterioIOError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise RasterError(path, f"cannot open the raster ({first})",
                          "check the path and that it is a GeoTIFF (or another GDAL raster)") from exc
    with src:
        _check_georeferencing(src, path)
        try:
            frame = _vectorise_dataset(src, band, threshold, dict(
                min_length=min_length, spur_length=spur_length, gap=gap, block_size=block_size or BLOCK_SIZE,
                halo=halo, on_progress=on_progress, is_cancelled=is_cancelled), tolerance, smooth)
        except rasterio.errors.RasterioError as exc:
            from .readers import gdal_reason

            raise RasterError(path, f"reading failed ({gdal_reason(exc)})",
                              "the file may be truncated or damaged; copy or export it again") from None
    log.info("%s: %d road lines, %.1f km", path, len(frame), frame["length_m"].sum() / 1000)
    return frame


def _check_georeferencing(src, path) -> None:
    """Refuse a raster placed by GCPs or RPCs only: its lines would silently be in pixel units."""
    from affine import Affine

    if src.transform != Affine.identity() or src.crs is not None:
        return
    if src.gcps[0] or src.rpcs:
        kind = "ground control points" if src.gcps[0] else "RPCs"
        raise RasterError(path, f"the raster is placed by {kind} only, without a geotransform",
                          "warp it to a map grid first (gdalwarp), or segment the image again")


def _vectorise_dataset(src, band: int, threshold: float, graph_options: dict, tolerance: float, smooth: bool):
    """`vectorise_raster` on an open dataset (rasterio errors propagate)."""
    from rasterio.windows import Window

    if not 1 <= band <= src.count:
        raise RasterError(src.name, f"band {band} does not exist (the raster has {src.count})",
                          f"choose a band between 1 and {src.count}")
    dtype = np.dtype(src.dtypes[band - 1])
    nodata = src.nodatavals[band - 1]
    if dtype == np.uint8:
        mode = "binary" if _raster_is_binary(src, band) else "prob"
        cut, prob_scale = (threshold if threshold > 1 else threshold * 255.0), 1 / 255
    else:
        mode = "prob" if dtype.kind == "f" else "binary"
        cut, prob_scale = threshold, 1.0

    def read(r0: int, r1: int, c0: int, c1: int) -> tuple[np.ndarray, np.ndarray | None]:
        raw = src.read(band, window=Window(c0, r0, c1 - c0, r1 - r0))
        road = raw != 0 if mode == "binary" else raw > cut
        if nodata is not None:
            road &= ~np.isnan(raw) if np.isnan(nodata) else raw != nodata
        return road, (raw if mode == "prob" else None)

    transform, _, crs = georeferencing(src)
    graph = _graph(read, src.shape, _scale(transform, src.crs, src.shape), prob_scale, **graph_options)
    return _frame(graph, transform, crs, src.shape, tolerance, smooth, mode == "prob")


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
