"""Vectoriser on drawn masks with exact expectations: counts, junctions, lengths, attributes."""
from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine

from roadseg_plugin.core.errors import Cancelled, RasterError
from roadseg_plugin.core.params import VectoriseParams
from roadseg_plugin.core.vectorise import FIELDS, vectorise_mask, vectorise_raster
from tests.conftest import SHARED_DATA, needs_shared_data
from tests.rasters import copy_window, write_raster

UTM = Affine(0.6, 0.0, 330000.0, 0.0, -0.6, 4690000.0)  # EPSG:32619, 0.6 m pixels


def segment(mask: np.ndarray, p: tuple[float, float], q: tuple[float, float], width: float = 7) -> np.ndarray:
    """Draw a road of `width` px between (row, col) points p and q (round caps)."""
    rr, cc = np.ogrid[:mask.shape[0], :mask.shape[1]]
    d = np.subtract(q, p, dtype=float)
    t = np.clip(((rr - p[0]) * d[0] + (cc - p[1]) * d[1]) / (d @ d), 0, 1)
    mask |= np.hypot(rr - p[0] - t * d[0], cc - p[1] - t * d[1]) <= width / 2
    return mask


def network(gdf) -> nx.MultiGraph:
    """Lines as edges between their exact end coordinates."""
    graph = nx.MultiGraph()
    for geom in gdf.geometry:
        xy = shapely.get_coordinates(geom)
        graph.add_edge(tuple(xy[0]), tuple(xy[-1]))
    return graph


def horizontal(h: int = 100, w: int = 300, row: int = 50, c0: int = 20, c1: int = 280) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    mask[row - 3:row + 4, c0:c1] = True
    return mask


def test_cross_is_four_lines_meeting_at_one_junction():
    mask = np.zeros((120, 120), bool)
    mask[57:64, 10:110] = True
    mask[10:110, 57:64] = True
    gdf = vectorise_mask(mask)
    assert len(gdf) == 4
    ends = [tuple(shapely.get_coordinates(g)[[0, -1]].tolist()) for g in gdf.geometry]
    shared = set(map(tuple, ends[0])).intersection(*(set(map(tuple, e)) for e in ends[1:]))
    assert len(shared) == 1  # every line ends at the same junction coordinate
    x, y = shared.pop()
    assert abs(x - 60.5) <= 1 and abs(y - 60.5) <= 1  # pixel centre of the drawn crossing
    assert list(gdf["id"]) == [1, 2, 3, 4]
    assert gdf["length_m"].sum() == pytest.approx(2 * 100 - 2 * 3.5, abs=4)  # ends stop ~w/2 short
    smooth = vectorise_mask(mask, smooth=True)
    assert nx.number_connected_components(network(smooth)) == 1
    assert sorted(d for _, d in network(smooth).degree()) == [1, 1, 1, 1, 4]


def test_grid_is_one_connected_network():
    mask = np.zeros((300, 300), bool)
    for k in (60, 150, 240):
        mask[k - 3:k + 4, 20:280] = True
        mask[20:280, k - 3:k + 4] = True
    gdf = vectorise_mask(mask)
    graph = network(gdf)
    assert len(gdf) == 24  # each of 6 roads is cut into 4 by the 3 crossings
    assert nx.number_connected_components(graph) == 1
    degrees = sorted(d for _, d in graph.degree())
    assert degrees == [1] * 12 + [4] * 9


def test_curve_is_one_line_with_the_arc_length():
    rr, cc = np.ogrid[:300, :300]
    radius, sweep = 100.0, 0.75 * np.pi
    angle = np.arctan2(rr - 150, cc - 150)
    mask = (np.abs(np.hypot(rr - 150, cc - 150) - radius) <= 3.5) & (angle >= 0) & (angle <= sweep)
    gdf = vectorise_mask(mask)
    assert len(gdf) == 1
    # the skeleton stops half a road width short of each end of the drawn arc
    assert gdf["length_m"].iloc[0] == pytest.approx(radius * sweep - 7, rel=0.02)
    smooth = vectorise_mask(mask, smooth=True)
    assert len(smooth) == 1
    assert smooth["length_m"].iloc[0] == pytest.approx(gdf["length_m"].iloc[0], rel=0.01)
    a, b = (shapely.get_coordinates(g.geometry.iloc[0])[[0, -1]] for g in (gdf, smooth))
    np.testing.assert_array_equal(a, b)  # smoothing keeps the end points
    assert len(shapely.get_coordinates(smooth.geometry.iloc[0])) > len(shapely.get_coordinates(gdf.geometry.iloc[0]))


