"""roadseg_plugin.adapters.styles: the road and probability styles, and the Processing post-processor that
applies them (and the output's name) when QGIS loads an output on completion."""
from __future__ import annotations

import gc

import numpy as np
import pytest


@pytest.fixture
def lines_and_raster(qgis_new_project, tmp_path):
    from qgis.core import QgsRasterLayer

    from tests.plugin.conftest import lines_layer
    from tests.rasters import write_raster

    path = write_raster(tmp_path / "prob.tif", np.arange(256, dtype=np.uint8).reshape(1, 16, 16), crs="EPSG:32619",
                        origin=(330000, 4690000), gsd=1)
    raster = QgsRasterLayer(str(path), "probability")
    assert raster.isValid()
    return lines_layer(["LINESTRING(330000 4689990, 330016 4689990)"]), raster


def assert_road_style(layer) -> None:
    from qgis.core import QgsSingleSymbolRenderer, QgsUnitTypes

    from roadseg_plugin.adapters.styles import CASING_COLOUR, ROAD_COLOUR, ROAD_WIDTH_MM

    assert isinstance(layer.renderer(), QgsSingleSymbolRenderer)
    symbol = layer.renderer().symbol()
    casing, line = symbol.symbolLayer(0), symbol.symbolLayer(1)
    assert symbol.symbolLayerCount() == 2
    assert (casing.color(), line.color()) == (CASING_COLOUR, ROAD_COLOUR)
    assert line.width() == pytest.approx(ROAD_WIDTH_MM) and casing.width() > line.width()
    assert line.widthUnit() == QgsUnitTypes.RenderMillimeters


def assert_probability_style(layer, maximum: int) -> None:
    from qgis.core import QgsSingleBandPseudoColorRenderer

    renderer = layer.renderer()
    assert isinstance(renderer, QgsSingleBandPseudoColorRenderer) and renderer.band() == 1
    assert (renderer.classificationMin(), renderer.classificationMax()) == (0, maximum)
    items = renderer.shader().rasterShaderFunction().colorRampItemList()
    assert [item.value for item in items] == pytest.approx([0, 0.2 * maximum, 0.5 * maximum, maximum])
    assert items[1].color.alpha() == 0 and items[-1].color.alpha() == 200  # transparent background, red roads


def test_style_roads_replaces_any_renderer(lines_and_raster) -> None:
    from qgis.core import QgsCategorizedSymbolRenderer

    from roadseg_plugin.adapters.styles import style_roads

    lines, _ = lines_and_raster
    lines.setRenderer(QgsCategorizedSymbolRenderer("id", []))  # e.g. a style Processing loaded first
    style_roads(lines)
    assert_road_style(lines)


@pytest.mark.parametrize("maximum", [255, 1])
def test_style_probability(lines_and_raster, maximum: int) -> None:
    from roadseg_plugin.adapters.styles import style_probability

    _, raster = lines_and_raster
    style_probability(raster, maximum=maximum)
    assert_probability_style(raster, maximum)


def test_the_task_uses_the_shared_styles() -> None:
    from roadseg_plugin.adapters import styles
    from roadseg_plugin.gui import task

    assert task.style_roads is styles.style_roads and task.style_probability is styles.style_probability


def test_post_processor_survives_garbage_collection_and_styles_on_load(qgis_processing, lines_and_raster) -> None:
    """QGIS keeps only a C++ pointer to a post-processor: without the Python reference `style_on_load`
    keeps, collecting garbage before the output is loaded would leave QGIS a deleted object."""
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback, QgsProject

    from roadseg_plugin.adapters.styles import LayerStyler, style_on_load, style_probability, style_roads

    lines, raster = lines_and_raster
    context = QgsProcessingContext()
    for layer in (lines, raster):
        details = QgsProcessingContext.LayerDetails("output", QgsProject.instance())
        context.addLayerToLoadOnCompletion(layer.id(), details)
    assert not style_on_load(context, "not-an-output", "x", style_roads)
    alive = len(LayerStyler.alive)
    assert style_on_load(context, lines.id(), "Roads (aerial)", style_roads)
    assert style_on_load(context, raster.id(), "Road probability (aerial)", lambda loaded: style_probability(loaded, 1))
    assert len(LayerStyler.alive) == alive + 2
    gc.collect()

    feedback = QgsProcessingFeedback()
    for layer in (lines, raster):  # what Processing does once the algorithm finished (main thread)
        details = context.layerToLoadOnCompletionDetails(layer.id())
        details.setOutputLayerName(layer)
        details.postProcessor().postProcessLayer(layer, context, feedback)
    assert (lines.name(), raster.name()) == ("Roads (aerial)", "Road probability (aerial)")
    assert_road_style(lines)
    assert_probability_style(raster, 1)
