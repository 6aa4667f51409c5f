"""roadseg:evaluatemodel: figures against digitised lines or a reference mask."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tests.plugin.conftest import lines_layer, mask_to_lines_wkt

KEYS = ("iou", "f1", "relaxed_f1", "apls", "precision", "recall")


def run(params: dict):
    import processing

    return processing.run("roadseg:evaluatemodel", params)


def test_against_drawn_lines_and_against_a_mask(roadseg_provider, road_rasters, road_model, tmp_path: Path) -> None:
    path, mask = road_rasters("area.tif", size=192, seed=7)
    lines = lines_layer(mask_to_lines_wkt(mask))
    by_lines = run({"MODEL": str(road_model), "RASTER": str(path), "LINES": lines, "BUFFER": 2.5, "DEVICE": "cpu",
                    "OUTPUT_JSON": str(tmp_path / "lines.json")})
    figures = json.loads((tmp_path / "lines.json").read_text())
    assert all(k in figures for k in KEYS) and figures["reference"] == "lines"
    for key, out in (("iou", "IOU"), ("f1", "F1"), ("relaxed_f1", "RELAXED_F1"), ("apls", "APLS")):
        assert by_lines[out] == pytest.approx(figures[key])
    assert by_lines["IOU"] > 0.6 and by_lines["RELAXED_F1"] > 0.9 and by_lines["APLS"] > 0.5

    mask_path = tmp_path / "mask.tif"
    with rasterio.open(path) as src:
        profile = {**src.profile, "count": 1}
    with rasterio.open(mask_path, "w", **profile) as dst:
        dst.write((mask * 255).astype(np.uint8)[None])
    by_mask = run({"MODEL": str(road_model), "RASTER": str(path), "REFERENCE_MASK": str(mask_path),
                   "OUTPUT_JSON": str(tmp_path / "mask.json")})
    assert json.loads((tmp_path / "mask.json").read_text())["reference"] == "mask"
    # the drawn lines buffered by half the road width are the mask: the figures agree
    assert by_mask["IOU"] == pytest.approx(by_lines["IOU"], abs=0.05)
    assert by_mask["F1"] > 0.75


def test_reference_lines_in_another_crs(roadseg_provider, road_rasters, road_model, tmp_path: Path) -> None:
    from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsGeometry, QgsProject

    path, mask = road_rasters("area.tif", size=128, seed=8)
    transform = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:32619"),
                                       QgsCoordinateReferenceSystem("EPSG:3857"), QgsProject.instance())
    wkt = []
    for w in mask_to_lines_wkt(mask):
        geom = QgsGeometry.fromWkt(w)
        geom.transform(transform)
        wkt.append(geom.asWkt(6))
    result = run({"MODEL": str(road_model), "RASTER": str(path), "LINES": lines_layer(wkt, crs="EPSG:3857"),
                  "BUFFER": 2.5, "OUTPUT_JSON": str(tmp_path / "f.json")})
    assert result["RELAXED_F1"] > 0.9


def test_without_a_reference_is_an_error(roadseg_provider, road_rasters, road_model, tmp_path: Path) -> None:
    from qgis.core import QgsProcessingException

    path, _ = road_rasters("area.tif", size=64)
    with pytest.raises(QgsProcessingException, match="REFERENCE_MASK"):
        run({"MODEL": str(road_model), "RASTER": str(path), "OUTPUT_JSON": str(tmp_path / "f.json")})
