"""Raster readers: the windows of pixels, and their validity, that the engine predicts on.

The engine only talks to the `RasterReader` protocol, so a QGIS data provider can be wrapped
in a reader and passed straight in. `open_raster` gives the rasterio implementation, which
also resamples to the model's ground sampling distance (GSD) when the raster's differs.

A raster placed by ground control points (GCPs) instead of a geotransform is read through a
WarpedVRT that warps it with its GCPs (GDAL's polynomial GCP transformer, bilinear) onto a
north-up grid in the GCPs' CRS, so its output lands where the image is; pixels outside the
image are invalid. GCPs without a CRS, and RPCs without a geotransform, are refused rather than
processed in pixel coordinates.

A raster without any georeferencing is read on its own pixels in the frame QGIS draws it in
(`gsd.IMAGE_FRAME`: x = column, y = -row), so its probability raster and lines overlay it.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import affine
import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from .errors import RasterError
from .gsd import IMAGE_FRAME, mean_gsd_m, pixel_size_m
from .limits import check_raster_size
from .normalise import percentiles

GSD_TOLERANCE = 0.25  # resample when the raster's GSD differs from the model's by more than this
SUPPORTED_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")


@runtime_checkable
class RasterReader(Protocol):
    """Pixels of the grid the engine predicts on.

    Required attributes are below. Optional ones the engine uses when present:
    `alpha_bands` (tuple of 1-based alpha band numbers, never fed to the model), `gsd_m`
    (metres per pixel of the grid, None when unknown), `warnings` (list of strings to report)
    and `read_overview(bands, max_size)` (a decimated read for value statistics).
    """

    width: int
    height: int
    count: int
    crs: CRS | None
    transform: affine.Affine
    dtype: str
    name: str

    def read(self, window: Window, bands: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(C, h, w) raw values and (h, w) bool valid mask; parts outside the raster are invalid."""
        ...


def _is_georeferenced(src: rasterio.DatasetReader) -> bool:
    return src.crs is not None or src.transform != affine.Affine.identity()


