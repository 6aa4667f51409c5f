"""What the "Segment roads" dialog asks for and the task needs: a Qt-free dataclass.

The dialog builds a `SegmentParams`, the task hands its `inference` and `vectorise` parts to
`core.pipeline.extract_roads` unchanged. Every option of the run, its default and its check
live in `core.params`; this only adds what is QGIS-side: which layer, where the lines go and
what is added to the project. Neither QGIS nor torch is imported here, so the object can be
created, compared and printed anywhere (tests, scripts, the console).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import ParamError
from ..core.params import VECTOR_EXTENSIONS, InferenceParams, VectoriseParams


@dataclass
class SegmentParams:
    """One "Segment roads" run.

    Attributes:
        layer_id: id of the raster layer in the current project (`QgsMapLayer.id()`).
        inference: model, device, threshold, extent (in the layer's CRS), tiling... (see
            `core.params.InferenceParams`).
        vectorise: clean-up lengths and output format (see `core.params.VectoriseParams`).
        output: the road-line file (.gpkg, .shp, .geojson, .fgb); None writes a temporary GeoPackage.
        add_probability: also add the probability raster to the project.
        layer_name: name of the layer(s) added to the project.
        aoi: areas of interest as WKT polygons in the layer's CRS (only their pixels are
            processed; `inference.extent` is then their bounding box on the layer), or None.

    Raises:
        ParamError: no layer, or an output whose extension is not a vector format RoadSeg writes.
    """

    layer_id: str
    inference: InferenceParams = field(default_factory=InferenceParams)
    vectorise: VectoriseParams = field(default_factory=VectoriseParams)
    output: str | None = None
    add_probability: bool = False
    layer_name: str = "Roads"
    aoi: str | None = None

    def __post_init__(self) -> None:
        if not self.layer_id:
            raise ParamError("layer", "''", "is empty", "choose a raster layer")
        if self.output is not None:
            self.output = str(self.output) or None
        if self.output is not None and Path(self.output).suffix.lower() not in VECTOR_EXTENSIONS:
            raise ParamError("output", self.output, "is not a vector file RoadSeg writes",
                             f"end it in one of {', '.join(sorted(VECTOR_EXTENSIONS))}")

    @property
    def temporary_output(self) -> bool:
        """True when the lines go to a temporary GeoPackage rather than a file the user chose."""
        return self.output is None
