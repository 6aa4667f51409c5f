"""Training labels from road lines digitised by hand (in QGIS or any GIS); QGIS-free.

Lines are buffered by the road half-width in metres and burnt onto each raster's own grid
(`rasterio.features.rasterize`). An optional area-of-interest (AOI) says where the labelling
is complete: inside it every pixel that is not road is background, outside it nothing is
known, so those pixels are written as no-data (the image's mask band) and the dataset loader
(`training.datasets`) leaves them out of the loss. Without an AOI the whole raster counts.

`make_label_dataset` cuts the rasters into tiles and writes a dataset folder
(`images/` + `masks/` GeoTIFFs paired by stem) that `training.train.train_model` reads.
"""
from __future__ import annotations

import logging
import math
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio
from affine import Affine
from rasterio import features
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from roadseg_plugin.core.errors import DatasetError
from roadseg_plugin.core.gsd import pixel_size_m
from roadseg_plugin.core.params import ROAD_HALF_WIDTH_M
from roadseg_plugin.core.readers import GSD_TOLERANCE

if TYPE_CHECKING:
    import geopandas as gpd

log = logging.getLogger(__name__)
MIN_TILE = 64  # smallest tile make_label_dataset cuts while looking for a second tile


def _shapes(frame: gpd.GeoDataFrame) -> gpd.GeoSeries:
    geoms = frame.geometry
    return geoms[geoms.notna() & ~geoms.is_empty]


def to_raster_crs(frame: gpd.GeoDataFrame, crs: CRS | None, what: str = "lines") -> gpd.GeoSeries:
    """`frame`'s non-empty geometries in `crs` (a frame without a CRS is taken to be in `crs` already)."""
    geoms = _shapes(frame)
    if crs is None or frame.crs is None:
        if crs is None and frame.crs is not None:
            raise DatasetError("", f"the {what} have a CRS but the raster has none",
                               "georeference the raster (or give the layers the same CRS)")
        return geoms
    return geoms.to_crs(crs.to_wkt())


def buffer_metres(lines: gpd.GeoSeries, buffer_m: float, crs: CRS | None) -> gpd.GeoSeries:
    """Lines (in `crs`) grown by `buffer_m` metres on each side, returned in `crs`.

    Projected CRSs buffer in their own units (converted from metres); geographic ones go through
    the local UTM zone so the width is right at any latitude. Without a CRS units are metres.
    """
    if crs is None:
        return lines.buffer(buffer_m)
    if crs.is_projected:
        _, to_metres = crs.linear_units_factor
        return lines.buffer(buffer_m / to_metres)
    utm = lines.estimate_utm_crs()
    return lines.to_crs(utm).buffer(buffer_m).to_crs(crs.to_wkt())


def rasterise_lines(lines: gpd.GeoDataFrame, shape: tuple[int, int], transform: Affine, crs: CRS | None,
                    buffer_m: float = ROAD_HALF_WIDTH_M) -> np.ndarray:
    """Boolean (H, W) road mask: `lines` (any CRS) buffered by `buffer_m` metres on the raster grid."""
    if buffer_m <= 0:
        raise DatasetError("", f"buffer {buffer_m} m must be positive", "give the road half-width in metres")
    geoms = to_raster_crs(lines, crs, "road lines")
    if geoms.empty:
        return np.zeros(shape, dtype=bool)
    polygons = buffer_metres(geoms, buffer_m, crs)
    burnt = features.rasterize(((g, 1) for g in polygons if g is not None and not g.is_empty), out_shape=shape,
                               transform=transform, fill=0, dtype="uint8")
    return burnt.astype(bool)


def rasterise_areas(areas: gpd.GeoDataFrame, shape: tuple[int, int], transform: Affine,
                    crs: CRS | None) -> np.ndarray:
    """Boolean (H, W): pixels whose centre lies inside any of the polygons."""
    geoms = to_raster_crs(areas, crs, "areas of interest")
    if geoms.empty:
        return np.zeros(shape, dtype=bool)
    return features.rasterize(((g, 1) for g in geoms), out_shape=shape, transform=transform, fill=0,
                              dtype="uint8").astype(bool)


def tile_windows(width: int, height: int, tile: int) -> list[Window]:
    """Near-equal tiles of at most `tile` px covering the raster without overlap."""
    cols = np.linspace(0, width, max(1, math.ceil(width / tile)) + 1).round().astype(int)
    rows = np.linspace(0, height, max(1, math.ceil(height / tile)) + 1).round().astype(int)
    return [Window(c0, r0, c1 - c0, r1 - r0) for r0, r1 in zip(rows[:-1], rows[1:], strict=True)
            for c0, c1 in zip(cols[:-1], cols[1:], strict=True)]