def test_gap_is_bridged_only_when_shorter_than_the_gap_parameter():
    mask = horizontal()
    mask[:, 145:151] = False  # a 6 px break; skeleton ends are ~12 px apart
    joined = vectorise_mask(mask, gap=20)
    assert len(joined) == 1
    assert joined["length_m"].iloc[0] == pytest.approx(260 - 7, abs=3)
    split = vectorise_mask(mask, gap=5)
    assert len(split) == 2
    assert nx.number_connected_components(network(split)) == 2


def test_gap_is_not_bridged_when_the_ends_do_not_line_up():
    mask = np.zeros((100, 300), bool)
    mask[37:44, 20:145] = True
    mask[52:59, 153:280] = True  # ends 15 rows and ~14 columns apart: a 47 degree turn
    gdf = vectorise_mask(mask, gap=30)
    assert len(gdf) == 2
    assert nx.number_connected_components(network(gdf)) == 2


def test_side_road_stopping_short_is_joined_to_the_road():
    mask = np.zeros((200, 200), bool)
    mask[47:54, 20:180] = True
    mask[60:180, 97:104] = True  # 6 px short of the main road
    gdf = vectorise_mask(mask)
    graph = network(gdf)
    assert len(gdf) == 3 and nx.number_connected_components(graph) == 1
    assert sorted(d for _, d in graph.degree()) == [1, 1, 1, 3]
    assert len(vectorise_mask(mask, gap=0)) == 2


def test_short_spurs_are_pruned_and_a_real_side_road_kept():
    mask = horizontal()
    for c in (60, 120, 200):
        mask[43:47, c - 1:c + 2] = True  # bumps: short skeleton hairs
        mask[54:57, c + 10:c + 13] = True
    gdf = vectorise_mask(mask)
    assert len(gdf) == 1
    assert gdf["length_m"].iloc[0] == pytest.approx(260 - 7, abs=3)
    mask[54:90, 150:157] = True  # a 36 px side road
    gdf = vectorise_mask(mask)
    assert len(gdf) == 3
    assert nx.number_connected_components(network(gdf)) == 1


def test_min_length_drops_short_pieces():
    mask = horizontal()
    mask[10:17, 100:122] = True  # 22 px blob: skeleton ~17 px
    mask[80:87, 200:212] = True
    assert len(vectorise_mask(mask)) == 1
    assert len(vectorise_mask(mask, min_length=5)) == 3


def test_width_and_length_in_metres():
    mask = horizontal()
    gdf = vectorise_mask(mask)
    assert gdf["width_m"].iloc[0] == pytest.approx(7, abs=0.2)
    half = vectorise_mask(mask, Affine(0.5, 0, 0, 0, -0.5, 0), min_length=5)
    assert half["width_m"].iloc[0] == pytest.approx(3.5, abs=0.1)
    assert half["length_m"].iloc[0] == pytest.approx(gdf["length_m"].iloc[0] / 2, rel=1e-6)
    assert half.geometry.iloc[0].length == pytest.approx(half["length_m"].iloc[0])
    wide = np.zeros((100, 300), bool)
    wide[40:61, 20:280] = True
    assert vectorise_mask(wide)["width_m"].iloc[0] == pytest.approx(21, abs=0.3)


def test_mean_prob_from_float_or_uint8_probabilities():
    mask = horizontal()
    prob = np.where(mask, 0.8, 0.1).astype(np.float32)
    prob[:, 150:] = np.where(mask[:, 150:], 0.6, 0.1)
    gdf = vectorise_mask(mask, prob=prob)
    assert gdf["mean_prob"].iloc[0] == pytest.approx((0.8 * 130 + 0.6 * 127) / 257, abs=0.01)
    as_uint8 = vectorise_mask(mask, prob=np.round(prob * 255).astype(np.uint8))
    assert as_uint8["mean_prob"].iloc[0] == pytest.approx(gdf["mean_prob"].iloc[0], abs=0.005)
    assert np.isnan(vectorise_mask(mask)["mean_prob"].iloc[0])
    with pytest.raises(RasterError, match="shape"):
        vectorise_mask(mask, prob=prob[:, :10])


