"""Web Mercator (EPSG:3857) and other projections with scale error: every length in true metres.

A Web Mercator "metre" is 1 / k of a metre on the ground (k ~ 1 / cos(latitude): 0.74 m at
42 N). The same mask at a 1 m ground pixel, in EPSG:3857 at several latitudes and in UTM,
must give the same lines: lengths (`length_m`, summaries) checked against pyproj's geodesics
within 0.5 %, and the clean-up lengths (minimum length, spur, gap, tolerance) taken in ground
metres: a road piece, a spur or a gap just on the ground side of each threshold is treated as
its ground length says, where Mercator units would say the opposite. The reader reads such a
raster at the model's ground resolution.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from affine import Affine
from pyproj import CRS, Transformer

from roadseg_plugin.core.vectorise import vectorise_mask
from tests.core.test_vectorise import ellipsoid_lengths, horizontal, segment
from tests.rasters import write_raster

LATITUDES = (0.0, 25.0, 42.0, 55.0, -38.0)
TO_MERCATOR = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)


def mercator_grid(lat: float, ground_m: float = 1.0, lon: float = -71.0) -> Affine:
    """A north-up EPSG:3857 transform whose pixels are `ground_m` on the ground both ways at
    `lat` (measured with pyproj's geodesics: Web Mercator on WGS84 is not quite conformal, its
    north-south unit is up to 0.7 % shorter than its east-west one)."""
    x, y = TO_MERCATOR.transform(lon, lat)
    geod = CRS("EPSG:3857").geodetic_crs.get_geod()
    back = Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True)
    east = geod.inv(*back.transform(x - 500, y), *back.transform(x + 500, y))[2] / 1000  # ground m per unit
    north = geod.inv(*back.transform(x, y - 500), *back.transform(x, y + 500))[2] / 1000
    ux, uy = ground_m / east, ground_m / north
    return Affine(ux, 0.0, x - 150 * ux, 0.0, -uy, y + 50 * uy)  # a 300 x 100 mask centred there


UTM_GRID = Affine(1, 0, 330000, 0, -1, 4690000)  # EPSG:32619, 1 m: the same ground, scale error < 0.05 %


def road_network() -> np.ndarray:
    """A 260 px road with a 36 px side road, an 8 px spur, a 30 px separate piece and a 12 px gap."""
    mask = horizontal(h=200, w=300)
    segment(mask, (50, 150), (86, 150))  # side road: kept at spur 10 m
    segment(mask, (50, 60), (42 - 8, 60), width=5)  # 8 px spur (beyond the road's half width): pruned
    segment(mask, (150, 30), (150, 60))  # a 30 px piece on its own
    segment(mask, (150, 120), (150, 170))  # two aligned pieces 12 px apart
    segment(mask, (150, 182), (150, 260))
    return mask


@pytest.mark.parametrize("lat", LATITUDES)
def test_web_mercator_lengths_are_ground_metres(lat):
    mask = road_network()
    utm = vectorise_mask(mask, UTM_GRID, "EPSG:32619", min_length=20)
    mercator = vectorise_mask(mask, mercator_grid(lat), "EPSG:3857", min_length=20)
    assert len(mercator) == len(utm) >= 4
    np.testing.assert_allclose(mercator["length_m"], ellipsoid_lengths(mercator), rtol=1e-9)
    np.testing.assert_allclose(mercator["length_m"], utm["length_m"], rtol=0.005)  # the same ground
    assert mercator["length_m"].sum() == pytest.approx(utm["length_m"].sum(), rel=0.005)
    np.testing.assert_allclose(mercator["width_m"], utm["width_m"], rtol=0.005)
    k = 1 / math.cos(math.radians(lat))
    assert mercator.geometry.length.sum() == pytest.approx(k * mercator["length_m"].sum(), rel=0.01)


def between(ground: float, k: float) -> float:
    """A threshold above a feature's ground length and below its length in Mercator units."""
    assert k > 1.2
    return ground * (1 + k) / 2


