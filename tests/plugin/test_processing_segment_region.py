"""roadseg:segmentregion through processing.run: a real local Dask cluster, a tiny model that finds roads."""
from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio


def run(params: dict, **kw):
    import processing

    return processing.run("roadseg:segmentregion", params, **kw)


def test_two_rasters_on_two_local_workers_equal_segment_roads(roadseg_provider, road_rasters, road_model,
                                                              tmp_path: Path) -> None:
    from roadseg_plugin.core.params import InferenceParams, VectoriseParams
    from roadseg_plugin.core.pipeline import extract_roads

    a, _ = road_rasters("a.tif", size=300, seed=3)
    b, _ = road_rasters("b.tif", size=200, seed=4, origin=(331000.0, 4690000.0))
    out = tmp_path / "region"
    result = run({"INPUTS": [str(a), str(b)], "MODEL": str(road_model), "WORKERS": 2, "CHUNK": 256,
                  "MIN_LENGTH": 10, "OUTPUT_FOLDER": str(out)})
    assert result["OUTPUT_FOLDER"] == str(out) and Path(result["LINES"]) == out / "roads.gpkg"
    lines = gpd.read_file(result["LINES"])
    assert result["N_LINES"] == len(lines) > 0 and lines.crs.to_epsg() == 32619
    assert set(lines["source"]) == {str(a.resolve()), str(b.resolve())}
    assert len(result["PROBABILITY"]) == 2
    for raster in (a, b):
        reference = extract_roads(raster, None, InferenceParams(model=str(road_model)), VectoriseParams(min_length=10),
                                  prob_out=tmp_path / f"{raster.stem}_prob.tif")
        mine = lines[lines["source"] == str(raster.resolve())]
        assert len(mine) == len(reference.lines)
        assert mine["length_m"].sum() == pytest.approx(reference.lines["length_m"].sum(), rel=1e-6)
        vrt = next(p for p in result["PROBABILITY"] if Path(p).name.startswith(raster.stem + "-"))
        with rasterio.open(vrt) as got, rasterio.open(reference.prob_path) as expected:
            assert np.abs(got.read(1).astype(int) - expected.read(1)).max() <= 2


def test_refusals_are_processing_errors(roadseg_provider, road_rasters, road_model, tmp_path: Path) -> None:
    from osgeo import gdal
    from qgis.core import QgsProcessingException, QgsProcessingFeedback, QgsRasterLayer

    a, _ = road_rasters("a.tif", size=128)
    vrt = tmp_path / "a.vrt"
    gdal.BuildVRT(str(vrt), [str(a)])
    xml = vrt.read_text().replace('relativeToVRT="1">a.tif', f'relativeToVRT="0">{a}')
    layer = QgsRasterLayer(xml, "vrt from a string", "gdal")  # not a file the workers could read
    assert layer.isValid()
    with pytest.raises(QgsProcessingException, match="not a plain raster file"):
        run({"INPUTS": [layer], "MODEL": str(road_model), "OUTPUT_FOLDER": str(tmp_path / "out")})
    with pytest.raises(QgsProcessingException, match="is one of the inputs"):
        run({"INPUTS": [str(a)], "MODEL": str(road_model), "WORKERS": 1, "OUTPUT_FOLDER": str(a)})
    with pytest.raises(QgsProcessingException, match="scheduler"):
        run({"INPUTS": [str(a)], "MODEL": str(road_model), "SCHEDULER": "tcp://127.0.0.1:1", "WORKERS": 2,
             "OUTPUT_FOLDER": str(tmp_path / "out")})
    feedback = QgsProcessingFeedback()
    feedback.cancel()
    with pytest.raises(QgsProcessingException, match="Cancelled: the finished parts stay in"):
        run({"INPUTS": [str(a)], "MODEL": str(road_model), "OUTPUT_FOLDER": str(tmp_path / "out")}, feedback=feedback)
    assert not (tmp_path / "out").exists()