class RasterioReader:
    """A `RasterReader` over any file GDAL opens, optionally resampled to a target GSD.

    Args:
        path: raster file (GeoTIFF, VRT, JPEG, PNG, ...).
        gsd_m: the model's metres per pixel; when the raster's differs by more than 25 % on
            either axis, the raster is read through a WarpedVRT on a grid of that GSD, in the
            raster's own CRS and extent. None reads the native grid.
        bands: bands the caller will read; checked against the raster's band count.
        extent: (xmin, ymin, xmax, ymax) in the raster's CRS: read only the pixels it touches.
        native_gsd_m: metres per pixel of a raster without georeferencing (ignored, with a
            warning, for a georeferenced one).

    Raises:
        RasterError: the file is missing, unreadable, or has unsupported bands.
    """

    def __init__(self, path: str | os.PathLike, *, gsd_m: float | None = None, bands: list[int] | None = None,
                 extent: tuple[float, float, float, float] | None = None,
                 native_gsd_m: float | None = None) -> None:
        self.name = str(path)
        self.warnings: list[str] = []
        self._file = self._src = _open_dataset(path)
        self._local_grid = False  # True: a raster without georeferencing placed at `native_gsd_m`
        try:
            self._check(bands)
            self._src = self._placed_by_gcps()
            src_transform, gsd = self._source_grid(native_gsd_m)
            self._ds = self._target(src_transform, gsd, gsd_m, extent)
        except BaseException:
            self._close_sources()
            raise
        self.width, self.height, self.count = self._ds.width, self._ds.height, self._src.count
        self.crs = self._src.crs
        self.transform = self._ds.transform if self._ds is not self._src else src_transform
        self.dtype = self._src.dtypes[0]
        self.alpha_bands = tuple(i for i, ci in enumerate(self._src.colorinterp, 1) if ci == ColorInterp.alpha)
        self.nodata = self._src.nodata
        self.gsd_m = mean_gsd_m(self.crs, self.transform, self.width, self.height)
        if self.gsd_m is None and self._local_grid:
            self.gsd_m = abs(self.transform.a)  # local grid in metres (see `_source_grid`)

    def _placed_by_gcps(self) -> rasterio.io.DatasetReaderBase:
        """The file, or for a raster placed by GCPs only a WarpedVRT of it on a north-up grid.

        Raises:
            RasterError: GCPs without a CRS, RPCs only, or GCPs GDAL cannot warp with.
        """
        src = self._file
        if _is_georeferenced(src):
            return src
        gcps, gcp_crs = src.gcps
        if not gcps:
            if src.rpcs:
                raise RasterError(self.name, "the raster is placed by RPCs only (a satellite scene that is not "
                                  "orthorectified)", "orthorectify it first, e.g. gdalwarp -rpc -t_srs EPSG:<code>")
            return src
        if gcp_crs is None:
            raise RasterError(self.name, f"the raster has {len(gcps)} ground control points but no CRS for them",
                              "set their CRS (gdal_translate -a_srs EPSG:<code>) or warp it with gdalwarp")
        alpha = any(ci == ColorInterp.alpha for ci in src.colorinterp)
        try:
            vrt = WarpedVRT(src, src_crs=gcp_crs, crs=gcp_crs, resampling=Resampling.bilinear,
                            add_alpha=not alpha)
        except RasterioError as exc:
            raise RasterError(self.name, f"cannot warp the raster with its {len(gcps)} ground control points "
                              f"({str(exc).splitlines()[0][:100]})", "warp it with gdalwarp first") from None
        self.warnings.append(f"{self.name}: placed by {len(gcps)} ground control points; warped to a north-up "
                             f"grid in {gcp_crs} ({vrt.width} x {vrt.height} px) and the output is on that grid")
        return vrt

    def _source_grid(self, native_gsd_m: float | None) -> tuple[affine.Affine, tuple[float, float] | None]:
        """The raster's transform and its metres per pixel (x, y); None when unknown.

        A raster without georeferencing whose pixel size the user gave is placed on a local grid
        in metres from its top-left corner (y up), so it is resampled to the model's GSD like a
        georeferenced one and its lines measure true lengths.
        """
        src = self._src
        if native_gsd_m and not _is_georeferenced(src):
            self.warnings.append(f"{self.name}: no georeferencing; read as {native_gsd_m:g} m pixels and the "
                                 "output is in metres from the image's top-left corner (y up)")
            self._local_grid = True
            return affine.Affine(native_gsd_m, 0.0, 0.0, 0.0, -native_gsd_m, 0.0), (native_gsd_m, native_gsd_m)
        if native_gsd_m:
            self.warnings.append(f"{self.name}: the raster is georeferenced; the pixel size given "
                                 f"({native_gsd_m:g} m) is ignored")
        self._note_georeferencing()
        if not _is_georeferenced(src):
            return affine.Affine(*IMAGE_FRAME), None
        # Without a CRS the ground size is unknown: never resample.
        gsd = pixel_size_m(src.crs, src.transform, src.width, src.height) if src.crs is not None else None
        return src.transform, gsd

    def _target(self, src_transform: affine.Affine, gsd: tuple[float, float] | None, gsd_m: float | None,
                extent: tuple[float, float, float, float] | None) -> rasterio.io.DatasetReaderBase:
        """The dataset the engine reads: the raster itself, or a WarpedVRT cropped to `extent` and/or
        resampled to `gsd_m` when the raster's GSD differs by more than 25 %."""
        src = self._src
        c0, r0, c1, r1 = self._pixel_window(src_transform, extent)
        fx = fy = 1.0
        if gsd and gsd_m and any(abs(g / gsd_m - 1.0) > GSD_TOLERANCE for g in gsd):
            fx, fy = gsd[0] / gsd_m, gsd[1] / gsd_m
        if not (math.isfinite(fx) and math.isfinite(fy)):
            raise RasterError(self.name, f"pixel size {gsd} m cannot be resampled", "give a finite pixel size")
        width, height = max(1, round((c1 - c0) * fx)), max(1, round((r1 - r0) * fy))
        how = f"resampled from {gsd[0]:.3g} m to the model's {gsd_m:g} m pixels, " if gsd and (fx, fy) != (1, 1) else ""
        check_raster_size(self.name, width, height, how)  # before GDAL is asked for such a grid
        if (c0, r0, c1, r1) == (0, 0, src.width, src.height) and (fx, fy) == (1.0, 1.0) \
                and not self._local_grid:
            return src
        transform = src_transform * affine.Affine.translation(c0, r0) * affine.Affine.scale(
            (c1 - c0) / width, (r1 - r0) / height)
        coarser = width * height < (c1 - c0) * (r1 - r0)
        if (fx, fy) != (1.0, 1.0) and gsd is not None:
            self.warnings.append(f"{self.name}: ground sampling distance {gsd[0]:.3g} x {gsd[1]:.3g} m differs "
                                 f"from the model's {gsd_m:g} m; resampled to {width} x {height} px and the output "
                                 "is written on that grid")
            resampling = Resampling.average if coarser else Resampling.bilinear
        else:
            resampling = Resampling.nearest  # a crop on the raster's own pixels: exact values
        masked_by_file = src.mask_flag_enums[0] == [MaskFlags.per_dataset]
        own = src_transform == src.transform  # else a local grid or the image frame of a plain image
        return WarpedVRT(src, src_transform=None if own else src_transform, crs=src.crs, transform=transform,
                         width=width, height=height, resampling=resampling, add_alpha=masked_by_file)

    def _pixel_window(self, transform: affine.Affine,
                      extent: tuple[float, float, float, float] | None) -> tuple[int, int, int, int]:
        """(col0, row0, col1, row1) of the raster's pixels that `extent` (map units) touches."""
        src = self._src
        if extent is None:
            return 0, 0, src.width, src.height
        xmin, ymin, xmax, ymax = extent
        inverse = ~transform
        cols, rows = zip(*(inverse * (x, y) for x in (xmin, xmax) for y in (ymin, ymax)), strict=True)
        c0, c1 = max(0, math.floor(min(cols) + 1e-9)), min(src.width, math.ceil(max(cols) - 1e-9))
        r0, r1 = max(0, math.floor(min(rows) + 1e-9)), min(src.height, math.ceil(max(rows) - 1e-9))
        if c1 <= c0 or r1 <= r0:
            left, top = transform * (0, 0)
            right, bottom = transform * (src.width, src.height)
            raise RasterError(self.name, f"the extent {xmin:g},{ymin:g},{xmax:g},{ymax:g} does not overlap the "
                              f"raster ({min(left, right):g},{min(top, bottom):g},{max(left, right):g},"
                              f"{max(top, bottom):g})", "give an extent inside the raster, in its CRS")
        return c0, r0, c1, r1

    def _check(self, bands: list[int] | None) -> None:
        if self._src.dtypes[0] not in SUPPORTED_DTYPES or len(set(self._src.dtypes)) > 1:
            raise RasterError(self.name, f"unsupported band data type {'/'.join(sorted(set(self._src.dtypes)))}",
                              f"convert the raster to one of {', '.join(SUPPORTED_DTYPES)}")
        bad = [b for b in bands or [] if not 1 <= b <= self._src.count]
        if bad:
            raise RasterError(self.name, f"band {bad[0]} does not exist (the raster has {self._src.count})",
                              f"pass band numbers between 1 and {self._src.count}")

    def _note_georeferencing(self) -> None:
        if not _is_georeferenced(self._src):
            self.warnings.append(f"{self.name}: no georeferencing; processed at native resolution and the "
                                 "output is in pixel coordinates as QGIS draws the image (x = column, y = -row)")
        elif self._src.crs is None:
            self.warnings.append(f"{self.name}: no coordinate reference system; processed at native "
                                 "resolution and the output has none either")

    def _mask_kind(self, bands: list[int]) -> str:
        flags = [self._ds.mask_flag_enums[b - 1] for b in bands]
        if all(f == [MaskFlags.all_valid] for f in flags):
            return "all_valid"
        if MaskFlags.nodata in flags[0] and self._ds.nodata is not None:
            return "nodata"
        return "mask"

    def _read(self, bands: list[int], window: Window | None = None,
              out_shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        kw = {"window": window}
        if out_shape is not None:
            kw.update(out_shape=out_shape, resampling=Resampling.nearest)
        try:
            data = self._ds.read(bands, **kw)
            kind = self._mask_kind(bands)
            if kind == "all_valid":
                valid = np.ones(data.shape[1:], dtype=bool)
            elif kind == "nodata":
                nodata = self._ds.nodata
                valid = (~np.isnan(data) if math.isnan(nodata) else data != nodata).any(axis=0)
            else:
                valid = self._ds.read_masks(bands[0], **kw) > 0
        except RasterioError as exc:
            raise RasterError(self.name, f"reading failed ({gdal_reason(exc)})",
                              "the file may be truncated or damaged; copy or export it again") from None
        return data, valid

    def read(self, window: Window, bands: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(C, h, w) raw values and (h, w) valid mask; outside the raster: zeros, invalid."""
        row, col = int(window.row_off), int(window.col_off)
        h, w = int(window.height), int(window.width)
        if row >= 0 and col >= 0 and row + h <= self.height and col + w <= self.width:
            return self._read(bands, Window(col, row, w, h))
        data = np.zeros((len(bands), h, w), dtype=self.dtype)
        valid = np.zeros((h, w), dtype=bool)
        r0, r1 = max(row, 0), min(row + h, self.height)
        c0, c1 = max(col, 0), min(col + w, self.width)
        if r1 > r0 and c1 > c0:
            part, ok = self._read(bands, Window(c0, r0, c1 - c0, r1 - r0))
            data[:, r0 - row:r1 - row, c0 - col:c1 - col] = part
            valid[r0 - row:r1 - row, c0 - col:c1 - col] = ok
        return data, valid

    def read_overview(self, bands: list[int], max_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """A decimated read of the whole raster (GDAL uses overviews when the file has them)."""
        scale = max(self.width, self.height) / max_size
        if scale <= 1:
            return self._read(bands)
        shape = (max(1, round(self.height / scale)), max(1, round(self.width / scale)))
        return self._read(bands, out_shape=shape)

    def close(self) -> None:
        if self._ds is not self._src:
            self._ds.close()
        self._close_sources()

    def _close_sources(self) -> None:
        if self._src is not self._file:
            self._src.close()
        self._file.close()

    def __enter__(self) -> RasterioReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def gdal_reason(exc: BaseException) -> str:
    """The first line of the GDAL message behind a rasterio error (which may only say "Read
    failed. See previous exception for details.")."""
    reason = exc
    while "previous exception" in str(reason) and (behind := reason.__cause__ or reason.__context__) is not None:
        reason = behind
    return (str(reason).strip().splitlines() or [type(reason).__name__])[0][:120]


STRICT_READ = {"GDAL_PNG_WHOLE_IMAGE_OPTIM": "NO"}


def strict_reading() -> None:
    """Make GDAL report damaged files instead of inventing pixels, for every thread from now on.

    GDAL's whole-image fast path for PNG returns made-up rows for a truncated file without an
    error; row by row decoding raises one. Set as environment variables (GDAL reads them as
    configuration), because the engine reads in its own thread, which `rasterio.Env` does not
    reach. A value the user set is kept.
    """
    for key, value in STRICT_READ.items():
        os.environ.setdefault(key, value)


def _open_dataset(path: str | os.PathLike) -> rasterio.DatasetReader:
    """Open any GDAL dataset name (files, /vsi paths, GPKG:file:table, ...)."""
    strict_reading()
    try:
        src = rasterio.open(path)
    except RasterioError as exc:
        if not Path(path).exists():
            raise RasterError(path, "raster file not found", "check the path") from None
        first = str(exc).splitlines()[0][:100]
        raise RasterError(path, f"not a raster GDAL can read ({first})",
                          "pass a GeoTIFF, VRT, JPEG or PNG file") from None
    if src.count == 0:
        src.close()
        raise RasterError(path, "raster has no bands", "pass an image with at least one band")
    return src


def open_raster(path: str | os.PathLike, *, gsd_m: float | None = None, bands: list[int] | None = None,
                extent: tuple[float, float, float, float] | None = None,
                native_gsd_m: float | None = None) -> RasterioReader:
    """Open a raster for the engine; see `RasterioReader` (crop, resampling, band checks, errors)."""
    return RasterioReader(path, gsd_m=gsd_m, bands=bands, extent=extent, native_gsd_m=native_gsd_m)


def choose_bands(reader: RasterReader, n_model: int, bands: list[int] | None = None) -> list[int]:
    """The 1-based bands to feed a model taking `n_model` bands.

    Default: the first `n_model` bands that are not alpha. Explicit `bands` must exist and
    match the model's band count.

    Raises:
        RasterError: too few bands, or `bands` invalid.
    """
    if bands:
        bad = [b for b in bands if not 1 <= b <= reader.count]
        if bad:
            raise RasterError(reader.name, f"band {bad[0]} does not exist (the raster has {reader.count})",
                              f"pass band numbers between 1 and {reader.count}")
        if len(bands) != n_model:
            raise RasterError(reader.name, f"{len(bands)} band(s) chosen but the model takes {n_model}",
                              f"pass exactly {n_model} band numbers, e.g. --bands "
                              + ",".join(map(str, range(1, n_model + 1))))
        return list(bands)
    alpha = set(getattr(reader, "alpha_bands", ()))
    image_bands = [b for b in range(1, reader.count + 1) if b not in alpha]
    if len(image_bands) < n_model:
        raise RasterError(reader.name, f"raster has {len(image_bands)} image band(s) but the model needs {n_model}",
                          f"use a {n_model}-band image (e.g. RGB) or a model trained on {len(image_bands)} band(s)")
    return image_bands[:n_model]


class ColumnView:
    """Columns c0:c1 of a reader, as a reader (for `read_rows`, which reads whole rows)."""

    def __init__(self, reader: RasterReader, c0: int, c1: int) -> None:
        self.reader, self.c0, self.width = reader, c0, c1 - c0

    def read(self, window: Window, bands: list[int]) -> tuple[np.ndarray, np.ndarray]:
        return self.reader.read(Window(window.col_off + self.c0, window.row_off, window.width, window.height), bands)


def read_rows(reader: RasterReader | ColumnView, first: int, stop: int,
              bands: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Raw values (C, rows, width) and valid mask of full raster rows [first, stop).

    Besides the reader's own mask, all-white uint8 pixels (every band 255) and non-finite
    values are invalid.
    """
    data, valid = reader.read(Window(0, first, reader.width, stop - first), bands)
    if data.dtype == np.uint8:
        white = data[0] == 255
        for band in data[1:]:
            white &= band == 255
        valid &= ~white
    elif data.dtype.kind == "f":
        for band in data:
            valid &= np.isfinite(band)
    return data, valid


def _sample_windows(reader: RasterReader, bands: list[int], grid: int = 8,
                    size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A grid of small windows spread over the raster, for readers without overviews."""
    rows = np.linspace(0, max(reader.height - size, 0), grid).astype(int)
    cols = np.linspace(0, max(reader.width - size, 0), grid).astype(int)
    parts = [reader.read(Window(int(c), int(r), size, size), bands) for r in np.unique(rows) for c in np.unique(cols)]
    return np.concatenate([p[0] for p in parts], axis=2), np.concatenate([p[1] for p in parts], axis=1)


def band_stretch(reader: RasterReader, bands: list[int], low: float = 2.0,
                 high: float = 98.0) -> np.ndarray:
    """Per-band (low, high) percentiles of the valid pixels, from a decimated read.

    Returns:
        (C, 2) float32 array; a band with no spread gets high = low + 1.
    """
    overview = getattr(reader, "read_overview", None)
    data, valid = overview(bands) if overview is not None else _sample_windows(reader, bands)
    limits = np.zeros((len(bands), 2), dtype=np.float32)
    for i, band in enumerate(data):
        lo, hi = percentiles(band[valid & np.isfinite(band)] if band.dtype.kind == "f" else band[valid], low, high)
        limits[i] = (lo, hi if hi > lo else lo + 1.0)
    return limits