def test_map_coordinates_with_a_utm_transform():
    gdf = vectorise_mask(horizontal(), UTM, "EPSG:32619")
    assert gdf.crs.to_epsg() == 32619
    xy = shapely.get_coordinates(gdf.geometry.iloc[0])
    np.testing.assert_allclose(xy[:, 1], 4690000.0 - 0.6 * 50.5, atol=0.6 + 1e-6)  # row 50's centre
    assert 330000 + 0.6 * 20 <= xy[:, 0].min() < xy[:, 0].max() <= 330000 + 0.6 * 280
    assert gdf["length_m"].iloc[0] == pytest.approx(0.6 * 253, abs=0.6 * 3)
    assert gdf["width_m"].iloc[0] == pytest.approx(0.6 * 7, abs=0.15)


def test_us_feet_lengths_are_metres(tmp_path):
    feet = Affine(2.0, 0.0, 700000.0, 0.0, -2.0, 3000000.0)  # EPSG:2249, 2 US survey feet = 0.6096 m
    expected = vectorise_mask(horizontal(), UTM, "EPSG:32619")  # the same mask on 0.6 m pixels
    for gdf in (vectorise_mask(horizontal(), feet, "EPSG:2249"),
                vectorise_raster(write_tif(tmp_path / "ft.tif", horizontal().astype(np.uint8), feet, "EPSG:2249"))):
        assert gdf["length_m"].iloc[0] == pytest.approx(expected["length_m"].iloc[0] * 0.6096 / 0.6, rel=1e-3)
        assert gdf["width_m"].iloc[0] == pytest.approx(expected["width_m"].iloc[0] * 0.6096 / 0.6, rel=1e-3)


def test_geographic_crs_lengths_are_metres_even_without_a_transform():
    gdf = vectorise_mask(horizontal(), None, "EPSG:4326", min_length=0, gap=0)
    assert gdf["length_m"].iloc[0] > 1e6  # one "pixel" is a degree: ~111 km near the equator


def test_geographic_crs_lengths_are_metres():
    deg = 1e-5  # ~1.11 m north-south, ~0.79 m east-west at 45 N
    gdf = vectorise_mask(horizontal(), Affine(deg, 0, -70.0, 0, -deg, 45.0), "EPSG:4326", min_length=5)
    east_west = 111412.84 * math.cos(math.radians(45.0)) - 93.5 * math.cos(3 * math.radians(45.0))
    assert gdf["length_m"].iloc[0] == pytest.approx(253 * deg * east_west, rel=0.02)


def test_empty_mask_gives_an_empty_typed_frame():
    gdf = vectorise_mask(np.zeros((50, 50), bool), UTM, "EPSG:32619")
    assert len(gdf) == 0
    assert list(gdf.columns) == [*FIELDS, "geometry"]
    assert gdf.crs.to_epsg() == 32619


def random_roads(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), bool)
    for _ in range(7):
        p, q = rng.uniform(5, size - 5, 2), rng.uniform(5, size - 5, 2)
        segment(mask, tuple(p), tuple(q), width=rng.choice([5, 7, 9]))
    rr, cc = np.ogrid[:size, :size]
    mask |= np.abs(np.hypot(rr - size * 0.4, cc - size * 0.6) - size * 0.3) <= 3.5  # a ring road
    return mask


