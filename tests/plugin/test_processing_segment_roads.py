"""roadseg:segmentroads through processing.run, with a tiny model that really finds drawn roads."""
from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.features import rasterize

from tests.conftest import needs_shared_data
from tests.plugin.conftest import assert_options_arrived, fake_extract_roads, option_names, option_table

FIELDS = ["id", "length_m", "width_m", "mean_prob"]


def on_roads(lines: gpd.GeoDataFrame, mask: np.ndarray, transform: Affine, tolerance_px: int = 4) -> float:
    """Fraction of the line pixels that lie within `tolerance_px` of a true road pixel."""
    from scipy import ndimage

    burnt = rasterize(((g, 1) for g in lines.geometry), out_shape=mask.shape, transform=transform, fill=0,
                      dtype="uint8").astype(bool)
    near = ndimage.binary_dilation(mask, iterations=tolerance_px)
    return float((burnt & near).sum() / max(burnt.sum(), 1))


def run(params: dict, **kw):
    import processing

    return processing.run("roadseg:segmentroads", params, **kw)


def test_lines_where_roads_are_in_the_raster_crs(roadseg_provider, road_rasters, road_model, tmp_path: Path) -> None:
    path, mask = road_rasters("area.tif", size=256, seed=3)
    out = tmp_path / "roads.gpkg"
    result = run({"INPUT": str(path), "MODEL": str(road_model), "DEVICE": "cpu", "MIN_LENGTH": 10,
                  "OUTPUT": str(out)})
    assert result["OUTPUT"] == str(out)
    lines = gpd.read_file(out)
    assert len(lines) >= 2
    assert lines.crs.to_epsg() == 32619
    assert list(lines.columns[:4]) == FIELDS
    assert on_roads(lines, mask, Affine(1, 0, 330000, 0, -1, 4690000)) > 0.9
    assert lines["mean_prob"].between(0.4, 1).all() and (lines["length_m"] >= 10).all()
    # a drawn road crosses the whole raster: the network is about as long as the roads
    assert lines["length_m"].sum() > 0.6 * 256 * (mask.all(axis=0).any() + mask.all(axis=1).any())


def test_shapefile_with_fields_prj_and_probability_raster(roadseg_provider, road_rasters, road_model,
                                                          tmp_path: Path) -> None:
    path, mask = road_rasters("area.tif", size=192, seed=5)
    shp, prob = tmp_path / "roads.shp", tmp_path / "prob.tif"
    result = run({"INPUT": str(path), "MODEL": str(road_model), "THRESHOLD": 0.5, "OUTPUT": str(shp),
                  "MASK_OUTPUT": str(prob)})
    assert result["MASK_OUTPUT"] == str(prob)
    for suffix in (".shp", ".shx", ".dbf", ".prj"):
        assert shp.with_suffix(suffix).is_file(), suffix
    assert "utm_zone_19n" in shp.with_suffix(".prj").read_text().lower().replace(" ", "_")
    lines = gpd.read_file(shp)
    assert list(lines.columns[:4]) == FIELDS and len(lines) >= 1
    with rasterio.open(prob) as src:
        assert src.crs.to_epsg() == 32619 and src.dtypes[0] == "uint8"
        values = src.read(1)
    assert values[mask].mean() > values[~mask].mean() + 80  # probability x 255: roads stand out


def test_batch_two_rasters_one_output_each(roadseg_provider, road_rasters, road_model, tmp_path: Path) -> None:
    """What the toolbox's batch mode does: the same algorithm once per raster, each to its own file."""
    from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingFeedback

    alg = QgsApplication.processingRegistry().algorithmById("roadseg:segmentroads")
    outputs = []
    for i in range(2):
        path, _ = road_rasters(f"area{i}.tif", size=128, seed=10 + i, origin=(330000 + 1000 * i, 4690000))
        context, feedback = QgsProcessingContext(), QgsProcessingFeedback()
        params = {"INPUT": str(path), "MODEL": str(road_model), "OUTPUT": str(tmp_path / f"roads{i}.gpkg")}
        ok, message = alg.checkParameterValues(params, context)
        assert ok, message
        results, ok = alg.run(params, context, feedback)
        assert ok and results["OUTPUT"] == str(tmp_path / f"roads{i}.gpkg")
        outputs.append(gpd.read_file(results["OUTPUT"]))
    assert all(len(lines) for lines in outputs)
    assert outputs[1].total_bounds[0] >= 331000 > outputs[0].total_bounds[2]


