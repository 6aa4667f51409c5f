"""Ground metres per CRS unit, per pixel and along lines (core.gsd) with real CRSs, checked against
pyproj's geodesics on the ellipsoid: degrees, feet, UTM, state planes and Web Mercator."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyproj
import pytest
import rasterio
from affine import Affine
from pyproj import Geod
from rasterio.crs import CRS
from rasterio.transform import from_origin

from roadseg_plugin.core.gsd import (
    mean_gsd_m,
    metres_per_unit,
    metres_to_crs_units,
    pixel_size_m,
    scale_factors,
    segment_lengths_m,
)
from tests.rasters import write_raster

US_FOOT = 1200 / 3937  # 0.3048006096... m
WGS84 = Geod(ellps="WGS84")


def test_the_module_imports_neither_torch_nor_qgis():
    code = ("import sys, roadseg_plugin.core.gsd; "
            "print(sorted(m for m in ('torch', 'qgis', 'pyproj', 'rasterio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("crs", [CRS.from_epsg(26986), pyproj.CRS.from_epsg(26986), "EPSG:26986",
                                 CRS.from_epsg(26986).to_wkt(), 26986])
def test_metre_crs_in_every_form(crs):
    assert metres_per_unit(crs, 42.0) == (1.0, 1.0)  # without a point: the grid's own metre
    size = pixel_size_m(crs, from_origin(230000, 900000, 0.5, 0.25), 100, 100)
    assert size == pytest.approx((0.5, 0.25), rel=1e-4)  # a state plane's scale error is below 1e-4
    assert size == pytest.approx(ground_pixel("EPSG:26986", 230025, 899987.5, 0.5, 0.25), rel=1e-6)


def ground_pixel(crs: str, x: float, y: float, dx: float, dy: float) -> tuple[float, float]:
    """Metres on the WGS84/GRS80 ellipsoid over one pixel east and one north of (x, y) of a
    projected CRS: the end points taken to lon/lat by pyproj, measured by its geodesics."""
    to_lonlat = pyproj.Transformer.from_crs(crs, pyproj.CRS(crs).geodetic_crs, always_xy=True)
    geod = pyproj.CRS(crs).get_geod()
    ends = [to_lonlat.transform(*p) for p in ((x - dx / 2, y), (x + dx / 2, y), (x, y - dy / 2), (x, y + dy / 2))]
    east = geod.inv(*ends[0], *ends[1])[2]
    north = geod.inv(*ends[2], *ends[3])[2]
    return east, north


@pytest.mark.parametrize("crs", [CRS.from_epsg(2249), "EPSG:2249", pyproj.CRS.from_epsg(2249).to_wkt()])
def test_us_survey_feet(crs):  # Massachusetts Mainland, ftUS
    assert metres_per_unit(crs)[0] == pytest.approx(0.3048006096, rel=1e-9)
    assert metres_per_unit(crs)[0] == pytest.approx(US_FOOT, rel=1e-12)
    x_m, y_m = pixel_size_m(crs, from_origin(700000, 3000000, 2.0, 2.0), 50, 50)
    assert (x_m, y_m) == pytest.approx((2 * US_FOOT, 2 * US_FOOT), rel=1e-4)
    assert (x_m, y_m) == pytest.approx(ground_pixel("EPSG:2249", 700050, 2999950, 2.0, 2.0), rel=1e-6)
    assert metres_to_crs_units(crs, 1.0, 42.0) == pytest.approx((1 / US_FOOT, 1 / US_FOOT), rel=1e-12)


def test_international_feet():  # NAD83 / Arizona Central (ft), international feet
    assert metres_per_unit(CRS.from_epsg(2223)) == pytest.approx((0.3048, 0.3048), rel=1e-12)


def _geodesic_pixel(lon: float, lat: float, dx: float, dy: float) -> tuple[float, float]:
    """Metres over one pixel east and one pixel north of (lon, lat), from pyproj's geodesics."""
    _, _, east = WGS84.inv(lon - dx / 2, lat, lon + dx / 2, lat)
    _, _, north = WGS84.inv(lon, lat - dy / 2, lon, lat + dy / 2)
    return east, north


@pytest.mark.parametrize("crs", [CRS.from_epsg(4326), "EPSG:4326", pyproj.CRS.from_epsg(4326)])
@pytest.mark.parametrize("lat", [0.0, 60.0])
def test_degrees_match_geodesic_distances(crs, lat):
    res = 1e-5
    t = from_origin(10.0, lat + 50 * res, res, res)  # 100 px tall: centre at `lat`
    x_m, y_m = pixel_size_m(crs, t, 100, 100)
    east, north = _geodesic_pixel(10.0 + 50 * res, lat, res, res)
    assert x_m == pytest.approx(east, rel=1e-3)
    assert y_m == pytest.approx(north, rel=1e-3)
    assert x_m == pytest.approx(east, rel=1e-6)  # the radii of curvature are exact for the ellipsoid
    assert y_m == pytest.approx(north, rel=1e-6)
    assert x_m == pytest.approx(1.1132 if lat == 0 else 0.5580, rel=1e-3)


def test_degrees_to_units_is_the_inverse_at_that_latitude():
    deg_x, deg_y = metres_to_crs_units("EPSG:4326", 100.0, 60.0)
    mx, my = metres_per_unit(CRS.from_epsg(4326), 60.0)
    assert (deg_x * mx, deg_y * my) == pytest.approx((100.0, 100.0), rel=1e-12)
    assert deg_x == pytest.approx(2 * deg_y, rel=0.01)  # a degree of longitude is half as long at 60 N