@pytest.mark.parametrize("block", [64, 100, 128])
def test_blockwise_equals_whole_mask(block):
    mask = random_roads(360, seed=block)
    whole = vectorise_mask(mask, UTM, "EPSG:32619")
    blocks = vectorise_mask(mask, UTM, "EPSG:32619", block_size=block)
    assert len(blocks) == len(whole) > 10
    assert blocks["length_m"].sum() == pytest.approx(whole["length_m"].sum(), rel=1e-3)
    assert sorted(d for _, d in network(blocks).degree()) == sorted(d for _, d in network(whole).degree())
    assert nx.number_connected_components(network(blocks)) == nx.number_connected_components(network(whole))
    np.testing.assert_allclose(blocks["length_m"], whole["length_m"], rtol=1e-6)  # same lines, same order
    ends = {(round(x, 3), round(y, 3)) for g in whole.geometry for x, y in shapely.get_coordinates(g)[[0, -1]]}
    assert {(round(x, 3), round(y, 3)) for g in blocks.geometry
            for x, y in shapely.get_coordinates(g)[[0, -1]]} == ends


@needs_shared_data
def test_blockwise_equals_whole_on_a_real_mask():
    with rasterio.open(sorted((SHARED_DATA / "masks").glob("*.png"))[0]) as src:
        mask = src.read(1)[:768, :768] > 127
    whole = vectorise_mask(mask)
    blocks = vectorise_mask(mask, block_size=200)
    assert len(blocks) == len(whole) > 5
    assert blocks["length_m"].sum() == pytest.approx(whole["length_m"].sum(), rel=1e-3)
    assert nx.number_connected_components(network(blocks)) == nx.number_connected_components(network(whole))


def test_a_long_road_across_many_blocks_stays_one_line():
    mask = np.zeros((200, 600), bool)
    segment(mask, (30, 10), (170, 590))
    gdf = vectorise_mask(mask, block_size=64)
    assert len(gdf) == 1
    assert gdf["length_m"].iloc[0] == pytest.approx(math.hypot(140, 580) - 7, rel=0.02)


def test_a_mask_wider_than_sknw_coordinates_reach():
    mask = np.zeros((40, 40000), bool)  # small enough for one block, too wide for int16
    mask[17:24, 100:39900] = True
    gdf = vectorise_mask(mask)
    assert len(gdf) == 1
    assert gdf["length_m"].iloc[0] == pytest.approx(39800 - 7, abs=3)
    assert shapely.get_coordinates(gdf.geometry.iloc[0])[:, 0].max() > 39890


def test_progress_and_cancel():
    seen = []
    vectorise_mask(horizontal(), block_size=64, on_progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) == 10  # 2 x 5 blocks
    with pytest.raises(Cancelled):
        vectorise_mask(horizontal(), block_size=64, is_cancelled=lambda: True)


def test_bad_arguments():
    with pytest.raises(RasterError, match="2-D"):
        vectorise_mask(np.zeros((2, 10, 10), bool))
    with pytest.raises(ValueError, match="gap"):
        vectorise_mask(horizontal(), gap=-1)
    with pytest.raises(ValueError, match="halo"):
        vectorise_mask(horizontal(), halo=4)


def test_params_dataclass_drives_the_functions():
    params = VectoriseParams(gap=5)
    mask = horizontal()
    mask[:, 145:151] = False
    assert len(vectorise_mask(mask, **params.kwargs())) == 2
    assert VectoriseParams().min_length == 20.0


def write_tif(path, array, transform=UTM, crs="EPSG:32619", nodata=None):
    return write_raster(path, array, transform=transform, crs=crs, nodata=nodata, tiled=True, blockxsize=64,
                        blockysize=64)


def test_vectorise_raster_reads_probability_mask_and_float_rasters(tmp_path):
    mask = random_roads(300, seed=3)
    expected = vectorise_mask(mask, UTM, "EPSG:32619", prob=np.where(mask, 0.9, 0.2))
    prob255 = np.where(mask, 230, 51).astype(np.uint8)  # 0.9 / 0.2
    got = vectorise_raster(write_tif(tmp_path / "p.tif", prob255), block_size=128)
    assert got.crs.to_epsg() == 32619
    assert len(got) == len(expected)
    assert got["length_m"].sum() == pytest.approx(expected["length_m"].sum(), rel=1e-3)
    assert got["mean_prob"].mean() == pytest.approx(0.9, abs=0.01)
    binary = vectorise_raster(write_tif(tmp_path / "m.tif", mask.astype(np.uint8)), block_size=100)
    assert len(binary) == len(expected) and binary["mean_prob"].isna().all()
    floats = vectorise_raster(write_tif(tmp_path / "f.tif", np.where(mask, 0.7, 0.4).astype(np.float32)),
                              threshold=0.6)
    assert len(floats) == len(expected)
    assert floats["mean_prob"].mean() == pytest.approx(0.7, abs=0.01)
    assert len(vectorise_raster(tmp_path / "p.tif", threshold=240)) == 0  # raw 0..255 threshold


