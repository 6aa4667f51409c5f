"""roadseg_plugin.adapters.qgis_reader: any raster layer through its data provider, on real QGIS layers."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from osgeo import gdal
from rasterio.windows import Window

from roadseg_plugin.core.readers import RasterReader, open_raster
from tests.rasters import write_raster

X0, Y0 = 330000.0, 4690000.0


def write(path: Path, data: np.ndarray, crs: str | None = "EPSG:32619", res: float = 1.0,
          origin: tuple[float, float] = (X0, Y0), **kw) -> Path:
    return write_raster(path, data, crs=crs, transform=Affine(res, 0, origin[0], 0, -res, origin[1]), **kw)


@pytest.fixture
def rgb(tmp_path: Path) -> tuple[Path, np.ndarray]:
    data = np.random.default_rng(0).integers(1, 250, (3, 100, 120), dtype=np.uint8)
    data[:, :10, :10] = 0  # no-data corner
    return write(tmp_path / "rgb.tif", data, nodata=0), data


def layer(source: str, provider: str = "gdal"):
    from qgis.core import QgsRasterLayer

    lyr = QgsRasterLayer(source, Path(source).name[:20] or "layer", provider)
    assert lyr.isValid(), source
    return lyr


def full(reader) -> tuple[np.ndarray, np.ndarray]:
    return reader.read(Window(0, 0, reader.width, reader.height), list(range(1, reader.count + 1)))


def test_plain_file_without_extent_is_its_path(qgis_app, rgb) -> None:
    from roadseg_plugin.adapters.qgis_reader import raster_source

    path, _ = rgb
    assert raster_source(layer(str(path))) == str(path)


def test_provider_reader_matches_the_file_and_its_nodata(qgis_app, rgb) -> None:
    from roadseg_plugin.adapters.qgis_reader import ProviderReader

    path, data = rgb
    reader = ProviderReader(layer(str(path)))
    assert isinstance(reader, RasterReader)
    assert (reader.width, reader.height, reader.count, reader.dtype) == (120, 100, 3, "uint8")
    assert reader.crs == rasterio.crs.CRS.from_epsg(32619)
    assert reader.transform == Affine(1, 0, X0, 0, -1, Y0)
    values, valid = full(reader)
    assert np.array_equal(values, data)
    with open_raster(path) as ref:  # the core's own reader agrees on validity
        assert np.array_equal(valid, full(ref)[1])
    assert valid.sum() == 120 * 100 - 100


def test_extent_gives_a_snapped_window_and_boundless_reads_are_invalid(qgis_app, rgb) -> None:
    from qgis.core import QgsRectangle

    from roadseg_plugin.adapters.qgis_reader import raster_source

    path, data = rgb
    reader = raster_source(layer(str(path)), QgsRectangle(X0 + 20.4, Y0 - 60.2, X0 + 70.6, Y0 - 30.7), gsd_m=1.0)
    assert not isinstance(reader, str)
    assert (reader.width, reader.height) == (51, 31)  # grown onto whole pixels
    assert reader.transform == Affine(1, 0, X0 + 20, 0, -1, Y0 - 30)
    values, valid = reader.read(Window(-5, -5, 20, 20), [1, 2, 3])
    assert not valid[:5].any() and not valid[:, :5].any()
    assert valid[5:, 5:].all()
    assert np.array_equal(values[:, 5:, 5:], data[:, 30:45, 20:35])


def test_extent_outside_the_layer_is_an_error(qgis_app, rgb) -> None:
    from qgis.core import QgsRectangle

    from roadseg_plugin.adapters.qgis_reader import raster_source
    from roadseg_plugin.core.errors import RasterError

    with pytest.raises(RasterError, match="does not overlap"):
        raster_source(layer(str(rgb[0])), QgsRectangle(0, 0, 10, 10), gsd_m=1.0)


def test_model_resolution_resamples(qgis_app, rgb) -> None:
    from roadseg_plugin.adapters.qgis_reader import ProviderReader

    reader = ProviderReader(layer(str(rgb[0])), gsd_m=2.0)
    assert (reader.width, reader.height) == (60, 50)
    # ground metres: the UTM grid's unit is within 0.05 % of a metre here
    assert reader.transform.a == pytest.approx(2.0, rel=5e-4) and reader.gsd_m == pytest.approx(2.0, rel=1e-6)
    values, valid = full(reader)
    assert not valid[:5, :5].any() and valid[10:, 10:].all()
    assert abs(float(values[:, valid].mean()) - 125) < 5  # averaged, not garbage


def test_feet_and_degree_layers_are_read_at_the_model_gsd_in_metres(qgis_app, tmp_path: Path) -> None:
    from roadseg_plugin.adapters.qgis_reader import ProviderReader
    from roadseg_plugin.core.gsd import metres_per_degree

    data = np.full((3, 40, 50), 90, np.uint8)
    feet = write(tmp_path / "ft.tif", data, crs="EPSG:2249", res=2.0, origin=(700000.0, 3000000.0))
    reader = ProviderReader(layer(str(feet)), gsd_m=1.0)  # 1 m = 3.28083 US survey feet
    assert reader.transform.a == pytest.approx(1 / 0.3048006096, rel=1e-4) and reader.gsd_m == pytest.approx(1.0)
    assert ProviderReader(layer(str(feet))).gsd_m == pytest.approx(2 * 0.3048006096, rel=1e-4)  # native pixels
    wgs84 = write(tmp_path / "deg.tif", data, crs="EPSG:4326", res=2e-5, origin=(10.0, 60.0 + 20 * 2e-5))
    reader = ProviderReader(layer(str(wgs84)), gsd_m=1.0)
    east, north = metres_per_degree(60.0)  # WGS84 radii of curvature at the centre latitude
    assert reader.transform.a == pytest.approx(1 / east, rel=1e-4)
    assert -reader.transform.e == pytest.approx(1 / north, rel=1e-4)
    assert reader.gsd_m == pytest.approx(1.0, rel=1e-3)


def test_vrt_file_is_a_path_and_a_vrt_string_goes_through_the_provider(qgis_app, rgb, tmp_path: Path) -> None:
    from roadseg_plugin.adapters.qgis_reader import ProviderReader, raster_source

    path, data = rgb
    vrt = tmp_path / "mosaic.vrt"
    gdal.BuildVRT(str(vrt), [str(path)])
    assert raster_source(layer(str(vrt))) == str(vrt)
    # A VRT given as XML (not a file): absolute source paths, opened straight from the string
    xml = vrt.read_text().replace('relativeToVRT="1">rgb.tif', f'relativeToVRT="0">{path}')
    reader = raster_source(layer(xml))
    assert isinstance(reader, ProviderReader)
    values, valid = full(reader)
    assert np.array_equal(values, data) and valid.sum() == 120 * 100 - 100


def test_vsimem_raster_goes_through_the_provider(qgis_app, rgb) -> None:
    from roadseg_plugin.adapters.qgis_reader import ProviderReader, raster_source

    path, data = rgb
    gdal.Translate("/vsimem/roadseg_test.tif", str(path))
    try:
        reader = raster_source(layer("/vsimem/roadseg_test.tif"))
        assert isinstance(reader, ProviderReader)
        assert np.array_equal(full(reader)[0], data)
    finally:
        gdal.Unlink("/vsimem/roadseg_test.tif")


def test_user_nodata_and_alpha_band(qgis_app, tmp_path: Path) -> None:
    from qgis.core import QgsRasterRange

    from roadseg_plugin.adapters.qgis_reader import ProviderReader, local_file, raster_source

    data = np.full((4, 20, 20), 100, np.uint8)
    data[3] = 255
    data[3, :5] = 0  # transparent top rows
    data[:3, :, -2:] = 7  # a value the user declares no-data in QGIS
    path = write(tmp_path / "rgba.tif", data, photometric="RGB", alpha="YES")
    lyr = layer(str(path))
    assert raster_source(lyr) == str(path)
    for band in (1, 2, 3):
        lyr.dataProvider().setUserNoDataValue(band, [QgsRasterRange(7, 7)])
    assert local_file(lyr) is None  # a file reader would miss the user's no-data
    reader = raster_source(lyr)
    assert isinstance(reader, ProviderReader) and reader.alpha_bands == (4,)
    values, valid = reader.read(Window(0, 0, 20, 20), [1, 2, 3])
    assert not valid[:5].any() and not valid[:, -2:].any()
    assert valid[5:, :-2].all()


def test_float_nan_and_geographic_resolution(qgis_app, tmp_path: Path) -> None:
    from roadseg_plugin.adapters.qgis_reader import ProviderReader

    deg = 1 / 111_000
    data = np.ones((1, 50, 60), np.float32)
    data[0, 0, 0] = np.nan
    path = write(tmp_path / "geo.tif", data, crs="EPSG:4326", res=deg, origin=(-71.0, 42.5))
    reader = ProviderReader(layer(str(path)), gsd_m=2.0)
    assert reader.height == pytest.approx(25, abs=1)  # 2 m pixels: half the rows
    assert reader.width == pytest.approx(60 * np.cos(np.radians(42.5)) / 2, abs=2)  # degrees of longitude shrink
    reader = ProviderReader(layer(str(path)))
    values, valid = full(reader)
    assert not valid[0, 0] and valid.sum() == 50 * 60 - 1


def test_web_map_layer_colour_channels(qgis_app, tmp_path: Path) -> None:
    """An XYZ tile layer (here served from local files, so the test runs offline)."""
    from PIL import Image
    from qgis.core import QgsRectangle

    from roadseg_plugin.adapters.qgis_reader import ProviderReader, is_web_map, raster_source
    from roadseg_plugin.core.errors import RasterError

    for x in range(4):
        for y in range(4):
            os.makedirs(tmp_path / "tiles" / "2" / str(x), exist_ok=True)
            tile = np.zeros((256, 256, 3), np.uint8)
            tile[...] = (40 * x, 40 * y, 200)
            Image.fromarray(tile).save(tmp_path / "tiles" / "2" / str(x) / f"{y}.png")
    url = f"file://{tmp_path}/tiles/%7Bz%7D/%7Bx%7D/%7By%7D.png"
    xyz = layer(f"type=xyz&url={url}&zmin=2&zmax=2", "wms")
    assert is_web_map(xyz) and not is_web_map(layer(str(write(tmp_path / "a.tif", np.zeros((3, 4, 4), np.uint8)))))
    with pytest.raises(RasterError, match="web map layer .* whole extent is the whole world; choose the area"):
        ProviderReader(xyz, gsd_m=1.0)  # its whole extent: refused before any work
    with pytest.raises(RasterError, match="no pixel size"):
        ProviderReader(xyz, QgsRectangle(-9e6, 1e6, -6e6, 4e6))  # a web map has no resolution of its own
    with pytest.raises(RasterError, match="more than one GeoTIFF holds; choose a smaller area"):
        ProviderReader(xyz, QgsRectangle(-9e6, 1e6, -6e6, 4e6), gsd_m=0.5)  # 3000 km at 0.5 m
    reader = raster_source(xyz, QgsRectangle(-9e6, 1e6, -6e6, 4e6), gsd_m=30000.0)
    assert isinstance(reader, ProviderReader) and (reader.count, reader.dtype) == (3, "uint8")
    values, valid = full(reader)
    assert valid.all()
    assert tuple(values[:, 5, 5]) == (40, 40, 200)  # tile x=1, y=1


def test_materialise_writes_values_and_mask(qgis_app, rgb, tmp_path: Path) -> None:
    from roadseg_plugin.adapters.qgis_reader import ProviderReader, materialise

    path, data = rgb
    out = materialise(ProviderReader(layer(str(path))), tmp_path / "copy.tif", rows_per_block=32)
    with rasterio.open(out) as src:
        assert np.array_equal(src.read(), data)
        assert (src.dataset_mask() > 0).sum() == 120 * 100 - 100
        assert src.crs == rasterio.crs.CRS.from_epsg(32619)


def test_areas_of_interest_are_the_only_valid_pixels(qgis_app, rgb) -> None:
    """Polygons (in the layer's CRS) limit the grid to their bounding box and the valid pixels to
    their inside, as Deepness's "processed area from polygons"."""
    from qgis.core import QgsGeometry

    from roadseg_plugin.adapters.qgis_reader import raster_source

    triangle = QgsGeometry.fromWkt(f"POLYGON(({X0 + 20} {Y0 - 20}, {X0 + 80} {Y0 - 20}, {X0 + 20} {Y0 - 80}, "
                                   f"{X0 + 20} {Y0 - 20}))")
    ring = QgsGeometry.fromWkt(f"POLYGON(({X0 + 90} {Y0 - 10}, {X0 + 110} {Y0 - 10}, {X0 + 110} {Y0 - 30}, "
                               f"{X0 + 90} {Y0 - 30}, {X0 + 90} {Y0 - 10}))")
    reader = raster_source(layer(str(rgb[0])), aoi=QgsGeometry.unaryUnion([triangle, ring]))
    assert (reader.width, reader.height) == (90, 70)  # their bounding box, on the layer's pixels
    values, valid = full(reader)
    assert valid.sum() == pytest.approx(60 * 60 / 2 + 20 * 20, rel=0.05)
    assert valid[15, 5] and not valid[55, 55]  # inside the triangle / beyond its diagonal
    assert valid[10, 75] and not valid[50, 80]  # inside the square / below it
    assert (values[:, valid] == rgb[1][:, 10:80, 20:110][:, valid]).all()  # the layer's own pixels
