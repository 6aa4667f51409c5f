"""Segment roads on a web map layer (XYZ tiles over HTTP), end to end in real QGIS.

The tiles are cut by `gdal2tiles.py` from a real aerial image (the repository's sample crop, put
on its 1 m UTM grid) and served by `python -m http.server` on 127.0.0.1; the layer is a QGIS XYZ
connection to it, in EPSG:3857 at 42.4 N where a Web Mercator unit is 0.74 m on the ground.
"""
from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio

from tests.core.test_vectorise import ellipsoid_lengths
from tests.plugin.conftest import lines_layer
from tests.plugin.web_map import georeferenced_sample, sample_extent_3857, tile_pyramid, tile_server, xyz_source

SIZE = 512  # px of the sample cut into tiles (metres on the ground)


@pytest.fixture(scope="module")
def web_map(tmp_path_factory):
    """(the UTM GeoTIFF the tiles were cut from, the base URL they are served at)."""
    folder = tmp_path_factory.mktemp("xyz")
    image = georeferenced_sample(folder / "sample_utm19.tif", SIZE)
    with tile_server(tile_pyramid(image, folder / "tiles")) as url:
        yield image, url


@pytest.fixture
def xyz_layer(web_map, qgis_new_project):
    from qgis.core import QgsRasterLayer

    layer = QgsRasterLayer(xyz_source(web_map[1]), "Aerial (XYZ)", "wms")
    assert layer.isValid() and layer.crs().authid() == "EPSG:3857"
    qgis_new_project.addMapLayer(layer)
    return layer


def extent_text(extent: tuple[float, float, float, float], crs: str = "EPSG:3857") -> str:
    xmin, ymin, xmax, ymax = extent
    return f"{xmin},{xmax},{ymin},{ymax} [{crs}]"


def run(params: dict):
    import processing

    return processing.run("roadseg:segmentroads", {"DEVICE": "cpu", **params})


def test_segment_roads_on_an_xyz_layer(roadseg_provider, web_map, xyz_layer, tmp_path: Path) -> None:
    from roadseg_plugin.core.gsd import pixel_size_m

    out, prob = tmp_path / "roads.gpkg", tmp_path / "prob.tif"
    run({"INPUT": xyz_layer, "EXTENT": extent_text(sample_extent_3857(SIZE)), "OUTPUT": str(out),
         "MASK_OUTPUT": str(prob)})
    lines = gpd.read_file(out)
    assert lines.crs.to_epsg() == 3857 and len(lines) >= 5
    with rasterio.open(prob) as src:  # read at the model's 1 m on the ground, not 1 Mercator unit
        assert pixel_size_m(src.crs, src.transform, src.width, src.height) == pytest.approx((1.0, 1.0), rel=0.01)
        assert src.width == pytest.approx(SIZE - 16, rel=0.05)  # the UTM square seen from Web Mercator: turned 1.4 deg
    assert lines["length_m"].tolist() == pytest.approx(ellipsoid_lengths(lines), rel=1e-9)  # true metres
    # the same image straight from its UTM GeoTIFF: about the same road network, in the same metres
    utm = tmp_path / "utm.gpkg"
    run({"INPUT": str(web_map[0]), "OUTPUT": str(utm)})
    reference = gpd.read_file(utm)
    assert lines["length_m"].sum() == pytest.approx(reference["length_m"].sum(), rel=0.25)
    assert lines.geometry.length.sum() > 1.25 * lines["length_m"].sum()  # Mercator units: 1.35 x the ground


def test_the_whole_web_map_is_refused_before_any_work(roadseg_provider, xyz_layer, tmp_path: Path) -> None:
    from qgis.core import QgsProcessingException

    out = tmp_path / "roads.gpkg"
    with pytest.raises(QgsProcessingException) as caught:
        run({"INPUT": xyz_layer, "OUTPUT": str(out)})
    message = str(caught.value)
    assert message.startswith("Aerial (XYZ): a web map layer (tiles from a map service) has no extent of its own")
    assert "choose the area to process" in message and "areas of interest" in message and "\n" not in message
    assert not out.exists() and not list(tmp_path.iterdir())


def test_areas_of_interest_on_an_xyz_layer(roadseg_provider, xyz_layer, tmp_path: Path) -> None:
    """Polygons (here in WGS84) as the only area processed: every line lies inside them."""
    import shapely
    from pyproj import Transformer

    xmin, ymin, xmax, ymax = sample_extent_3857(SIZE)
    half = shapely.box(xmin, ymin, (xmin + xmax) / 2, ymax)
    to_wgs84 = Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True)
    polygon = shapely.transform(half.segmentize(10), lambda xy: np.column_stack(to_wgs84.transform(xy[:, 0], xy[:, 1])))
    areas = lines_layer([polygon.wkt], crs="EPSG:4326", kind="Polygon", name="areas")
    out = tmp_path / "roads.gpkg"
    run({"INPUT": xyz_layer, "AOI": areas, "OUTPUT": str(out)})
    lines = gpd.read_file(out)
    assert len(lines) >= 2
    assert lines.geometry.within(half.buffer(2.0)).all()  # 2 Mercator units: the pixel centres inside
    assert lines.total_bounds[2] < (xmin + xmax) / 2 + 2