def test_vectorise_raster_nodata_is_not_road(tmp_path):
    mask = horizontal().astype(np.uint8) * 200
    mask[:, 150:] = 255  # declared nodata
    gdf = vectorise_raster(write_tif(tmp_path / "n.tif", mask, nodata=255))
    assert len(gdf) == 1
    assert gdf["length_m"].iloc[0] == pytest.approx(0.6 * (150 - 20 - 3.5), abs=0.6 * 3)


def test_vectorise_raster_errors_name_the_file(tmp_path):
    with pytest.raises(RasterError, match="missing.tif"):
        vectorise_raster(tmp_path / "missing.tif")
    path = write_tif(tmp_path / "one.tif", horizontal().astype(np.uint8))
    with pytest.raises(RasterError, match="band 2"):
        vectorise_raster(path, band=2)


def test_faint_probability_map_from_the_engine_is_not_read_as_a_mask(tmp_path):
    import rasterio
    from rasterio.transform import from_origin

    from roadseg_plugin.core.vectorise import vectorise_raster

    prob = np.zeros((128, 128), np.uint8)
    prob[60:67, :] = 1  # probability 1/255 along a line: no road at threshold 0.5
    path = write_raster(tmp_path / "prob.tif", prob, crs="EPSG:32619", transform=from_origin(300000, 4600000, 1, 1),
                        tags={"ROADSEG_VALUES": "road probability x 255"})
    assert len(vectorise_raster(path)) == 0
    with rasterio.open(path, "r+") as dst:
        dst.update_tags(ROADSEG_VALUES="binary road mask (1 road, 0 background)")
    assert len(vectorise_raster(path)) == 1


def ellipsoid_lengths(lines) -> list[float]:
    """Each line of a GeoDataFrame measured on its CRS's ellipsoid, as a GIS measures it: the
    vertices taken to the CRS's own lon/lat by pyproj, the geodesic length by pyproj's Geod."""
    from pyproj import CRS, Transformer

    crs = CRS(lines.crs)
    to_lonlat = Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True)
    geod = crs.get_geod()
    lengths = []
    for line in lines.geometry:
        lon, lat = to_lonlat.transform(*np.asarray(line.coords).T)
        lengths.append(geod.line_length(lon, lat))
    return lengths


@pytest.mark.parametrize("transform", [Affine(0.6, 0.3, 330000.0, 0.1, -0.6, 4690000.0),  # sheared
                                       Affine.translation(330000.0, 4690000.0) * Affine.rotation(30)
                                       * Affine.scale(0.6, -0.6)], ids=["sheared", "rotated"])
def test_length_is_the_written_line_measured_in_its_crs(transform):
    mask = horizontal()
    segment(mask, (10, 150), (90, 150))  # a crossing road: lines in two directions
    gdf = vectorise_mask(mask, transform, "EPSG:32619", min_length=5)
    assert len(gdf) >= 3
    np.testing.assert_allclose(gdf["length_m"], ellipsoid_lengths(gdf), rtol=1e-9)
    np.testing.assert_allclose(gdf["length_m"], gdf.geometry.length, rtol=1e-3)  # UTM: grid within 0.1 %
    side = math.sqrt(abs(transform.determinant))  # the side of a square of the pixel's area
    assert gdf["width_m"].median() == pytest.approx(7 * side, rel=0.1)


def test_length_in_feet_is_the_written_line_in_metres():
    feet = Affine(2.0, 0.5, 700000.0, 0.0, -2.0, 3000000.0)  # EPSG:2249, US survey feet, sheared
    gdf = vectorise_mask(horizontal(), feet, "EPSG:2249", min_length=5)
    np.testing.assert_allclose(gdf["length_m"], ellipsoid_lengths(gdf), rtol=1e-9)
    np.testing.assert_allclose(gdf["length_m"], gdf.geometry.length * 0.3048006096, rtol=1e-3)