def test_rotated_transform_uses_the_step_vector_lengths():
    t = Affine.translation(230000, 900000) * Affine.rotation(30) * Affine.scale(2.0, -3.0)
    assert pixel_size_m(CRS.from_epsg(26986), t, 10, 10) == pytest.approx((2.0, 3.0), rel=1e-4)
    in_feet = Affine.translation(700000, 3000000) * Affine.rotation(30) * Affine.scale(2.0, -3.0)
    feet = pixel_size_m(CRS.from_epsg(2249), in_feet, 10, 10)  # inside the state plane's zone
    assert feet == pytest.approx((2 * US_FOOT, 3 * US_FOOT), rel=1e-4)
    sheared = Affine(1.0, 0.5, 0.0, 0.0, -1.0, 0.0)  # rows step (0.5, -1): sqrt(1.25) units long
    assert pixel_size_m(None, sheared, 10, 10) == pytest.approx((1.0, math.sqrt(1.25)))


def test_rotated_degrees_convert_each_axis():
    res, lat = 1e-5, 60.0
    t = Affine.translation(10.0, lat) * Affine.rotation(90) * Affine.scale(res, -res)  # columns go north
    x_m, y_m = pixel_size_m(CRS.from_epsg(4326), t, 2, 2)
    east, north = _geodesic_pixel(10.0, lat, res, res)
    assert (x_m, y_m) == pytest.approx((north, east), rel=1e-3)


def test_no_crs_takes_map_units_as_metres():
    t = from_origin(0, 0, 2.0, 3.0)
    assert metres_per_unit(None) == (1.0, 1.0)
    assert pixel_size_m(None, t, 10, 10) == (2.0, 3.0)
    assert metres_to_crs_units(None, 5.0) == (5.0, 5.0)
    assert mean_gsd_m(None, t, 10, 10) is None  # the ground size is unknown: no GSD to report


def test_mean_gsd_of_a_written_raster(tmp_path):
    write_raster(tmp_path / "ft.tif", np.zeros((1, 8, 8), "uint8"), crs="EPSG:2249",
                 transform=from_origin(700000, 3000000, 1.0, 2.0))
    with rasterio.open(tmp_path / "ft.tif") as src:
        assert mean_gsd_m(src.crs, src.transform, src.width, src.height) == pytest.approx(1.5 * US_FOOT, rel=1e-4)


# ---- Web Mercator and other projections with scale error: true metres ---------------------------
LATITUDES = (0.0, 30.0, 42.0, 60.0, -35.0)


def mercator_y(lat: float) -> float:
    return pyproj.Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True).transform(-71.0, lat)[1]


@pytest.mark.parametrize("lat", LATITUDES)
def test_web_mercator_pixel_is_its_ground_size(lat):
    """A 1-unit Web Mercator pixel at 42 N is 0.74 m on the ground, not 1 m."""
    x, y = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True).transform(-71.0, lat)
    t = from_origin(x - 50, y + 50, 1.0, 1.0)  # centre at (x, y)
    x_m, y_m = pixel_size_m(CRS.from_epsg(3857), t, 100, 100)
    east, north = _geodesic_pixel(-71.0, lat, *(np.array(
        pyproj.Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True).transform(x + 0.5, y + 0.5))
        - np.array(pyproj.Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True).transform(x - 0.5, y - 0.5))))
    assert (x_m, y_m) == pytest.approx((east, north), rel=1e-5)
    assert x_m == pytest.approx(math.cos(math.radians(lat)), rel=0.005)  # Mercator: k = 1 / cos(latitude)
    kx, ky = scale_factors("EPSG:3857", x, y)
    assert (kx, ky) == pytest.approx((1 / x_m, 1 / y_m), rel=1e-9)
    # the model's 1 m pixel in Web Mercator units there, and back
    ux, uy = metres_to_crs_units("EPSG:3857", 1.0, y, x)
    assert (ux * x_m, uy * y_m) == pytest.approx((1.0, 1.0), rel=1e-9)


@pytest.mark.parametrize("lat", LATITUDES)
@pytest.mark.parametrize("crs", ["EPSG:3857", "EPSG:32619", "EPSG:4326"])
def test_segment_lengths_are_geodesic(crs, lat):
    """A 2 km line in any direction measures what pyproj's geodesic gives for its end points."""
    to_crs = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    lon0, lat0 = (-69.0 if crs == "EPSG:32619" else 10.0), lat
    ends = [(lon0, lat0), (lon0 + 0.02, lat0 + 0.01), (lon0 - 0.005, lat0 + 0.015)]
    start = np.array([to_crs.transform(*ends[0])] * 2)
    end = np.array([to_crs.transform(*ends[1]), to_crs.transform(*ends[2])])
    got = segment_lengths_m(crs, start, end)
    expected = [WGS84.inv(*ends[0], *e)[2] for e in ends[1:]]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_no_crs_and_local_units_are_planar():
    start, end = np.array([[0.0, 0.0]]), np.array([[3.0, 4.0]])
    assert segment_lengths_m(None, start, end) == pytest.approx([5.0])
    assert segment_lengths_m("EPSG:2249", np.zeros((0, 2)), np.zeros((0, 2))).shape == (0,)
    assert scale_factors(None, 0, 0) == scale_factors("EPSG:4326", 10, 50) == (1.0, 1.0)
