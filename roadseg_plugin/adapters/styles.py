"""How RoadSeg results look in QGIS, wherever they are loaded from.

`style_roads` and `style_probability` are used by the Segment roads task (`gui/task.py`) when it adds
its layers, and by the Processing algorithms through `style_on_load`: a
`QgsProcessingLayerPostProcessorInterface` that QGIS calls on the main thread when it loads an
output on completion (toolbox, batch mode, `processing.runAndLoadResults`), as QGIS's own
algorithms style and name their outputs.

Qt/QGIS only: no torch, rasterio or core import, so the provider can use it while QGIS starts.
"""
from __future__ import annotations

from collections.abc import Callable

from qgis.core import (
    QgsColorRampShader,
    QgsLineSymbol,
    QgsMapLayer,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsRasterLayer,
    QgsRasterShader,
    QgsSimpleLineSymbolLayer,
    QgsSingleBandPseudoColorRenderer,
    QgsSingleSymbolRenderer,
    QgsUnitTypes,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QColor

# The names of the layers RoadSeg adds, after the raster they come from: the same from the
# Segment roads dialog and from Processing.
ROADS_NAME = "Roads ({})"
PROBABILITY_NAME = "Road probability ({})"

ROAD_COLOUR = QColor(255, 127, 0)
CASING_COLOUR = QColor(40, 40, 40, 200)
ROAD_WIDTH_MM = 0.8


def style_roads(layer: QgsVectorLayer) -> None:
    """Orange 0.8 mm lines over a thin dark casing, readable on aerial imagery."""
    casing = QgsSimpleLineSymbolLayer(CASING_COLOUR, ROAD_WIDTH_MM + 0.5)
    casing.setWidthUnit(QgsUnitTypes.RenderMillimeters)
    casing.setPenCapStyle(Qt.RoundCap)
    casing.setPenJoinStyle(Qt.RoundJoin)
    line = QgsSimpleLineSymbolLayer(ROAD_COLOUR, ROAD_WIDTH_MM)
    line.setWidthUnit(QgsUnitTypes.RenderMillimeters)
    line.setPenCapStyle(Qt.RoundCap)
    line.setPenJoinStyle(Qt.RoundJoin)
    symbol = QgsLineSymbol()
    symbol.changeSymbolLayer(0, casing)  # the symbol takes ownership (a list in the constructor would not)
    symbol.appendSymbolLayer(line)
    layer.setRenderer(QgsSingleSymbolRenderer(symbol))  # whatever renderer a loaded style set before
    layer.triggerRepaint()


def style_probability(layer: QgsRasterLayer, maximum: int = 255) -> None:
    """Probability x 255 (or a 0/1 mask, `maximum` 1): transparent below ~0.2, then yellow to red."""
    ramp = QgsColorRampShader(0, maximum, None, QgsColorRampShader.Interpolated)
    ramp.setColorRampItemList([
        QgsColorRampShader.ColorRampItem(0, QColor(255, 255, 0, 0), "0"),
        QgsColorRampShader.ColorRampItem(0.2 * maximum, QColor(255, 255, 0, 0), "0.2"),
        QgsColorRampShader.ColorRampItem(0.5 * maximum, QColor(255, 200, 0, 140), "0.5"),
        QgsColorRampShader.ColorRampItem(maximum, QColor(230, 0, 0, 200), "1"),
    ])
    shader = QgsRasterShader()
    shader.setRasterShaderFunction(ramp)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), 1, shader)
    renderer.setClassificationMin(0)
    renderer.setClassificationMax(maximum)
    layer.setRenderer(renderer)
    layer.triggerRepaint()


class LayerStyler(QgsProcessingLayerPostProcessorInterface):
    """Applies a style function to a Processing output once QGIS has loaded it (main thread).

    QGIS keeps only a C++ pointer to a post-processor; a Python instance nobody references is
    garbage-collected before the layer is loaded (a known PyQGIS pitfall), so `create` keeps
    every instance in `LayerStyler.alive`, a few bytes per loaded output, for the session.
    """

    alive: list[LayerStyler] = []

    def __init__(self, style: Callable[[QgsMapLayer], None]) -> None:
        super().__init__()
        self.style = style

    def postProcessLayer(self, layer: QgsMapLayer, context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> None:
        self.style(layer)

    @classmethod
    def create(cls, style: Callable[[QgsMapLayer], None]) -> LayerStyler:
        styler = cls(style)
        cls.alive.append(styler)
        return styler


def style_on_load(context: QgsProcessingContext, dest_id: str, name: str,
                  style: Callable[[QgsMapLayer], None]) -> bool:
    """When QGIS loads the output `dest_id` on completion: give it `name` and `style` it.

    Returns whether the output is to be loaded (False for plain `processing.run`, qgis_process,
    and outputs the user chose not to open). QGIS's "use the file name as layer name" setting
    still names outputs written to files after the file, as for QGIS's own algorithms.
    """
    if not dest_id or not context.willLoadLayerOnCompletion(dest_id):
        return False
    details = context.layerToLoadOnCompletionDetails(dest_id)  # a reference: edited in place
    details.name = name
    details.setPostProcessor(LayerStyler.create(style))
    return True