def test_geographic_length_is_geodesic():
    from pyproj import Geod

    deg = 1e-5
    rotated = Affine.translation(-70.0, 45.0) * Affine.rotation(20) * Affine.scale(deg, -deg)
    gdf = vectorise_mask(horizontal(), rotated, "EPSG:4326", min_length=5)
    geod = Geod(ellps="WGS84")
    expected = [geod.geometry_length(g) for g in gdf.geometry]
    np.testing.assert_allclose(gdf["length_m"], expected, rtol=1e-9)


def test_truncated_raster_and_gcp_only_raster_are_raster_errors(tmp_path):
    from rasterio.control import GroundControlPoint

    path = write_tif(tmp_path / "p.tif", np.tile(horizontal().astype(np.uint8) * 200, (4, 4)))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(RasterError, match="p.tif: (reading failed|cannot open)"):
        vectorise_raster(path)
    gcps = [GroundControlPoint(row=r, col=c, x=330000 + c, y=4690000 - r) for r, c in ((0, 0), (0, 300), (100, 0))]
    gcp_only = tmp_path / "gcp.tif"
    write_raster(gcp_only, horizontal().astype(np.uint8), gcps=(gcps, "EPSG:32619"))
    with pytest.raises(RasterError, match="ground control points only"):
        vectorise_raster(gcp_only)


def test_a_line_cut_where_a_side_road_joins_keeps_each_parts_own_width():
    """The parts of a road cut at a side road's joint carry their own pixels' width, not a shared mean."""
    mask = np.zeros((200, 300), bool)
    mask[45:56, 20:150] = True  # 11 px wide on the left
    mask[48:53, 150:280] = True  # 5 px on the right
    mask[62:180, 147:154] = True  # a side road stopping 6 px short of the road
    gdf = vectorise_mask(mask, min_length=5)
    assert len(gdf) == 3 and nx.number_connected_components(network(gdf)) == 1
    assert not gdf.duplicated(["width_m", "mean_prob"]).any()
    ends = {round(shapely.get_coordinates(g)[:, 0].mean()): w
            for g, w in zip(gdf.geometry, gdf["width_m"], strict=True)}
    left, right = ends[min(ends)], ends[max(ends)]
    assert left == pytest.approx(11, abs=1) and right == pytest.approx(5, abs=1)


@needs_shared_data
def test_real_roads_have_no_stubs_and_no_copied_attributes(tmp_path):
    """The bundled model on a real 1 m tile (suburban streets): no line of a few metres survives
    (dangling stubs beyond a joint, links between two junctions of one crossing), and no two lines
    share width and probability to the last digit (a cut line used to hand both parts its mean)."""
    from roadseg_plugin.core.engine import segment_raster

    tif = copy_window(SHARED_DATA / "images" / "19678630_15.png", tmp_path / "tile.tif",
                      rasterio.windows.Window(100, 100, 800, 800), crs="EPSG:26986",
                      transform=Affine(1, 0, 230000, 0, -1, 905000))
    result = segment_raster(tif, tmp_path / "prob.tif", device="cpu")
    lines = vectorise_raster(result.path, threshold=result.threshold)
    assert len(lines) > 30
    assert lines["length_m"].min() > 5, sorted(lines["length_m"])[:5]
    assert not lines.duplicated(["width_m", "mean_prob"]).any()


def test_a_crossing_seen_twice_is_one_junction():
    """Two side roads meeting a road 4 px apart are one crossing: no 2-4 m link between junctions."""
    mask = horizontal(h=200, w=300, row=100)
    mask[20:100, 146:153] = True  # from the top at column 149
    mask[100:180, 150:157] = True  # from the bottom at column 153
    gdf = vectorise_mask(mask, min_length=5)
    graph = network(gdf)
    assert len(gdf) == 4 and gdf["length_m"].min() > 50, gdf["length_m"].tolist()
    assert sorted(d for _, d in graph.degree()) == [1, 1, 1, 1, 4]
