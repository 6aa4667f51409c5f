"""What the "Segment roads" dialog asks for and the task needs: a Qt-free dataclass.

The dialog builds a `SegmentParams`, the task consumes it; neither QGIS nor torch is imported
here, so the object can be created, compared and printed anywhere (tests, scripts, the console).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEVICES = ("auto", "cpu", "cuda")
OUTPUT_SUFFIXES = {".gpkg": "GPKG", ".shp": "ESRI Shapefile", ".geojson": "GeoJSON", ".json": "GeoJSON"}
DEFAULT_MIN_LENGTH_M = 20.0


@dataclass
class SegmentParams:
    """One "Segment roads" run.

    Attributes:
        layer_id: id of the raster layer in the current project (`QgsMapLayer.id()`).
        model_path: the RoadSeg checkpoint (.pt); None means the bundled model.
        device: "auto", "cpu" or "cuda".
        extent: (xmin, ymin, xmax, ymax) in the raster layer's CRS; None means the whole layer.
        threshold: probability above which a pixel is road; None means the model's own threshold.
        min_length: road lines shorter than this (metres) are dropped.
        output: the road-line file (.gpkg/.shp/.geojson); None writes a temporary GeoPackage.
        add_probability: also add the probability raster to the project.
        layer_name: name of the layer(s) added to the project.
    """

    layer_id: str
    model_path: str | None = None
    device: str = "auto"
    extent: tuple[float, float, float, float] | None = None
    threshold: float | None = None
    min_length: float = DEFAULT_MIN_LENGTH_M
    output: str | None = None
    add_probability: bool = False
    layer_name: str = "Roads"

    def __post_init__(self) -> None:
        if not self.layer_id:
            raise ValueError("layer_id is empty: choose a raster layer")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ValueError(f"device {self.device!r} is not one of {', '.join(DEVICES)}")
        if self.extent is not None:
            xmin, ymin, xmax, ymax = (float(v) for v in self.extent)
            if not (xmax > xmin and ymax > ymin):
                raise ValueError(f"extent {self.extent} is empty; xmax must exceed xmin and ymax ymin")
            self.extent = (xmin, ymin, xmax, ymax)
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold {self.threshold} must lie strictly between 0 and 1")
        if self.min_length < 0:
            raise ValueError(f"min_length {self.min_length} must not be negative")
        if self.output is not None:
            if not self.output:
                self.output = None
            elif Path(self.output).suffix.lower() not in OUTPUT_SUFFIXES:
                raise ValueError(f"output {self.output!r} must end in one of "
                                 f"{', '.join(sorted(OUTPUT_SUFFIXES))}")

    @property
    def temporary_output(self) -> bool:
        """True when the lines go to a temporary GeoPackage rather than a file the user chose."""
        return self.output is None

    @property
    def output_driver(self) -> str:
        """OGR driver name for `output` (GPKG for the temporary layer)."""
        if self.output is None:
            return "GPKG"
        return OUTPUT_SUFFIXES[Path(self.output).suffix.lower()]
