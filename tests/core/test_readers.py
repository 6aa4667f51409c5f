"""Raster readers on real little files: validity masks, boundless reads, GSD and resampling."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin
from rasterio.windows import Window

from roadseg_plugin.core.errors import RasterError
from roadseg_plugin.core.gsd import pixel_size_m
from roadseg_plugin.core.readers import (
    RasterReader,
    band_stretch,
    choose_bands,
    open_raster,
)
from tests.rasters import write_raster

RGBA = (ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha)


def write_tif(path: Path, data: np.ndarray, crs: str | None = "EPSG:32631", res: float = 1.0,
              origin: tuple[float, float] = (500000.0, 6000000.0), **extra) -> Path:
    georeferenced = {"crs": crs, "transform": from_origin(*origin, res, res)} if crs is not None else {}
    return write_raster(path, data, colorinterp=RGBA if data.shape[0] == 4 else None,
                        **{"driver": "GTiff", **georeferenced, **extra})


def rgb(h: int = 40, w: int = 50, value: int = 100) -> np.ndarray:
    return np.full((3, h, w), value, np.uint8)


def test_feet_rasters_report_and_resample_in_metres(tmp_path):
    # the unit conversions themselves are tested in test_gsd.py; here: the reader uses them
    path = write_tif(tmp_path / "ny.tif", rgb(50, 100), crs="EPSG:2263", res=2.0, origin=(980000.0, 200000.0))
    with open_raster(path) as reader:  # NY state plane, US feet: 2 ft = 0.6096 m
        assert reader.gsd_m == pytest.approx(0.6096, rel=1e-5)
    with open_raster(path, gsd_m=1.0) as reader:
        assert (reader.width, reader.height) == (61, 30) and reader.gsd_m == pytest.approx(1.0, rel=0.02)


def test_missing_and_corrupt_files_are_raster_errors(tmp_path):
    with pytest.raises(RasterError, match="not found"):
        open_raster(tmp_path / "nope.tif")
    junk = tmp_path / "junk.tif"
    junk.write_text("this is not an image")
    with pytest.raises(RasterError, match="junk.tif: not a raster GDAL can read"):
        open_raster(junk)


def test_band_numbers_are_checked(tmp_path):
    path = write_tif(tmp_path / "a.tif", rgb())
    with pytest.raises(RasterError, match="band 5 does not exist"):
        open_raster(path, bands=[1, 2, 5])


def test_boundless_read_marks_outside_invalid(tmp_path):
    data = np.arange(3 * 40 * 50, dtype=np.uint32).reshape(3, 40, 50).astype(np.uint16)
    with open_raster(write_tif(tmp_path / "a.tif", data)) as reader:
        assert isinstance(reader, RasterReader)
        values, valid = reader.read(Window(-5, 30, 20, 20), [3, 1])
    assert values.shape == (2, 20, 20) and valid.shape == (20, 20)
    assert not valid[:, :5].any() and not valid[10:].any() and valid[:10, 5:].all()
    np.testing.assert_array_equal(values[:, :10, 5:], data[[2, 0], 30:40, 0:15])
    assert (values[:, 10:] == 0).all()


def test_nodata_alpha_and_mask_band_make_pixels_invalid(tmp_path):
    nodata = rgb()
    nodata[:, :10] = 0
    nodata[1, 20:, :] = 0  # one band at the nodata value is still data
    with open_raster(write_tif(tmp_path / "nodata.tif", nodata, nodata=0)) as reader:
        _, valid = reader.read(Window(0, 0, 50, 40), [1, 2, 3])
    assert not valid[:10].any() and valid[10:].all()

    rgba = np.concatenate([rgb(), np.full((1, 40, 50), 255, np.uint8)])
    rgba[3, :, :7] = 0
    with open_raster(write_tif(tmp_path / "rgba.tif", rgba)) as reader:
        assert reader.alpha_bands == (4,)
        assert choose_bands(reader, 3) == [1, 2, 3]
        _, valid = reader.read(Window(0, 0, 50, 40), [1, 2, 3])
    assert not valid[:, :7].any() and valid[:, 7:].all()

    path = write_tif(tmp_path / "masked.tif", rgb())
    with rasterio.open(path, "r+") as dst:
        mask = np.full((40, 50), 255, np.uint8)
        mask[30:] = 0
        dst.write_mask(mask)
    with open_raster(path) as reader:
        _, valid = reader.read(Window(0, 0, 50, 40), [1, 2, 3])
    assert not valid[30:].any() and valid[:30].all()


def test_resampled_to_the_model_gsd_when_more_than_25_percent_off(tmp_path):
    path = write_tif(tmp_path / "half.tif", rgb(80, 100), res=0.5)
    with open_raster(path, gsd_m=1.0) as reader:
        assert (reader.width, reader.height) == (50, 40)
        assert reader.transform.a == pytest.approx(1.0) and reader.transform.e == pytest.approx(-1.0)
        assert reader.transform.c == 500000.0 and reader.gsd_m == pytest.approx(1.0, rel=1e-3)  # ground metres
        assert any("resampled" in w for w in reader.warnings)
        values, valid = reader.read(Window(0, 0, 50, 40), [1, 2, 3])
    assert (values == 100).all() and valid.all()
    with open_raster(path, gsd_m=0.6) as reader:  # 17 % off: native grid
        assert (reader.width, reader.height) == (100, 80) and not reader.warnings


def test_geographic_raster_is_resampled_to_square_metres(tmp_path):
    path = write_tif(tmp_path / "wgs84.tif", rgb(50, 60), crs="EPSG:4326", res=2e-5, origin=(5.0, 45.0))
    with open_raster(path, gsd_m=1.0) as reader:
        assert reader.crs == CRS.from_epsg(4326)
        gx, gy = pixel_size_m(reader.crs, reader.transform, reader.width, reader.height)
        assert gx == pytest.approx(1.0, rel=0.02) and gy == pytest.approx(1.0, rel=0.02)
        assert reader.width == pytest.approx(60 * 1.574, abs=1) and reader.height == pytest.approx(50 * 2.222, abs=1)


def test_unreferenced_image_is_read_natively_with_a_warning(tmp_path):
    path = write_raster(tmp_path / "photo.png", rgb(20, 30))
    with open_raster(path, gsd_m=1.0) as reader:
        assert reader.crs is None and reader.gsd_m is None and (reader.width, reader.height) == (30, 20)
        assert any("no georeferencing" in w for w in reader.warnings)


def test_choose_bands_explains_what_is_wrong(tmp_path):
    with open_raster(write_tif(tmp_path / "grey.tif", rgb()[:1])) as reader:
        with pytest.raises(RasterError, match="1 image band.*model needs 3"):
            choose_bands(reader, 3)
        assert choose_bands(reader, 1) == [1]
    with open_raster(write_tif(tmp_path / "rgb.tif", rgb())) as reader:
        assert choose_bands(reader, 3, [3, 2, 1]) == [3, 2, 1]
        with pytest.raises(RasterError, match="2 band.*model takes 3"):
            choose_bands(reader, 3, [1, 2])


def test_stretch_limits_are_percentiles_of_valid_pixels(tmp_path):
    ramp = np.tile(np.arange(1000, 1100, dtype=np.uint16), (3, 100, 1))
    ramp[:, :50] = 0  # nodata
    with open_raster(write_tif(tmp_path / "u16.tif", ramp, nodata=0)) as reader:
        limits = band_stretch(reader, [1, 2, 3])
    np.testing.assert_allclose(limits, [[1002, 1097]] * 3, atol=1.0)


def test_vrt_and_world_file_jpeg_are_read(tmp_path):
    data = np.random.default_rng(0).integers(0, 250, (3, 40, 50), dtype=np.uint8)
    write_tif(tmp_path / "a.tif", data)
    bands = "".join(f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource><SourceFilename relativeToVRT="1">'
                    f"a.tif</SourceFilename><SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand>"
                    for b in (1, 2, 3))
    (tmp_path / "a.vrt").write_text(f'<VRTDataset rasterXSize="50" rasterYSize="40"><SRS>EPSG:32631</SRS>'
                                    f"<GeoTransform>500000, 1, 0, 6000000, 0, -1</GeoTransform>{bands}</VRTDataset>")
    with open_raster(tmp_path / "a.vrt", gsd_m=1.0) as reader:
        values, valid = reader.read(Window(0, 0, 50, 40), [1, 2, 3])
        assert reader.crs == CRS.from_epsg(32631) and not reader.warnings
    np.testing.assert_array_equal(values, data)
    write_raster(tmp_path / "photo.jpg", data, transform=from_origin(10, 20, 0.5, 0.5), WORLDFILE="YES")
    with open_raster(tmp_path / "photo.jpg", gsd_m=1.0) as reader:
        assert reader.transform == from_origin(10, 20, 0.5, 0.5) and reader.width == 50
        assert any("no coordinate reference system" in w for w in reader.warnings)


def gcp_tif(path: Path, placed, crs, size: int = 60, rpcs: bool = False) -> Path:
    """A raster placed by 9 GCPs of the affine `placed` (or by RPCs), without a geotransform."""
    from rasterio.control import GroundControlPoint

    if rpcs:
        from rasterio.rpc import RPC

        return write_raster(path, rgb(size, size), rpcs=RPC(
            height_off=0, height_scale=100, lat_off=45, lat_scale=0.01, line_den_coeff=[1] + [0] * 19,
            line_num_coeff=[0, 0, -1] + [0] * 17, line_off=30, line_scale=30, long_off=7, long_scale=0.01,
            samp_den_coeff=[1] + [0] * 19, samp_num_coeff=[0, 1] + [0] * 18, samp_off=30, samp_scale=30))
    return write_raster(path, rgb(size, size),
                        gcps=([GroundControlPoint(row=r, col=c, x=(placed * (c, r))[0], y=(placed * (c, r))[1])
                               for r in (0, size / 2, size) for c in (0, size / 2, size)], crs or CRS()))


def test_gcp_raster_is_warped_north_up_where_its_gcps_put_it(tmp_path):
    from affine import Affine

    placed = Affine.translation(500000, 6000000) * Affine.rotation(-30) * Affine.scale(1.0, -1.0)
    corners = np.array([placed * (c, r) for c in (0, 60) for r in (0, 60)])
    with open_raster(gcp_tif(tmp_path / "gcp.tif", placed, "EPSG:32631")) as reader:
        assert reader.crs.to_epsg() == 32631 and reader.transform.b == reader.transform.d == 0
        assert reader.gsd_m == pytest.approx(1.0, rel=0.01)
        left, top = reader.transform * (0, 0)
        right, bottom = reader.transform * (reader.width, reader.height)
        np.testing.assert_allclose([left, bottom, right, top], [*corners.min(axis=0), *corners.max(axis=0)], atol=1.5)
        data, valid = reader.read(Window(0, 0, reader.width, reader.height), choose_bands(reader, 3))
        assert 0.45 < valid.mean() < 0.8 and (data[:, valid] == 100).mean() > 0.95  # the corners are outside
        assert reader.alpha_bands == (4,) and any("ground control points" in w for w in reader.warnings)
    with open_raster(tmp_path / "gcp.tif", gsd_m=2.0) as coarse:  # resampled on top of the warp
        assert coarse.transform.a == pytest.approx(2.0) and coarse.width == pytest.approx(reader.width / 2, abs=1)


def test_gcps_without_a_crs_and_rpcs_only_are_refused(tmp_path):
    from affine import Affine

    with pytest.raises(RasterError, match="9 ground control points but no CRS"):
        open_raster(gcp_tif(tmp_path / "nocrs.tif", Affine.identity(), None))
    with pytest.raises(RasterError, match="placed by RPCs only"):
        open_raster(gcp_tif(tmp_path / "rpc.tif", None, None, rpcs=True))


def test_a_georeferenced_file_is_read_directly(tmp_path):
    with open_raster(write_tif(tmp_path / "a.tif", rgb())) as reader:
        assert reader._ds is reader._src is reader._file  # no WarpedVRT when nothing changes
