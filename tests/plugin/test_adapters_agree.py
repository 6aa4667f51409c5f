"""The CLI, the Segment roads task and roadseg:segmentroads run one pipeline: same raster and options,
same probability raster (pixel for pixel) and same road lines."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio

pytest.importorskip("qgis.core")
pytest.importorskip("torch")

from roadseg_plugin.core.params import BUNDLED_MODEL, InferenceParams, VectoriseParams  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# Non-default options in each adapter's own spelling.
CLI_OPTIONS = ["--device", "cpu", "--threshold", "0.45", "--min-length", "15", "--gap", "10", "--overlap", "48"]
INFERENCE = {"device": "cpu", "threshold": 0.45, "overlap": 48}
VECTORISE = {"min_length": 15.0, "gap": 10.0}


def _cli(raster: Path, out: Path) -> tuple[Path, Path]:
    lines, prob = out / "cli.gpkg", out / "cli.tif"
    done = subprocess.run([sys.executable, "-m", "roadseg_plugin", "segment", str(raster), "--out", str(lines),
                           "--mask-out", str(prob), *CLI_OPTIONS], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return lines, prob


def _task(raster: Path, out: Path, project) -> tuple[Path, Path]:
    from qgis.core import QgsRasterLayer

    from roadseg_plugin.gui.params import SegmentParams
    from roadseg_plugin.gui.task import RoadSegTask

    layer = QgsRasterLayer(str(raster), "sample")
    project.addMapLayer(layer)
    lines = out / "task.gpkg"
    task = RoadSegTask(SegmentParams(layer.id(), InferenceParams(**INFERENCE), VectoriseParams(**VECTORISE),
                                     output=str(lines), add_probability=True))
    assert task.run(), task.outcome.message
    return lines, Path(task.outcome.probability_path)


def _processing(raster: Path, out: Path) -> tuple[Path, Path]:
    import processing

    lines, prob = out / "processing.gpkg", out / "processing.tif"
    options = {name.upper(): value for name, value in {**INFERENCE, **VECTORISE}.items()}
    processing.run("roadseg:segmentroads", {"INPUT": str(raster), "OUTPUT": str(lines), "MASK_OUTPUT": str(prob),
                                            **options})
    return lines, prob


def _read_raster(path: Path) -> tuple[np.ndarray, np.ndarray, tuple]:
    with rasterio.open(path) as src:
        return src.read(), src.dataset_mask(), (src.crs.to_epsg(), tuple(src.transform), src.tags())


@pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason="no bundled model")
def test_cli_task_and_processing_give_the_same_outputs(roadseg_provider, qgis_new_project, sample_geotiff,
                                                       tmp_path: Path) -> None:
    outputs = {"cli": _cli(sample_geotiff, tmp_path), "task": _task(sample_geotiff, tmp_path, qgis_new_project),
               "processing": _processing(sample_geotiff, tmp_path)}

    values, mask, grid = _read_raster(outputs["cli"][1])
    assert grid[0] == 26986 and grid[2]["ROADSEG_THRESHOLD"] == "0.45"
    assert values.max() > 200  # roads were found: the comparison means something
    for name in ("task", "processing"):
        other_values, other_mask, other_grid = _read_raster(outputs[name][1])
        assert other_grid == grid, name
        assert np.array_equal(other_values, values) and np.array_equal(other_mask, mask), name

    reference = gpd.read_file(outputs["cli"][0]).sort_values("id").reset_index(drop=True)
    assert len(reference) > 5
    for name in ("task", "processing"):
        lines = gpd.read_file(outputs[name][0]).sort_values("id").reset_index(drop=True)
        assert len(lines) == len(reference), name
        assert lines["length_m"].sum() == pytest.approx(reference["length_m"].sum(), abs=1e-6), name
        assert lines.crs.to_epsg() == 26986, name
        for a, b in zip(lines.geometry, reference.geometry, strict=True):
            assert a.equals_exact(b, 1e-9), name
        for column in ("id", "length_m", "width_m", "mean_prob"):
            assert np.allclose(lines[column].to_numpy(float), reference[column].to_numpy(float), rtol=0,
                               atol=1e-9), (name, column)
