"""Nothing is written beside the user's inputs: no `.aux.xml`, no temporary, no output.

`.aux.xml` files beside input rasters come from QGIS: creating a raster layer computes its band
statistics (for the renderer's min/max), which GDAL keeps in the dataset's PAM and saves beside
the file when QGIS closes it. The first test shows that, with no RoadSeg code involved. The others
run RoadSeg on inputs in a read-only folder and compare the folder's files (names and content)
before and after: the command line (segment, vectorise), the Segment roads task on a loaded layer
(through the layer's data provider, over an extent) and roadseg:segmentroads. A read-only folder
also shows that a run never needs to write there (as root the folder stays writable, so the file
comparison is what decides).
"""
from __future__ import annotations

import gc
import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.plugin.conftest import write_road_geotiff
from tests.plugin.web_map import georeferenced_sample
from tests.rasters import copy_window, write_raster

ROOT = Path(__file__).resolve().parents[2]


def files(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def inputs(tmp_path: Path):
    """A read-only folder holding a GeoTIFF, a plain PNG and a probability raster."""
    import numpy as np
    import rasterio

    folder = tmp_path / "inputs"
    folder.mkdir()
    georeferenced_sample(folder / "area.tif", 256)
    write_road_geotiff(folder / "small.tif", size=96)
    copy_window(folder / "area.tif", folder / "photo.png")
    with rasterio.open(folder / "area.tif") as src:
        profile = {**src.profile, "count": 1}
    prob = np.zeros((1, 256, 256), np.uint8)
    prob[0, 120:127, 10:240] = 230
    write_raster(folder / "prob.tif", prob, **profile)
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    yield folder
    folder.chmod(stat.S_IRWXU)


def test_qgis_itself_writes_aux_xml_when_it_loads_a_raster(qgis_app, tmp_path: Path) -> None:
    from qgis.core import QgsRasterLayer

    path, _ = write_road_geotiff(tmp_path / "area.tif", size=96)
    layer = QgsRasterLayer(str(path), "area")
    assert layer.isValid()
    del layer
    gc.collect()
    assert (tmp_path / "area.tif.aux.xml").is_file()  # QGIS's statistics, not RoadSeg's
    assert "STATISTICS_MEAN" in (tmp_path / "area.tif.aux.xml").read_text()


def test_the_command_line_writes_nothing_beside_its_inputs(inputs: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    before = files(inputs)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for args in (["segment", str(inputs / "area.tif"), "--out", str(out / "a.gpkg"), "--mask-out", str(out / "a.tif")],
                 ["segment", str(inputs / "photo.png"), "--out", str(out / "p.gpkg"), "--extent", "10,-200,200,-10"],
                 ["vectorise", str(inputs / "prob.tif"), "--out", str(out / "v.gpkg")]):
        model = ["--model", str(tiny_checkpoint), "--device", "cpu", "--backend", "torch"]
        model = model if args[0] == "segment" else []
        done = subprocess.run([sys.executable, "-m", "roadseg_plugin", *args, *model], capture_output=True, text=True,
                              cwd=tmp_path, env=env, timeout=300)
        assert done.returncode == 0, done.stderr
    assert files(inputs) == before


def test_qgis_runs_write_nothing_beside_their_inputs(roadseg_provider, qgis_new_project, qgis_iface, inputs: Path,
                                                     tiny_checkpoint: Path, tmp_path: Path) -> None:
    import processing
    from qgis.core import QgsRasterLayer

    from roadseg_plugin.core.params import InferenceParams
    from roadseg_plugin.gui.params import SegmentParams
    from roadseg_plugin.gui.task import RoadSegTask

    QgsRasterLayer(str(inputs / "small.tif"), "first load")  # QGIS's own PAM file, if it can write one
    gc.collect()
    before = files(inputs)
    layer = QgsRasterLayer(str(inputs / "small.tif"), "aerial")
    qgis_new_project.addMapLayer(layer)
    x0, y0 = 330000.0, 4690000.0
    task = RoadSegTask(SegmentParams(layer.id(), InferenceParams(model=str(tiny_checkpoint), device="cpu",
                                                                 extent=(x0 + 5, y0 - 90, x0 + 90, y0 - 5)),
                                     output=str(tmp_path / "task.gpkg"), add_probability=True), iface=qgis_iface)
    assert task.run(), task.outcome.message  # through the layer's data provider
    task.finished(True)
    processing.run("roadseg:segmentroads", {"INPUT": layer, "MODEL": str(tiny_checkpoint), "DEVICE": "cpu",
                                            "OUTPUT": str(tmp_path / "alg.gpkg"),
                                            "MASK_OUTPUT": str(tmp_path / "alg.tif")})
    qgis_new_project.removeAllMapLayers()
    del layer
    gc.collect()
    assert files(inputs) == before