def test_non_file_layer_and_extent_through_the_provider_reader(roadseg_provider, road_rasters, road_model,
                                                                tmp_path: Path) -> None:
    from osgeo import gdal
    from qgis.core import QgsRasterLayer

    path, mask = road_rasters("area.tif", size=256, seed=3)
    vrt = tmp_path / "area.vrt"
    gdal.BuildVRT(str(vrt), [str(path)])
    xml = vrt.read_text().replace('relativeToVRT="1">area.tif', f'relativeToVRT="0">{path}')
    layer = QgsRasterLayer(xml, "vrt from a string", "gdal")  # not a file: read through the data provider
    assert layer.isValid()
    prob = tmp_path / "prob.tif"
    extent = "330000,330128,4689872,4690000 [EPSG:32619]"  # the north-west quarter
    run({"INPUT": layer, "MODEL": str(road_model), "EXTENT": extent, "OUTPUT": str(tmp_path / "roads.gpkg"),
         "MASK_OUTPUT": str(prob), "MIN_LENGTH": 5})
    with rasterio.open(prob) as src:
        assert (src.width, src.height) == (128, 128)
        assert src.transform == Affine(1, 0, 330000, 0, -1, 4690000)
        values = src.read(1)
    quarter = mask[:128, :128]
    assert quarter.any()
    assert values[quarter].mean() > values[~quarter].mean() + 80


def test_cancel_writes_nothing(roadseg_provider, road_rasters, road_model, tmp_path: Path) -> None:
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    path, _ = road_rasters("area.tif", size=128)
    feedback = QgsProcessingFeedback()
    feedback.cancel()
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        run({"INPUT": str(path), "MODEL": str(road_model), "OUTPUT": str(tmp_path / "roads.gpkg"),
             "MASK_OUTPUT": str(tmp_path / "prob.tif")}, feedback=feedback)
    assert not (tmp_path / "prob.tif").exists() and not (tmp_path / "roads.gpkg").exists()


def test_bad_model_is_a_clear_processing_error(roadseg_provider, road_rasters, tmp_path: Path) -> None:
    from qgis.core import QgsProcessingException

    path, _ = road_rasters("area.tif", size=64)
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(QgsProcessingException, match="broken.pt"):
        run({"INPUT": str(path), "MODEL": str(bad), "OUTPUT": str(tmp_path / "roads.gpkg")})


@needs_shared_data
def test_real_tile_with_the_bundled_model(roadseg_provider, mass_tile, tmp_path: Path) -> None:
    from roadseg_plugin.core.params import BUNDLED_MODEL

    if not BUNDLED_MODEL.is_file():
        pytest.skip(f"no bundled model at {BUNDLED_MODEL} yet")
    image, mask_path = mass_tile
    out = tmp_path / "roads.shp"
    run({"INPUT": str(image), "OUTPUT": str(out)})
    lines = gpd.read_file(out)
    assert lines.crs.to_epsg() == 26919 and len(lines) > 0
    with rasterio.open(mask_path) as src:
        mask = src.read(1) > 127
        transform = src.transform
    assert on_roads(lines, mask, transform, tolerance_px=8) > 0.6