@dataclass
class _Labelled:
    """One raster's labels on its grid."""

    path: Path
    roads: np.ndarray  # bool (H, W)
    labelled: np.ndarray  # bool (H, W): inside the AOI (everything when there is none)
    usable: np.ndarray  # bool (H, W): labelled and with image data (not no-data, not all-white)
    gsd_m: float | None = None  # the grid: the raster's own, or resampled to this pixel size


def _colour_bands(src: rasterio.DatasetReader) -> list[int]:
    return [i + 1 for i, ci in enumerate(src.colorinterp) if ci != ColorInterp.alpha]


def _open(path: Path, gsd_m: float | None = None) -> rasterio.DatasetReader:
    """The raster, or with `gsd_m` a WarpedVRT of it at that pixel size when its own differs by
    more than the engine's tolerance (as `readers.open_raster` resamples it for the model)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(path)
    except RasterioIOError as exc:
        raise DatasetError(path, f"cannot be read ({exc})", "choose a raster GDAL can open") from None
    if gsd_m is None or src.crs is None:
        return src
    gx, gy = pixel_size_m(src.crs, src.transform, src.width, src.height)
    if all(abs(g / gsd_m - 1.0) <= GSD_TOLERANCE for g in (gx, gy)):
        return src
    width, height = max(1, round(src.width * gx / gsd_m)), max(1, round(src.height * gy / gsd_m))
    transform = src.transform * Affine.scale(src.width / width, src.height / height)
    coarser = width * height < src.width * src.height
    log.info("%s: %.3g m pixels resampled to the model's %g m (%d x %d px) for labelling", path.name, gx, gsd_m,
             width, height)
    return WarpedVRT(src, crs=src.crs, transform=transform, width=width, height=height,
                     resampling=Resampling.average if coarser else Resampling.bilinear,
                     add_alpha=src.mask_flag_enums[0] == [MaskFlags.per_dataset])


def _image_valid(src: rasterio.DatasetReader, rows: int = 1024) -> np.ndarray:
    """Pixels with image data, as `training.datasets.read_image` sees them (mask, not all-white)."""
    valid = np.zeros((src.height, src.width), dtype=bool)
    bands = _colour_bands(src)
    for r0 in range(0, src.height, rows):
        win = Window(0, r0, src.width, min(rows, src.height - r0))
        image = src.read(bands, window=win)
        valid[r0:r0 + image.shape[1]] = (src.dataset_mask(window=win) > 0) & ~np.all(image == 255, axis=0)
    return valid


def _label(path: Path, lines: gpd.GeoDataFrame, aoi: gpd.GeoDataFrame | None, buffer_m: float,
           gsd_m: float | None = None) -> _Labelled:
    with _open(path, gsd_m) as src:
        if src.dtypes[0] != "uint8":
            raise DatasetError(path, f"is {src.dtypes[0]}, training reads 8-bit images",
                               "convert it to 8-bit (Raster > Conversion > Translate, output type Byte)")
        shape, transform, crs = (src.height, src.width), src.transform, src.crs
        image_valid = _image_valid(src)
    roads = rasterise_lines(lines, shape, transform, crs, buffer_m)
    labelled = np.ones(shape, dtype=bool) if aoi is None else rasterise_areas(aoi, shape, transform, crs)
    return _Labelled(path, roads, labelled, labelled & image_valid, gsd_m)


def _windows(labels: list[_Labelled], tile: int) -> Iterator[tuple[int, _Labelled, Window]]:
    for i, lab in enumerate(labels):
        h, w = lab.roads.shape
        for win in tile_windows(w, h, tile):
            if lab.usable[win.toslices()].any():
                yield i, lab, win


def _write_tile(lab: _Labelled, win: Window, name: str, out: Path) -> None:
    rows, cols = win.toslices()
    with _open(lab.path, lab.gsd_m) as src:
        bands = _colour_bands(src)
        image = src.read(bands, window=win)
        valid = lab.usable[rows, cols]
        profile = {"driver": "GTiff", "width": int(win.width), "height": int(win.height), "crs": src.crs,
                   "transform": src.window_transform(win), "compress": "deflate"}
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(out / "images" / f"{name}.tif", "w", count=len(bands), dtype="uint8", **profile) as dst:
            dst.write(image)
            dst.write_mask((valid * 255).astype(np.uint8))
    with rasterio.open(out / "masks" / f"{name}.tif", "w", count=1, dtype="uint8", **profile) as dst:
        dst.write((lab.roads[rows, cols] * 255).astype(np.uint8)[None])


def make_label_dataset(rasters: list[str | Path], lines: gpd.GeoDataFrame, out_dir: str | Path,
                       buffer_m: float = ROAD_HALF_WIDTH_M, aoi: gpd.GeoDataFrame | None = None, tile: int = 512,
                       gsd_m: float | None = None) -> Path:
    """Cut `rasters` into labelled training tiles under `out_dir/images` and `out_dir/masks`.

    Args:
        rasters: 8-bit image files GDAL can open (any CRS).
        lines: digitised road centre lines (any CRS; reprojected to each raster's).
        out_dir: the dataset folder to (re)create.
        buffer_m: road half-width in metres.
        aoi: polygons where labelling is complete; None means each raster's whole extent.
        tile: largest tile side in pixels; halved (down to 64) until there are at least 2 tiles,
            so training can hold one back for validation.
        gsd_m: the model's metres per pixel: rasters whose pixel size differs by more than 25 %
            are resampled to it first, so the model trains on the grid the engine feeds it.

    Returns:
        `out_dir`.

    Raises:
        DatasetError: no lines, no line over any raster, an AOI that misses every raster, no road
            inside the labelled area, non-8-bit rasters, or fewer than 2 tiles.
    """
    if not rasters:
        raise DatasetError("", "no raster given", "choose at least one image layer")
    if lines is None or _shapes(lines).empty:
        raise DatasetError("", "the road line layer has no lines", "digitise road centre lines over the images")
    if aoi is not None and _shapes(aoi).empty:
        raise DatasetError("", "the area-of-interest layer has no polygons",
                           "draw polygons where every road is digitised, or leave the AOI out")
    labels = [_label(Path(p), lines, aoi, buffer_m, gsd_m) for p in rasters]
    names = ", ".join(lab.path.name for lab in labels)
    if not any(lab.roads.any() for lab in labels):
        raise DatasetError("", f"none of the {len(_shapes(lines))} road line(s) falls on the raster(s) {names}",
                           "digitise roads over the images, or check the layers' CRS")
    if aoi is not None and not any(lab.labelled.any() for lab in labels):
        raise DatasetError("", f"the area of interest does not overlap the raster(s) {names}",
                           "draw the AOI polygons over the images")
    if not any((lab.roads & lab.labelled).any() for lab in labels):
        raise DatasetError("", "no road line lies inside the area of interest",
                           "digitise the roads inside the AOI polygons")
    if not any((lab.roads & lab.usable).any() for lab in labels):
        raise DatasetError("", f"the road lines only cross no-data (or all-white) parts of {names}",
                           "digitise roads where the images have data")
    for lab in labels:
        if not lab.roads.any():
            log.warning("%s: no road line on this raster; all of it is labelled background", lab.path.name)

    windows = list(_windows(labels, tile))
    while len(windows) < 2 and tile // 2 >= MIN_TILE:
        tile //= 2
        windows = list(_windows(labels, tile))
    if len(windows) < 2:
        raise DatasetError("", f"the labelled area gives {len(windows)} tile(s), training needs 2",
                           "label a larger area (or add a raster)")

    out = Path(out_dir)
    for sub in ("images", "masks"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir(parents=True)
    for i, lab, win in windows:
        _write_tile(lab, win, f"{i:02d}_{lab.path.stem}_{int(win.row_off):05d}_{int(win.col_off):05d}", out)
    log.info("labelled %d tiles (up to %d px) from %d raster(s) into %s", len(windows), tile, len(labels), out)
    return out


def mask_on_grid(path: str | Path, shape: tuple[int, int], transform: Affine, crs: CRS | None) -> np.ndarray:
    """A reference road mask raster (0/1, 0/255 or 0-255 probabilities) resampled onto another grid.

    Road is any value above half the mask's maximum scale (0.5 for 0/1 masks, 127 otherwise).
    """
    from rasterio.warp import Resampling, reproject

    with _open(Path(path)) as src:
        data = src.read(1, masked=True).filled(0)
        road = (data > (0.5 if data.max() <= 1 else 127)).astype(np.uint8)
        if (src.height, src.width) == tuple(shape) and src.transform.almost_equals(transform) and \
                (src.crs == crs or src.crs is None or crs is None):
            return road.astype(bool)
        out = np.zeros(shape, dtype=np.uint8)
        reproject(road, out, src_transform=src.transform, src_crs=src.crs or crs, dst_transform=transform,
                  dst_crs=crs or src.crs, resampling=Resampling.nearest)
    return out.astype(bool)


__all__ = ["buffer_metres", "make_label_dataset", "mask_on_grid", "rasterise_areas", "rasterise_lines",
           "tile_windows", "to_raster_crs"]
