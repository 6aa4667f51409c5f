"""roadseg:vectorisemask through processing.run on real mask rasters."""
from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine

from tests.conftest import draw_roads
from tests.plugin.test_processing_segment_roads import FIELDS, on_roads
from tests.rasters import write_raster

TRANSFORM = Affine(1, 0, 330000, 0, -1, 4690000)


def write_mask(path: Path, values: np.ndarray, crs: str = "EPSG:32619") -> Path:
    return write_raster(path, values, crs=crs, transform=TRANSFORM)


@pytest.fixture
def road_mask() -> np.ndarray:
    return draw_roads(200, np.random.default_rng(4), n=3, width=7)


def run(params: dict):
    import processing

    return processing.run("roadseg:vectorisemask", params)


@pytest.mark.parametrize("scale, dtype", [(255, "uint8"), (1, "uint8"), (0.9, "float32")])
def test_mask_kinds_give_lines_on_the_roads(roadseg_provider, road_mask, tmp_path: Path, scale, dtype) -> None:
    path = write_mask(tmp_path / "mask.tif", (road_mask * scale).astype(dtype))
    out = tmp_path / "roads.gpkg"
    run({"INPUT": str(path), "OUTPUT": str(out)})
    lines = gpd.read_file(out)
    assert list(lines.columns[:4]) == FIELDS and len(lines) >= 2
    assert lines.crs.to_epsg() == 32619
    assert on_roads(lines, road_mask, TRANSFORM, tolerance_px=2) > 0.95
    assert lines["width_m"].between(4, 10).all()  # 7 px roads at 1 m


def test_clean_up_parameters_and_shapefile(roadseg_provider, road_mask, tmp_path: Path) -> None:
    path = write_mask(tmp_path / "mask.tif", (road_mask * 255).astype("uint8"))
    shp = tmp_path / "roads.shp"
    run({"INPUT": str(path), "MIN_LENGTH": 10, "SPUR_LENGTH": 5, "GAP": 5, "TOLERANCE": 0.5, "SMOOTH": True,
         "THRESHOLD": 0.5, "OUTPUT": str(shp)})
    assert shp.with_suffix(".prj").is_file()
    lines = gpd.read_file(shp)
    assert list(lines.columns[:4]) == FIELDS and len(lines) >= 2
    # a minimum length longer than the raster drops everything
    run({"INPUT": str(path), "MIN_LENGTH": 10_000, "OUTPUT": str(tmp_path / "none.gpkg")})
    assert len(gpd.read_file(tmp_path / "none.gpkg")) == 0


def test_smoothing(roadseg_provider, road_mask, tmp_path: Path) -> None:
    path = write_mask(tmp_path / "mask.tif", (road_mask * 255).astype("uint8"))
    run({"INPUT": str(path), "SMOOTH": True, "OUTPUT": str(tmp_path / "smooth.gpkg")})
    lines = gpd.read_file(tmp_path / "smooth.gpkg")
    assert len(lines) >= 2 and on_roads(lines, road_mask, TRANSFORM, tolerance_px=2) > 0.95


def test_non_file_mask_layer(roadseg_provider, road_mask, tmp_path: Path) -> None:
    from osgeo import gdal
    from qgis.core import QgsRasterLayer

    path = write_mask(tmp_path / "mask.tif", (road_mask * 255).astype("uint8"))
    gdal.Translate("/vsimem/roadseg_mask.tif", str(path))
    try:
        layer = QgsRasterLayer("/vsimem/roadseg_mask.tif", "in memory", "gdal")
        assert layer.isValid()
        run({"INPUT": layer, "OUTPUT": str(tmp_path / "roads.gpkg")})
    finally:
        gdal.Unlink("/vsimem/roadseg_mask.tif")
    lines = gpd.read_file(tmp_path / "roads.gpkg")
    assert lines.crs.to_epsg() == 32619 and on_roads(lines, road_mask, TRANSFORM, tolerance_px=2) > 0.95


def test_parameters_are_generated_from_vectorise_params(roadseg_provider) -> None:
    """One parameter per VectoriseParams option (the sink decides the format), with the core's defaults."""
    from dataclasses import fields

    from qgis.core import QgsApplication, QgsProcessingParameterDefinition

    from roadseg_plugin.adapters.options import qgis_words
    from roadseg_plugin.core.params import VectoriseParams, describe

    alg = QgsApplication.processingRegistry().algorithmById("roadseg:vectorisemask")
    for f in fields(VectoriseParams):
        definition = alg.parameterDefinition(f.name.upper())
        if f.name == "format":
            assert definition is None
            continue
        info = describe(VectoriseParams, f.name)
        assert definition is not None, f"no parameter for {f.name}"
        assert definition.defaultValue() == info["default"], f.name
        assert bool(definition.flags() & QgsProcessingParameterDefinition.FlagAdvanced) == info["advanced"]
        assert qgis_words(info["help"]) in alg.shortHelpString()  # "unset" is "empty" in QGIS


def test_threshold_stored_in_a_probability_raster_is_used(roadseg_provider, road_mask, tmp_path: Path) -> None:
    """Left empty, the threshold is the one RoadSeg recorded in the raster (here 0.9: only the 240s are road)."""
    values = np.where(road_mask, 240, 0).astype("uint8")
    values[:, :100] = np.where(road_mask[:, :100], 200, 0)  # left half: probability 0.78, under 0.9
    path = write_mask(tmp_path / "prob.tif", values)
    with rasterio.open(path, "r+") as dst:
        dst.update_tags(ROADSEG_THRESHOLD="0.9")
    run({"INPUT": str(path), "OUTPUT": str(tmp_path / "stored.gpkg")})
    run({"INPUT": str(path), "THRESHOLD": 0.5, "OUTPUT": str(tmp_path / "given.gpkg")})
    stored, given = gpd.read_file(tmp_path / "stored.gpkg"), gpd.read_file(tmp_path / "given.gpkg")
    assert stored.total_bounds[0] >= 330000 + 95 and given.total_bounds[0] < 330000 + 50


def test_loaded_lines_are_named_and_styled(roadseg_provider, road_mask, qgis_new_project, tmp_path: Path) -> None:
    import processing
    from qgis.core import QgsRasterLayer, QgsSingleSymbolRenderer

    from roadseg_plugin.adapters.styles import ROAD_COLOUR

    path = write_mask(tmp_path / "mask.tif", (road_mask * 255).astype("uint8"))
    mask_layer = QgsRasterLayer(str(path), "my mask")
    qgis_new_project.addMapLayer(mask_layer)
    processing.runAndLoadResults("roadseg:vectorisemask", {"INPUT": mask_layer, "OUTPUT": "TEMPORARY_OUTPUT"})
    loaded = qgis_new_project.mapLayersByName("Roads (my mask)")
    assert len(loaded) == 1 and loaded[0].featureCount() >= 2
    renderer = loaded[0].renderer()
    assert isinstance(renderer, QgsSingleSymbolRenderer) and renderer.symbol().symbolLayer(1).color() == ROAD_COLOUR
