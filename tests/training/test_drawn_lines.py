"""training.drawn_lines: labels from digitised road lines, on real GeoTIFFs, without QGIS."""
from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from shapely.geometry import LineString, box

from roadseg_plugin.core.errors import DatasetError
from tests.conftest import road_image
from tests.rasters import write_raster as write_array
from training.datasets import load_tiles
from training.drawn_lines import make_label_dataset, rasterise_lines, tile_windows

X0, Y0 = 330000.0, 4690000.0  # top-left corner, EPSG:32619, 1 m pixels
UTM = "EPSG:32619"


def write_raster(path: Path, size: int = 200, crs: str = UTM, res: float = 1.0,
                 origin: tuple[float, float] = (X0, Y0)) -> Path:
    mask = np.zeros((size, size), bool)
    mask[size // 2 - 3:size // 2 + 4, :] = True  # rows 97..103 for 200 px  # an east-west road through the middle
    image = road_image(mask, np.random.default_rng(1))
    return write_array(path, image, crs=crs, transform=from_origin(*origin, res, res))


def middle_road(size: int = 200) -> gpd.GeoDataFrame:
    y = Y0 - size / 2 - 0.5  # through pixel centres of row size/2
    return gpd.GeoDataFrame(geometry=[LineString([(X0 - 50, y), (X0 + size + 50, y)])], crs=UTM)


def test_lines_in_another_crs_are_reprojected_and_buffered(tmp_path: Path) -> None:
    lines = middle_road().to_crs("EPSG:4326")
    mask = rasterise_lines(lines, (200, 200), from_origin(X0, Y0, 1, 1), rasterio.crs.CRS.from_string(UTM), 3.5)
    rows = np.flatnonzero(mask.any(axis=1))
    assert mask[:, 0].sum() == mask[:, -1].sum() == 7  # 3.5 m each side at 1 m pixels
    assert rows.min() == 97 and rows.max() == 103


def test_buffer_is_in_metres_on_a_geographic_raster() -> None:
    deg = 1.0 / 111_000  # about a metre
    lon0, lat0 = -69.0, 42.0
    transform = from_origin(lon0, lat0, deg, deg)
    lines = gpd.GeoDataFrame(geometry=[LineString([(lon0, lat0 - 100 * deg), (lon0 + 200 * deg, lat0 - 100 * deg)])],
                             crs="EPSG:4326")
    mask = rasterise_lines(lines, (200, 200), transform, rasterio.crs.CRS.from_epsg(4326), 5.0)
    assert 9 <= mask[:, 100].sum() <= 11  # 10 m wide, about 10 rows of ~1 m


def test_tile_windows_cover_without_overlap() -> None:
    wins = tile_windows(300, 200, 128)
    assert len(wins) == 3 * 2
    assert sum(w.width * w.height for w in wins) == 300 * 200
    assert {w.width for w in wins} == {100}


def test_make_label_dataset_with_aoi(tmp_path: Path) -> None:
    raster = write_raster(tmp_path / "area.tif")
    aoi = gpd.GeoDataFrame(geometry=[box(X0, Y0 - 200, X0 + 100, Y0)], crs=UTM)  # the western half
    out = make_label_dataset([raster], middle_road(), tmp_path / "ds", buffer_m=3.5, aoi=aoi, tile=512)
    images = sorted((out / "images").glob("*.tif"))
    assert len(images) >= 2 and len(images) == len(list((out / "masks").glob("*.tif")))
    tiles = load_tiles(out)
    valid = sum(t.valid.sum() for t in tiles)
    assert valid == 100 * 200  # only the AOI is labelled
    assert sum(t.mask.sum() for t in tiles) == 7 * 100  # the road inside the AOI
    with rasterio.open(images[0]) as src:
        assert src.crs == rasterio.crs.CRS.from_string(UTM)
        assert src.count == 3 and src.dtypes[0] == "uint8"


def test_without_aoi_the_whole_raster_is_labelled_and_split_into_tiles(tmp_path: Path) -> None:
    rasters = [write_raster(tmp_path / "a.tif"), write_raster(tmp_path / "b.tif", origin=(X0 + 1000, Y0))]
    out = make_label_dataset(rasters, middle_road(), tmp_path / "ds", tile=128)
    tiles = load_tiles(out)
    assert len(tiles) == 2 * 4
    assert sum(t.valid.sum() for t in tiles) == 2 * 200 * 200
    assert sum(t.mask.sum() for t in tiles) == 7 * 200  # the line only crosses raster a


@pytest.mark.parametrize("case, message", [
    ("empty", "has no lines"),
    ("outside", "falls on the raster"),
    ("aoi_outside", "does not overlap"),
    ("aoi_empty", "has no polygons"),
])
def test_clear_errors(tmp_path: Path, case: str, message: str) -> None:
    raster = write_raster(tmp_path / "area.tif")
    lines, aoi = middle_road(), None
    if case == "empty":
        lines = gpd.GeoDataFrame(geometry=[], crs=UTM)
    elif case == "outside":
        lines = lines.translate(xoff=10_000)
        lines = gpd.GeoDataFrame(geometry=lines, crs=UTM)
    elif case == "aoi_outside":
        aoi = gpd.GeoDataFrame(geometry=[box(X0 + 5000, Y0 - 100, X0 + 5100, Y0)], crs=UTM)
    elif case == "aoi_empty":
        aoi = gpd.GeoDataFrame(geometry=[], crs=UTM)
    with pytest.raises(DatasetError, match=message):
        make_label_dataset([raster], lines, tmp_path / "ds", aoi=aoi)


def test_non_8bit_raster_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f.tif"
    write_array(path, np.zeros((3, 64, 64), np.float32), crs=UTM, transform=from_origin(X0, Y0, 1, 1))
    with pytest.raises(DatasetError, match="8-bit"):
        make_label_dataset([path], middle_road(), tmp_path / "ds")


def test_white_no_data_tiles_are_left_out(tmp_path: Path) -> None:
    path = write_raster(tmp_path / "area.tif")
    with rasterio.open(path, "r+") as dst:
        image = dst.read()
        image[:, :, 100:] = 255  # the eastern half is white no-data, as in the Massachusetts tiles
        dst.write(image)
    out = make_label_dataset([path], middle_road(), tmp_path / "ds", tile=100)
    tiles = load_tiles(out)
    assert len(tiles) == 2  # the two western tiles
    assert all(t.valid.all() for t in tiles)
    with rasterio.open(path, "r+") as dst:
        dst.write(np.full((3, 200, 200), 255, np.uint8))
    with pytest.raises(DatasetError, match="no-data"):
        make_label_dataset([path], middle_road(), tmp_path / "ds2")
