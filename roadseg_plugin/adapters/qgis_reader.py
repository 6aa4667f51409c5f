"""Any QGIS raster layer as input to the engine: a file path when rasterio can read it directly,
otherwise a `ProviderReader` that reads through the layer's data provider.

`ProviderReader` implements the core's `RasterReader` protocol (`width`, `height`, `count`,
`crs`, `transform`, `dtype`, `name`, `read(window, bands) -> (values, valid)`), so VRTs with
options, GeoPackage rasters, `/vsimem/` rasters, WMS/XYZ layers and anything else QGIS can draw
work with the same engine as GeoTIFFs. It reads at the model's resolution over a chosen extent,
keeps the layer CRS, and marks no-data (the provider's source and user no-data values, an alpha
band or channel, NaN), pixels outside the layer extent and pixels outside the areas of interest
(polygons, as Deepness offers them) as invalid.

A web map (XYZ, WMS, WMTS: tiles from a map service) has no pixel grid or extent of its own:
its "whole extent" is the world. It is refused without an extent or areas of interest, before
any work, with a message saying what to choose (`is_web_map`).

numpy and rasterio are imported lazily so the plugin loads when dependencies are missing.
"""
from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

from qgis.core import (
    Qgis,
    QgsCoordinateReferenceSystem,
    QgsGeometry,
    QgsProviderRegistry,
    QgsRaster,
    QgsRasterDataProvider,
    QgsRasterLayer,
    QgsRectangle,
)

from ..core.gsd import mean_gsd_m, metres_to_crs_units  # math only: safe without the dependencies

if TYPE_CHECKING:
    import numpy as np

_NUMPY_TYPES = {
    Qgis.DataType.Byte: "uint8",
    Qgis.DataType.UInt16: "uint16",
    Qgis.DataType.Int16: "int16",
    Qgis.DataType.UInt32: "uint32",
    Qgis.DataType.Int32: "int32",
    Qgis.DataType.Float32: "float32",
    Qgis.DataType.Float64: "float64",
}
_COLOUR_TYPES = (Qgis.DataType.ARGB32, Qgis.DataType.ARGB32_Premultiplied)  # web maps: one 0xAARRGGBB band


def crs_string(crs: QgsCoordinateReferenceSystem) -> str | None:
    """A CRS string rasterio, pyproj and geopandas accept: the EPSG code when there is one, else WKT."""
    if not crs.isValid():
        return None
    if crs.authid().upper().startswith("EPSG:"):
        return crs.authid()
    return crs.toWkt(QgsCoordinateReferenceSystem.WKT_PREFERRED)


def local_file(layer: QgsRasterLayer) -> str | None:
    """The path of a layer that is a plain local file GDAL opens as it is, else None.

    Layers with sub-datasets, open options, `/vsi...` paths, or no-data values set in QGIS
    (which a file reader would not know about) are not plain files.
    """
    if layer.providerType() != "gdal":
        return None
    parts = QgsProviderRegistry.instance().decodeUri("gdal", layer.source())
    path = parts.get("path") or ""
    if not path or parts.get("layerName") or parts.get("openOptions") or not os.path.isfile(path):
        return None
    provider = layer.dataProvider()
    for band in range(1, provider.bandCount() + 1):
        if provider.userNoDataValues(band) or (provider.sourceHasNoDataValue(band)
                                               and not provider.useSourceNoDataValue(band)):
            return None
    return path


def is_web_map(layer: QgsRasterLayer) -> bool:
    """Whether `layer` is drawn from a map service's tiles (XYZ, WMS, WMTS): no pixel size of its own."""
    provider = layer.dataProvider() if layer is not None else None
    if provider is None:
        return False
    return not (provider.capabilities() & QgsRasterDataProvider.Size) or provider.xSize() <= 0


WEB_MAP_FIX = ('choose the area to process: the current map view ("Current map view", or the map canvas extent), '
               "an extent drawn on the map, or polygons of areas of interest")


def raster_source(layer: QgsRasterLayer, extent: QgsRectangle | None = None,
                  gsd_m: float | None = None, aoi: QgsGeometry | None = None) -> str | ProviderReader:
    """What to hand to `core.engine.segment_raster` for `layer`.

    Args:
        layer: any valid raster layer.
        extent: the area to process, in the layer's CRS; None means the whole layer.
        gsd_m: the model's ground sampling distance in metres; None means the layer's own resolution.
        aoi: areas of interest (polygons in the layer's CRS): only their pixels are processed.

    Returns:
        The file path for a plain local file, no extent and no areas, otherwise a `ProviderReader`.

    Raises:
        RasterError: the layer is invalid, the extent misses it, its resolution is unknown, or
            it is a web map without an extent or areas of interest.
    """
    path = local_file(layer)
    if path is not None and (extent is None or extent.isNull()) and aoi is None:
        return path
    return ProviderReader(layer, extent, gsd_m, aoi)


