"""Algorithms run as the toolbox runs them: QgsProcessingAlgRunnerTask on QGIS's task pool threads."""
from __future__ import annotations

import time
from pathlib import Path

import geopandas as gpd


def run_as_task(alg_id: str, params: dict, timeout: float = 300) -> dict:
    from qgis.core import QgsApplication, QgsProcessingAlgRunnerTask, QgsProcessingContext, QgsProcessingFeedback
    from qgis.PyQt.QtCore import QCoreApplication

    alg = QgsApplication.processingRegistry().algorithmById(alg_id).create()
    context, feedback = QgsProcessingContext(), QgsProcessingFeedback()
    results: dict = {}
    task = QgsProcessingAlgRunnerTask(alg, params, context, feedback)
    task.executed.connect(lambda ok, res: results.update(ok=ok, **res))
    QgsApplication.taskManager().addTask(task)
    deadline = time.monotonic() + timeout
    while "ok" not in results and time.monotonic() < deadline:
        QCoreApplication.processEvents()
        time.sleep(0.02)
    assert "ok" in results, f"no result after {timeout} s"
    assert results["ok"], f"task failed: {results}"
    return results


def test_segment_twice_on_pool_threads(roadseg_provider, road_rasters, road_model, tmp_path: Path) -> None:
    """Twice in a row, so the second run may land on a reused pool thread (pyproj keeps per-thread state)."""
    for i in range(2):
        path, _ = road_rasters(f"area{i}.tif", size=128, seed=30 + i)
        out = tmp_path / f"roads{i}.gpkg"
        run_as_task("roadseg:segmentroads", {"INPUT": str(path), "MODEL": str(road_model), "OUTPUT": str(out)})
        lines = gpd.read_file(out)
        assert len(lines) > 0 and lines.crs.to_epsg() == 32619


def test_vectorise_and_evaluate_on_pool_threads(roadseg_provider, road_rasters, road_model, tmp_path: Path) -> None:
    import numpy as np
    import rasterio

    from tests.plugin.conftest import lines_layer, mask_to_lines_wkt
    from tests.rasters import write_raster

    path, mask = road_rasters("area.tif", size=128, seed=40)
    with rasterio.open(path) as src:
        profile = {**src.profile, "count": 1}
    write_raster(tmp_path / "mask.tif", (mask * 255).astype(np.uint8), **profile)
    for i in range(2):
        run_as_task("roadseg:vectorisemask",
                    {"INPUT": str(tmp_path / "mask.tif"), "OUTPUT": str(tmp_path / f"v{i}.gpkg")})
        assert len(gpd.read_file(tmp_path / f"v{i}.gpkg")) > 0
    result = run_as_task("roadseg:evaluatemodel", {"MODEL": str(road_model), "RASTER": str(path), "BUFFER": 2.5,
                                                   "LINES": lines_layer(mask_to_lines_wkt(mask)),
                                                   "OUTPUT_JSON": str(tmp_path / "f.json")})
    assert result["RELAXED_F1"] > 0.8