def test_every_option_has_a_parameter_from_its_metadata(roadseg_provider) -> None:
    """One parameter per option, keyed by the upper-case field name, with the core's default and help."""
    from qgis.core import QgsApplication, QgsProcessingParameterDefinition

    from roadseg_plugin.adapters.options import qgis_words
    from roadseg_plugin.core.params import BUNDLED_MODEL, InferenceParams, VectoriseParams, describe
    from roadseg_plugin.processing.segment_roads import SINK_OPTIONS

    assert SINK_OPTIONS == ("format",)  # the only option the feature sink decides instead
    alg = QgsApplication.processingRegistry().algorithmById("roadseg:segmentroads")
    inference, vectorise = option_names()
    for name in sorted(inference | vectorise):
        definition = alg.parameterDefinition(name.upper())
        if name in SINK_OPTIONS:
            assert definition is None
            continue
        assert definition is not None, f"roadseg:segmentroads has no parameter for the option {name}"
        info = describe(InferenceParams if name in inference else VectoriseParams, name)
        default = str(BUNDLED_MODEL) if name == "model" else info["default"]
        assert definition.defaultValue() == default, name
        assert bool(definition.flags() & QgsProcessingParameterDefinition.FlagOptional) == (info["default"] is None)
        assert bool(definition.flags() & QgsProcessingParameterDefinition.FlagAdvanced) == info["advanced"], name
        shown = qgis_words(info["help"])  # "unset" is "empty" in QGIS
        assert definition.help() == shown and info["label"] in definition.description()
        assert shown in alg.shortHelpString(), name


def _as_parameter(name: str, value):
    if name == "extent":
        xmin, ymin, xmax, ymax = value
        return f"{xmin},{xmax},{ymin},{ymax} [EPSG:32619]"
    if name == "bands":
        return ",".join(map(str, value))
    return value


def test_every_option_arrives_in_the_pipeline(roadseg_provider, road_rasters, road_model, tmp_path: Path,
                                              monkeypatch) -> None:
    """A non-default value of each option, given as a Processing parameter, reaches extract_roads."""
    from roadseg_plugin.core import pipeline
    from roadseg_plugin.processing.segment_roads import SINK_OPTIONS

    path, _ = road_rasters("area.tif", size=128)
    table = option_table(road_model, extent=(330008.0, 4689912.0, 330088.0, 4689992.0))
    parameters = {name.upper(): _as_parameter(name, value) for name, value in table.items()
                  if name not in SINK_OPTIONS}
    seen: dict = {}
    monkeypatch.setattr(pipeline, "extract_roads", fake_extract_roads(seen))
    run({"INPUT": str(path), "OUTPUT": str(tmp_path / "roads.gpkg"), "MASK_OUTPUT": str(tmp_path / "p.tif"),
         **parameters})
    assert_options_arrived(table, seen["params"], seen["vectorise"], skip=SINK_OPTIONS)
    assert seen["lines_out"] is None and seen["prob_out"] == str(tmp_path / "p.tif")
    assert seen["source"].bounds == pytest.approx(table["extent"])  # the extent, read through the provider
    assert seen["source"].files == [str(path)]


def test_empty_optional_parameters_are_the_core_defaults(roadseg_provider, road_rasters, tmp_path: Path,
                                                         monkeypatch) -> None:
    from roadseg_plugin.core import pipeline
    from roadseg_plugin.core.params import BUNDLED_MODEL, InferenceParams, VectoriseParams

    path, _ = road_rasters("area.tif", size=64)
    seen: dict = {}
    monkeypatch.setattr(pipeline, "extract_roads", fake_extract_roads(seen))
    run({"INPUT": str(path), "OUTPUT": str(tmp_path / "a.gpkg"), "THRESHOLD": None, "TILE": None, "BANDS": "",
         "EXTENT": None})
    assert seen["params"] == InferenceParams(model=str(BUNDLED_MODEL))  # threshold None: the model's
    assert seen["vectorise"] == VectoriseParams()
    assert seen["source"] == str(path) and seen["prob_out"] is None


