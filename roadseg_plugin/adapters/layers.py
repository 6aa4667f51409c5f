"""What the core reads for a QGIS raster layer: `layer_source` (its file, or a
`qgis_reader.ProviderReader` over the layer's data provider), shared by the Segment roads task
and the Processing algorithms, so both read a layer the same way; `reading_gsd`, the resolution
a layer is read at; `layer_files`, the local file behind a layer.
"""
from __future__ import annotations

import os
from typing import Any

from qgis.core import QgsGeometry, QgsMapLayer, QgsProviderRegistry, QgsRasterDataProvider, QgsRasterLayer, QgsRectangle

from ..core.errors import RoadSegError
from ..core.params import InferenceParams


def layer_source(layer: QgsRasterLayer, params: InferenceParams, aoi: QgsGeometry | None = None) -> Any:
    """What `extract_roads` reads for `layer`: its file, or a `qgis_reader.ProviderReader`.

    Shared by the task and the Processing algorithms, so both read a layer the same way. Call
    it on the thread that owns the layer (the reader clones its data provider). The reader
    covers `params.extent` and the areas of interest `aoi` (both in the layer's CRS) and reads
    at the model's resolution when the layer's own is too far off, as the core does for files;
    it lists the layer's local file in `files`, so that the pipeline refuses an output that
    would overwrite it. A web map without extent or areas is refused here, before any work.
    """
    from .qgis_reader import local_file, raster_source

    extent = QgsRectangle(*params.extent) if params.extent is not None else None
    whole_file = extent is None and aoi is None and local_file(layer) is not None
    gsd_m = None if whole_file else reading_gsd(layer, params.model)
    source = raster_source(layer, extent=extent, gsd_m=gsd_m, aoi=aoi)
    if not isinstance(source, (str, os.PathLike)):
        source.files = layer_files(layer)
    return source


def layer_files(layer: QgsMapLayer) -> list[str]:
    """The local file behind a layer (a GeoTIFF, a GeoPackage holding it...), if there is one."""
    path = QgsProviderRegistry.instance().decodeUri(layer.providerType(), layer.source()).get("path") or ""
    return [path] if path and os.path.isfile(path) else []


def reading_gsd(layer: QgsRasterLayer, model: str | None) -> float | None:
    """The model's GSD when the layer must be resampled to it (as the engine does for files:
    no native pixel size, or one more than 25 % off); None reads at the layer's own pixels.
    An unreadable model gives None here; the pipeline then reports the model error."""
    from ..core.gsd import metres_to_crs_units
    from ..core.params import read_model_info
    from ..core.readers import GSD_TOLERANCE
    from .qgis_reader import crs_string

    try:
        gsd = read_model_info(model).gsd_m  # metadata only: no torch on the main thread
    except RoadSegError:
        return None
    if not gsd or gsd <= 0:
        return None
    provider = layer.dataProvider()
    if not provider.capabilities() & QgsRasterDataProvider.Size or provider.xSize() <= 0:
        return gsd
    centre = layer.extent().center()
    model_x, _ = metres_to_crs_units(crs_string(layer.crs()), gsd, centre.y(), centre.x())
    native = abs(layer.rasterUnitsPerPixelX())
    return gsd if abs(native / model_x - 1) > GSD_TOLERANCE else None