@pytest.mark.parametrize("lat", (42.0, 55.0))
def test_clean_up_lengths_are_ground_metres(lat):
    """Each threshold sits between a feature's ground length and its length in Mercator units:
    the feature is treated as its ground length says (the opposite of what the units would say)."""
    k = 1 / math.cos(math.radians(lat))  # 1.35 at 42 N, 1.74 at 55 N
    t = mercator_grid(lat)

    def lines(mask, **options):
        return vectorise_mask(mask, t, "EPSG:3857", **{"min_length": 5, **options})

    def on_utm(mask, **options):
        return vectorise_mask(mask, UTM_GRID, "EPSG:32619", **{"min_length": 5, **options})

    piece = np.zeros((100, 300), bool)  # a piece on its own: dropped below its ground length
    segment(piece, (50, 20), (50, 50))
    ground = on_utm(piece, min_length=0)["length_m"].sum()
    assert len(lines(piece, min_length=between(ground, k))) == 0
    assert len(lines(piece, min_length=0.9 * ground)) == 1

    gap = np.zeros((100, 300), bool)  # two aligned pieces: bridged when the gap reaches the ground gap
    segment(gap, (50, 20), (50, 140))
    segment(gap, (50, 152), (50, 280))
    ends = [sorted(np.asarray(g.coords)[[0, -1], 0]) for g in on_utm(gap, gap=0).geometry]
    ground = min(abs(a - b) for a in ends[0] for b in ends[1])
    assert len(lines(gap, gap=1.1 * ground)) == 1
    assert len(lines(gap, gap=ground / between(1, k))) == 2  # in units the gap would be k x longer: bridged

    spur = horizontal()  # a side branch: pruned when shorter than the spur length on the ground
    segment(spur, (50, 150), (50 + 3 + 12, 150), width=5)
    side = on_utm(spur, spur_length=0)
    ground = side["length_m"].min()
    assert len(side) == 3
    assert len(lines(spur, spur_length=1.1 * ground)) == 1
    assert len(lines(spur, spur_length=ground / between(1, k))) == 3

    wiggle = np.zeros((100, 300), bool)  # the simplification tolerance: ground metres, as on a 1 m UTM grid
    for c in range(20, 280, 2):
        wiggle[48 + (c // 20) % 2 * 3:55 + (c // 20) % 2 * 3, c:c + 2] = True
    for tolerance in (1.0, 2.0, 4.0):
        assert [len(g.coords) for g in lines(wiggle, tolerance=tolerance).geometry] == [
            len(g.coords) for g in on_utm(wiggle, tolerance=tolerance).geometry]


@pytest.mark.parametrize("lat", (0.0, 42.0, 60.0))
def test_a_web_mercator_raster_is_read_at_the_models_ground_resolution(tmp_path, lat):
    """A Web Mercator raster of 1-unit pixels at 42 N (0.74 m on the ground) is resampled to the
    model's 1 m; at the equator (1 unit = 1 m) it is read as it is."""
    from roadseg_plugin.core.gsd import pixel_size_m
    from roadseg_plugin.core.readers import open_raster

    x, y = TO_MERCATOR.transform(-71.0, lat)
    path = tmp_path / "webmap.tif"
    write_raster(path, np.full((3, 400, 400), 90, np.uint8), crs="EPSG:3857",
                 transform=Affine(1, 0, x - 200, 0, -1, y + 200))
    with open_raster(path, gsd_m=1.0) as reader:
        ground = pixel_size_m(reader.crs, reader.transform, reader.width, reader.height)
        assert ground == pytest.approx((1.0, 1.0), rel=0.01)  # Web Mercator's unit is 0.993 m north-south at 0
        assert reader.gsd_m == pytest.approx(1.0, rel=0.005)
        k = 1 / math.cos(math.radians(lat))
        assert reader.width == pytest.approx(400 / k, abs=2)
        assert (reader.width == 400) == (lat == 0.0)  # within 25 % of the model's: read as it is