def test_a_refused_option_is_the_cores_one_line_message(roadseg_provider, road_rasters, road_model,
                                                        tmp_path: Path) -> None:
    """The core's message, naming the option by the parameter's label."""
    from qgis.core import QgsProcessingException

    from roadseg_plugin.core.errors import ParamError
    from roadseg_plugin.core.params import InferenceParams

    path, _ = road_rasters("area.tif", size=64)
    with pytest.raises(ParamError) as expected:
        InferenceParams(tile=64, overlap=40)
    with pytest.raises(QgsProcessingException) as info:
        run({"INPUT": str(path), "MODEL": str(road_model), "TILE": 64, "OVERLAP": 40,
             "OUTPUT": str(tmp_path / "roads.gpkg")})
    assert str(info.value) == f'"Tile overlap (px)" = 40: {expected.value.problem}; {expected.value.fix}'
    with pytest.raises(QgsProcessingException, match='^"Bands" = 1,x: '):
        run({"INPUT": str(path), "BANDS": "1,x", "OUTPUT": str(tmp_path / "roads.gpkg")})
    assert not (tmp_path / "roads.gpkg").exists()


def _loaded(name: str):
    from qgis.core import QgsProject

    layers = QgsProject.instance().mapLayersByName(name)
    loaded = [layer.name() for layer in QgsProject.instance().mapLayers().values()]
    assert len(layers) == 1, f"{name!r} not loaded once: {loaded}"
    return layers[0]


@pytest.mark.parametrize("binary", [False, True])
def test_loaded_outputs_are_named_and_styled_as_the_dialogs(roadseg_provider, road_rasters, road_model,
                                                            qgis_new_project, binary: bool) -> None:
    """processing.runAndLoadResults (and the toolbox) load the lines and the probability raster under
    distinct names, styled by the layer post-processor as the Segment roads task styles them."""
    import gc

    import processing
    from qgis.core import QgsRasterLayer, QgsSingleBandPseudoColorRenderer, QgsSingleSymbolRenderer

    from roadseg_plugin.adapters.styles import CASING_COLOUR, ROAD_COLOUR, ROAD_WIDTH_MM

    path, _ = road_rasters("area.tif", size=96, seed=3)
    aerial = QgsRasterLayer(str(path), "aerial")
    qgis_new_project.addMapLayer(aerial)
    processing.runAndLoadResults("roadseg:segmentroads", {
        "INPUT": aerial, "MODEL": str(road_model), "BINARY": binary, "OUTPUT": "TEMPORARY_OUTPUT",
        "MASK_OUTPUT": "TEMPORARY_OUTPUT"})
    gc.collect()
    lines, probability = _loaded("Roads (aerial)"), _loaded("Road probability (aerial)")
    renderer = lines.renderer()
    assert isinstance(renderer, QgsSingleSymbolRenderer)
    symbol = renderer.symbol()
    assert symbol.symbolLayerCount() == 2
    assert symbol.symbolLayer(0).color() == CASING_COLOUR and symbol.symbolLayer(1).color() == ROAD_COLOUR
    assert symbol.symbolLayer(1).width() == pytest.approx(ROAD_WIDTH_MM)
    raster = probability.renderer()
    assert isinstance(raster, QgsSingleBandPseudoColorRenderer)
    assert raster.classificationMax() == (1 if binary else 255)
    items = raster.shader().rasterShaderFunction().colorRampItemList()
    assert items[-1].color.red() == 230 and items[0].color.alpha() == 0


def test_plain_run_loads_nothing(roadseg_provider, road_rasters, road_model, qgis_new_project,
                                 tmp_path: Path) -> None:
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback

    path, _ = road_rasters("area.tif", size=64)
    context = QgsProcessingContext()
    _, ok = processing_alg().run({"INPUT": str(path), "MODEL": str(road_model), "OUTPUT": str(tmp_path / "r.gpkg")},
                                 context, QgsProcessingFeedback())
    assert ok and not context.layersToLoadOnCompletion() and not qgis_new_project.mapLayers()


def processing_alg():
    from qgis.core import QgsApplication

    return QgsApplication.processingRegistry().algorithmById("roadseg:segmentroads").create()