class ProviderReader:
    """Reads a raster layer's data provider on a regular grid (the RasterReader protocol).

    The grid covers `extent` (clipped to the layer) at `gsd_m` metres per pixel; when that is
    the layer's own resolution the grid is snapped to the layer's pixels, so nothing is resampled.
    The provider is cloned, so a reader made on the main thread may be used from a task thread.
    """

    def __init__(self, layer: QgsRasterLayer, extent: QgsRectangle | None = None,
                 gsd_m: float | None = None, aoi: QgsGeometry | None = None) -> None:
        from rasterio.crs import CRS
        from rasterio.transform import Affine

        from ..core.errors import RasterError

        if layer is None or not layer.isValid() or layer.dataProvider() is None:
            raise RasterError(getattr(layer, "source", lambda: "")(), "the raster layer is not valid",
                              "check that its file or service is reachable")
        provider: QgsRasterDataProvider = layer.dataProvider()
        self._provider = provider.clone() or provider
        self._prepare_resampling()
        self.name = layer.name() or layer.source()
        self._layer_extent = QgsRectangle(layer.extent())
        qcrs = layer.crs()
        self.crs = CRS.from_user_input(crs_string(qcrs)) if qcrs.isValid() else None

        area = QgsRectangle(self._layer_extent)
        if (extent is None or extent.isNull()) and aoi is None and is_web_map(layer):
            raise RasterError(self.name, "a web map layer (tiles from a map service) has no extent of its own: "
                              "its whole extent is the whole world", WEB_MAP_FIX)
        self._aoi = None
        if aoi is not None:  # the areas' pixels only, within their bounding box
            import shapely

            self._aoi = shapely.from_wkb(bytes(aoi.asWkb()))
            shapely.prepare(self._aoi)  # many point-in-polygon tests per window
            extent = aoi.boundingBox() if extent is None or extent.isNull() else extent.intersect(aoi.boundingBox())
        if extent is not None and not extent.isNull():
            area = self._layer_extent.intersect(extent)
            if area.isEmpty():
                raise RasterError(self.name, f"the extent {extent.toString(2)} does not overlap the layer "
                                  f"({self._layer_extent.toString(2)})", "choose an extent over the raster")
        res_x, res_y = self._resolution(layer, qcrs, area, gsd_m)
        native = self._native_resolution(layer)
        if native and abs(res_x / native[0] - 1) < 1e-3 and abs(res_y / native[1] - 1) < 1e-3:
            res_x, res_y = native
            area = self._snap(area, res_x, res_y)
        self.width = max(1, round(area.width() / res_x))
        self.height = max(1, round(area.height() / res_y))
        from ..core.probability_raster import check_size

        check_size(self.width, self.height, self.name)  # before any work: a continent at 1 m is too much
        self.transform = Affine(res_x, 0.0, area.xMinimum(), 0.0, -res_y, area.yMaximum())
        self.warnings: list[str] = []
        self.gsd_m: float | None = None  # metres per pixel of the grid (optional RasterReader attribute)
        if self.crs is not None:
            self.gsd_m = mean_gsd_m(self.crs, self.transform, self.width, self.height)
        else:
            self.warnings.append(f"{self.name}: the layer has no CRS; read at its own resolution")

        provider = self._provider
        self._colour = provider.bandCount() >= 1 and provider.dataType(1) in _COLOUR_TYPES
        self.alpha_bands: tuple[int, ...] = ()  # optional RasterReader attribute: never fed to the model
        if self._colour:
            self.count, self.dtype, self._alpha = 3, "uint8", None
        else:
            alpha = [b for b in range(1, provider.bandCount() + 1)
                     if provider.colorInterpretation(b) == QgsRaster.AlphaBand]
            self._alpha = alpha[0] if alpha else None
            self.alpha_bands = tuple(alpha)
            self.count = provider.bandCount()
            kinds = {_NUMPY_TYPES.get(provider.dataType(b)) for b in range(1, self.count + 1)}
            if None in kinds:
                raise RasterError(self.name, "has a band type RoadSeg cannot read",
                                  "convert the raster to 8/16-bit integers or floats")
            import numpy as np

            self.dtype = str(np.result_type(*kinds))

    # ---- grid ------------------------------------------------------------------------------
    def _prepare_resampling(self) -> None:
        """Average when reading coarser than the source, bilinear when finer (QGIS >= 3.16 providers)."""
        p = self._provider
        try:
            if p.providerCapabilities() & QgsRasterDataProvider.ProviderHintCanPerformProviderResampling:
                p.setZoomedOutResamplingMethod(QgsRasterDataProvider.ResamplingMethod.Average)
                p.setZoomedInResamplingMethod(QgsRasterDataProvider.ResamplingMethod.Bilinear)
                p.enableProviderResampling(True)
        except AttributeError:  # an older or unusual provider: nearest neighbour is still correct
            pass

    @staticmethod
    def _native_resolution(layer: QgsRasterLayer) -> tuple[float, float] | None:
        provider = layer.dataProvider()
        if not provider.capabilities() & QgsRasterDataProvider.Size or provider.xSize() <= 0:
            return None
        return abs(layer.rasterUnitsPerPixelX()), abs(layer.rasterUnitsPerPixelY())

    def _resolution(self, layer: QgsRasterLayer, crs: QgsCoordinateReferenceSystem, area: QgsRectangle,
                    gsd_m: float | None) -> tuple[float, float]:
        from ..core.errors import RasterError

        native = self._native_resolution(layer)
        if gsd_m is None or gsd_m <= 0 or not crs.isValid():
            if native is None:
                raise RasterError(self.name, "the layer has no pixel size of its own (a web map?)",
                                  "give the resolution to read it at (the model's gsd_m)")
            return native
        centre = area.center()  # ground metres -> layer units there (degrees, a projection's scale factor)
        return metres_to_crs_units(self.crs, gsd_m, centre.y(), centre.x())

    def _snap(self, area: QgsRectangle, res_x: float, res_y: float) -> QgsRectangle:
        """Grow `area` outwards onto the layer's pixel edges."""
        le = self._layer_extent
        x0 = le.xMinimum() + math.floor((area.xMinimum() - le.xMinimum()) / res_x + 1e-6) * res_x
        x1 = le.xMinimum() + math.ceil((area.xMaximum() - le.xMinimum()) / res_x - 1e-6) * res_x
        y1 = le.yMaximum() - math.floor((le.yMaximum() - area.yMaximum()) / res_y + 1e-6) * res_y
        y0 = le.yMaximum() - math.ceil((le.yMaximum() - area.yMinimum()) / res_y - 1e-6) * res_y
        return QgsRectangle(x0, y0, x1, y1)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) of the grid in the layer CRS."""
        t = self.transform
        return t.c, t.f + t.e * self.height, t.c + t.a * self.width, t.f

    # ---- reading ---------------------------------------------------------------------------
    def read(self, window: Any, bands: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Raw values (len(bands), h, w) in `self.dtype` and a (h, w) valid mask for a grid window.

        The window may reach outside the grid (boundless read); those pixels are invalid.
        """
        import numpy as np

        row, col = int(window.row_off), int(window.col_off)
        h, w = int(window.height), int(window.width)
        values = np.zeros((len(bands), h, w), dtype=self.dtype)
        inside = self._inside(row, col, h, w)
        if not inside.any():
            return values, inside
        t = self.transform
        x0, y1 = t.c + col * t.a, t.f + row * t.e
        rect = QgsRectangle(x0, y1 + h * t.e, x0 + w * t.a, y1)
        if self._colour:
            rgb, valid = self._read_colour(rect, w, h)
            for i, band in enumerate(bands):
                self._check_band(band)
                values[i] = rgb[band - 1]
        else:
            nodata = np.ones((h, w), dtype=bool)
            for i, band in enumerate(bands):
                self._check_band(band)
                data, band_nodata = self._read_band(band, rect, w, h)
                values[i] = data
                nodata &= band_nodata  # like GDAL's dataset mask: invalid where every band is no-data
            valid = ~nodata if bands else np.ones((h, w), dtype=bool)
            if self._alpha is not None:
                valid &= self._read_band(self._alpha, rect, w, h)[0] > 0
        if self._aoi is not None:
            valid &= self._in_aoi(row, col, h, w)
        return values, valid & inside

    def _in_aoi(self, row: int, col: int, h: int, w: int) -> np.ndarray:
        """Pixels whose centres lie in the areas of interest."""
        import numpy as np
        import shapely

        t = self.transform
        xs, ys = np.meshgrid(t.c + (np.arange(col, col + w) + 0.5) * t.a, t.f + (np.arange(row, row + h) + 0.5) * t.e)
        return shapely.contains_xy(self._aoi, xs, ys)

    def _check_band(self, band: int) -> None:
        if not 1 <= band <= self.count:
            from ..core.errors import RasterError

            raise RasterError(self.name, f"has no band {band} (it has {self.count})",
                              "choose bands that exist in the layer")

    def _inside(self, row: int, col: int, h: int, w: int) -> np.ndarray:
        """Pixels whose centres lie on the grid and inside the layer extent."""
        import numpy as np

        t, le = self.transform, self._layer_extent
        rows, cols = np.arange(row, row + h), np.arange(col, col + w)
        xs, ys = t.c + (cols + 0.5) * t.a, t.f + (rows + 0.5) * t.e
        ok_x = (cols >= 0) & (cols < self.width) & (xs >= le.xMinimum()) & (xs <= le.xMaximum())
        ok_y = (rows >= 0) & (rows < self.height) & (ys >= le.yMinimum()) & (ys <= le.yMaximum())
        return ok_y[:, None] & ok_x[None, :]

    def _block(self, band: int, rect: QgsRectangle, w: int, h: int) -> Any:
        from ..core.errors import RasterError

        block = self._provider.block(band, rect, w, h)
        if block is None or not block.isValid() or block.width() != w or block.height() != h:
            raise RasterError(self.name, f"reading band {band} over {rect.toString(2)} failed",
                              "check that the layer's file or service is reachable")
        return block

    def _read_band(self, band: int, rect: QgsRectangle, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
        """One band's values and its no-data mask, from the block's bytes (not per-pixel isNoData)."""
        import numpy as np

        block = self._block(band, rect, w, h)
        kind = _NUMPY_TYPES.get(block.dataType())
        if kind is None:
            from ..core.errors import RasterError

            raise RasterError(self.name, f"band {band} has an unsupported data type", "convert the raster")
        data = np.frombuffer(bytes(block.data()), dtype=kind).reshape(h, w)
        nodata = np.zeros((h, w), dtype=bool)
        if data.dtype.kind == "f":
            nodata |= np.isnan(data)
        provider = self._provider
        if provider.sourceHasNoDataValue(band) and provider.useSourceNoDataValue(band):
            value = provider.sourceNoDataValue(band)
            nodata |= np.isnan(data) if math.isnan(value) else data == value
        if block.hasNoDataValue():  # the value the provider filled outside its extent with
            value = block.noDataValue()
            if not math.isnan(value):
                nodata |= data == value
        for rng in provider.userNoDataValues(band):
            nodata |= self._in_range(data, rng)
        return data, nodata

    @staticmethod
    def _in_range(data: np.ndarray, rng: Any) -> np.ndarray:
        lo, hi, bounds = rng.min(), rng.max(), rng.bounds()
        lower = data > lo if bounds in (rng.Exclusive, rng.IncludeMax) else data >= lo
        upper = data < hi if bounds in (rng.Exclusive, rng.IncludeMin) else data <= hi
        if math.isnan(lo):
            lower = np.ones_like(lower)
        if math.isnan(hi):
            upper = np.ones_like(upper)
        return lower & upper

    def _read_colour(self, rect: QgsRectangle, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
        """RGB (3, h, w) uint8 and valid (alpha > 0) from a web-map style 0xAARRGGBB band."""
        import numpy as np

        block = self._block(1, rect, w, h)
        bgra = np.frombuffer(bytes(block.data()), dtype=np.uint8).reshape(h, w, 4)  # little-endian ARGB32
        rgb = bgra[..., 2::-1].transpose(2, 0, 1).astype(np.float32)
        alpha = bgra[..., 3]
        if block.dataType() == Qgis.DataType.ARGB32_Premultiplied:
            scale = np.where(alpha > 0, 255.0 / np.maximum(alpha, 1), 0.0).astype(np.float32)
            rgb = rgb * scale
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8), alpha > 0

    def __repr__(self) -> str:
        return (f"ProviderReader({self.name!r}, {self.width}x{self.height}, {self.count} band(s) {self.dtype}, "
                f"res={self.transform.a:g}, crs={self.crs})")


def materialise(reader: ProviderReader, path: str | os.PathLike, rows_per_block: int = 512) -> str:
    """Write `reader` to a GeoTIFF (values + per-dataset mask), block by block; returns the path.

    For the algorithms whose core functions take a file (vectorising a mask, training tiles).
    """
    import rasterio
    from rasterio.windows import Window

    profile = {"driver": "GTiff", "width": reader.width, "height": reader.height, "count": reader.count,
               "dtype": reader.dtype, "crs": reader.crs, "transform": reader.transform,
               "compress": "deflate", "tiled": True}
    bands = list(range(1, reader.count + 1))
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        for row in range(0, reader.height, rows_per_block):
            window = Window(0, row, reader.width, min(rows_per_block, reader.height - row))
            values, valid = reader.read(window, bands)
            dst.write(values, window=window)
            dst.write_mask((valid * 255).astype("uint8"), window=window)
    return str(path)


__all__ = ["ProviderReader", "crs_string", "is_web_map", "local_file", "materialise", "raster_source"]
