

# ---- Plugin GUI / task fixtures (RoadSegPlugin, SegmentDialog, RoadSegTask) -------------------
import numpy as _np  # noqa: E402
import pytest as _pytest  # noqa: E402

from tests.conftest import draw_roads as _draw_roads, road_image as _road_image  # noqa: E402

UTM19_ORIGIN = (330000.0, 4690000.0)  # a 1 m grid in EPSG:32619 (Massachusetts)


def write_road_geotiff(path, size: int = 96, seed: int = 0, crs: str = "EPSG:32619",
                       origin: tuple[float, float] = UTM19_ORIGIN, gsd: float = 1.0):
    """Write a small georeferenced RGB GeoTIFF of drawn roads; returns (path, road mask)."""
    import rasterio
    from affine import Affine

    rng = _np.random.default_rng(seed)
    mask = _draw_roads(size, rng)
    image = _road_image(mask, rng)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                       crs=crs, transform=Affine(gsd, 0, origin[0], 0, -gsd, origin[1])) as dst:
        dst.write(image)
    return path, mask


@_pytest.fixture
def road_geotiff(tmp_path):
    """Path of a 96x96 1 m GeoTIFF in EPSG:32619 with drawn roads."""
    return write_road_geotiff(tmp_path / "roads_utm19.tif")[0]


@_pytest.fixture
def road_raster_layer(qgis_new_project, road_geotiff):
    """`road_geotiff` loaded into a fresh project as a QgsRasterLayer."""
    from qgis.core import QgsRasterLayer

    layer = QgsRasterLayer(str(road_geotiff), "aerial")
    assert layer.isValid(), road_geotiff
    qgis_new_project.addMapLayer(layer)
    return layer
