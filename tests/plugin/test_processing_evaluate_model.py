"""roadseg:evaluatemodel: figures against digitised lines or a reference mask."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tests.plugin.conftest import lines_layer, mask_to_lines_wkt
from tests.rasters import write_raster

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
    write_raster(mask_path, (mask * 255).astype(np.uint8), **profile)
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
    with pytest.raises(QgsProcessingException, match='"Reference road lines" or a "Reference road mask'):
        run({"MODEL": str(road_model), "RASTER": str(path), "OUTPUT_JSON": str(tmp_path / "f.json")})


def clipped(wkt: list[str], xmax: float) -> list[str]:
    """The parts of the lines west of x = `xmax` (what a user digitised over the left of an image)."""
    from qgis.core import QgsGeometry, QgsRectangle

    window = QgsGeometry.fromRect(QgsRectangle(0, 0, xmax, 1e8))
    parts = [QgsGeometry.fromWkt(w).intersection(window) for w in wkt]
    return [g.asWkt() for g in parts if not g.isEmpty()]


def test_area_of_interest_limits_the_figures_to_where_lines_were_drawn(roadseg_provider, road_rasters, road_model,
                                                                      tmp_path: Path) -> None:
    """Roads digitised over the left half only. Without an AOI the model's (right) roads in the right
    half are false positives; with the left half as AOI those pixels count for nothing, and the
    figures are those of the left half against complete lines."""
    path, mask = road_rasters("area.tif", size=192, seed=7)
    assert mask[:, 96:].any() and mask[:, :96].any()
    x0, y0 = 330000.0, 4690000.0
    full = mask_to_lines_wkt(mask)
    left_only = lines_layer(clipped(full, x0 + 96))
    aoi = lines_layer([f"POLYGON(({x0} {y0}, {x0 + 96} {y0}, {x0 + 96} {y0 - 192}, {x0} {y0 - 192}, {x0} {y0}))"],
                      kind="Polygon", name="aoi")
    common = {"MODEL": str(road_model), "RASTER": str(path), "BUFFER": 2.5, "DEVICE": "cpu"}
    figures = {}
    for name, extra in (("complete", {"LINES": lines_layer(full)}), ("half", {"LINES": left_only}),
                        ("half_aoi", {"LINES": left_only, "AOI": aoi}),
                        ("complete_aoi", {"LINES": lines_layer(full), "AOI": aoi})):
        run({**common, **extra, "OUTPUT_JSON": str(tmp_path / f"{name}.json")})
        figures[name] = json.loads((tmp_path / f"{name}.json").read_text())
    complete, half, half_aoi, complete_aoi = (figures[k] for k in ("complete", "half", "half_aoi", "complete_aoi"))
    assert complete["precision"] > 0.8 and complete["iou"] > 0.6
    # without an AOI, the undrawn right half's roads are false positives
    assert half["precision"] < complete["precision"] - 0.2 and half["iou"] < complete["iou"] - 0.15
    # with it, only the left half counts: as good as complete lines there
    assert half_aoi["valid_pixels"] == 192 * 96 and half["valid_pixels"] == 192 * 192
    assert half_aoi["aoi"] and not half["aoi"]
    for key in ("iou", "precision", "recall", "f1", "relaxed_f1"):
        assert half_aoi[key] == pytest.approx(complete_aoi[key], abs=1e-9), key
        assert half_aoi[key] > half[key] - 1e-9 or key == "recall", key
    assert half_aoi["precision"] > 0.8 and half_aoi["apls"] > half["apls"]
    assert half_aoi["reference_pixels"] == complete_aoi["reference_pixels"] < complete["reference_pixels"]


def test_area_of_interest_off_the_image_is_an_error(roadseg_provider, road_rasters, road_model, tmp_path: Path) -> None:
    from qgis.core import QgsProcessingException

    path, mask = road_rasters("area.tif", size=64)
    far = lines_layer(["POLYGON((0 0, 10 0, 10 10, 0 10, 0 0))"], kind="Polygon", name="aoi")
    with pytest.raises(QgsProcessingException, match="area of interest covers none of the raster"):
        run({"MODEL": str(road_model), "RASTER": str(path), "LINES": lines_layer(mask_to_lines_wkt(mask)),
             "AOI": far, "OUTPUT_JSON": str(tmp_path / "f.json")})
