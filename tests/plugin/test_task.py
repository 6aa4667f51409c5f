"""RoadSegTask in a real (offscreen) QGIS: the task manager, result layers, cancel, failure."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("qgis.core")
pytest.importorskip("torch")

from qgis.core import (  # noqa: E402
    Qgis,
    QgsProject,
    QgsRasterLayer,
    QgsSingleBandPseudoColorRenderer,
    QgsVectorLayer,
    QgsWkbTypes,
)

from roadseg_plugin.adapters.styles import ROAD_WIDTH_MM  # noqa: E402
from roadseg_plugin.core.errors import RoadSegError  # noqa: E402
from roadseg_plugin.core.params import InferenceParams, VectoriseParams  # noqa: E402
from roadseg_plugin.gui.params import SegmentParams  # noqa: E402
from roadseg_plugin.gui.task import RoadSegTask, Status  # noqa: E402
from tests.plugin.conftest import (  # noqa: E402
    UTM19_ORIGIN,
    assert_options_arrived,
    fake_extract_roads,
    option_table,
    split_options,
    wait_for_task,
    write_road_geotiff,
)


def run_params(layer_id: str, model, **kw) -> SegmentParams:
    """SegmentParams on the CPU with `model`; `kw` holds SegmentParams fields and options of either kind."""
    inference_kw = {k: kw.pop(k) for k in list(kw) if k in InferenceParams.__dataclass_fields__}
    vectorise_kw = {k: kw.pop(k) for k in list(kw) if k in VectoriseParams.__dataclass_fields__}
    return SegmentParams(layer_id, InferenceParams(model=str(model), device="cpu", **inference_kw),
                         VectoriseParams(**vectorise_kw), **kw)


@pytest.fixture
def bar(qgis_iface):
    qgis_iface.messageBar().clear_messages()
    return qgis_iface.messageBar()


def _added_lines(name: str) -> QgsVectorLayer:
    layers = QgsProject.instance().mapLayersByName(name)
    assert len(layers) == 1, [lyr.name() for lyr in QgsProject.instance().mapLayers().values()]
    return layers[0]


def _on_roads_fraction(layer: QgsVectorLayer, mask: np.ndarray, origin=UTM19_ORIGIN, tol_px: int = 3) -> float:
    """Share of the line vertices within `tol_px` pixels of a drawn road."""
    from scipy.ndimage import binary_dilation

    near = binary_dilation(mask, iterations=tol_px)
    hits = total = 0
    for feature in layer.getFeatures():
        for vertex in feature.geometry().vertices():
            col, row = int(vertex.x() - origin[0]), int(origin[1] - vertex.y())
            total += 1
            hits += bool(0 <= row < mask.shape[0] and 0 <= col < mask.shape[1] and near[row, col])
    return hits / max(total, 1)


def test_task_manager_run_adds_road_lines_in_the_raster_crs(qgis_new_project, road_model, bar, tmp_path, qgis_iface):
    tif, mask = write_road_geotiff(tmp_path / "area.tif", size=128, seed=5)
    raster = QgsRasterLayer(str(tif), "aerial")
    qgis_new_project.addMapLayer(raster)
    progress: list[float] = []
    task = RoadSegTask(run_params(raster.id(), road_model), iface=qgis_iface)
    task.progressChanged.connect(progress.append)

    assert wait_for_task(task), "the task did not finish in time"
    outcome = task.outcome
    assert outcome.status is Status.OK, outcome.message
    assert outcome.n_lines > 0 and outcome.total_length_m > 50
    assert outcome.probability_path is None  # not asked for: removed, not added
    assert Path(outcome.lines_path).is_file() and Path(outcome.lines_path).suffix == ".gpkg"
    assert max(progress) == pytest.approx(100.0)

    lines = _added_lines("Roads")
    assert lines.crs().authid() == "EPSG:32619"
    assert QgsWkbTypes.geometryType(lines.wkbType()) == QgsWkbTypes.LineGeometry
    assert lines.featureCount() == outcome.n_lines
    assert {"length_m", "width_m", "mean_prob"} <= set(lines.fields().names())
    assert _on_roads_fraction(lines, mask) > 0.9
    symbol = lines.renderer().symbol()
    assert symbol.symbolLayer(symbol.symbolLayerCount() - 1).width() == pytest.approx(ROAD_WIDTH_MM)
    assert len(QgsProject.instance().mapLayersByName("Road probability (aerial)")) == 0
    assert len(bar.get_messages(Qgis.Success)) == 1 and "road lines" in bar.get_messages(Qgis.Success)[0]


def test_file_output_with_probability_raster(qgis_new_project, road_model, bar, tmp_path, qgis_iface):
    tif, mask = write_road_geotiff(tmp_path / "area.tif", size=96, seed=2)
    raster = QgsRasterLayer(str(tif), "aerial")
    qgis_new_project.addMapLayer(raster)
    out = tmp_path / "result" / "roads.shp"
    out.parent.mkdir()
    params = run_params(raster.id(), road_model, output=str(out), add_probability=True, threshold=0.5,
                        min_length=5.0, layer_name="My roads")
    task = RoadSegTask(params, iface=qgis_iface)
    assert task.run()  # synchronously, on this (main) thread
    task.finished(True)

    assert task.outcome.lines_path == str(out) and out.is_file()
    probability = Path(task.outcome.probability_path)
    assert probability == out.with_name("roads_probability.tif") and probability.is_file()
    lines = _added_lines("My roads")
    assert lines.source().startswith(str(out)) and lines.crs().authid() == "EPSG:32619"
    prob_layer = QgsProject.instance().mapLayersByName("Road probability (aerial)")[0]  # as Processing names it
    assert prob_layer.crs().authid() == "EPSG:32619"
    assert isinstance(prob_layer.renderer(), QgsSingleBandPseudoColorRenderer)
    assert _on_roads_fraction(lines, mask) > 0.9


def test_extent_limits_the_lines(qgis_new_project, road_model, qgis_iface, tmp_path):
    tif, _ = write_road_geotiff(tmp_path / "area.tif", size=128, seed=5)
    raster = QgsRasterLayer(str(tif), "aerial")
    qgis_new_project.addMapLayer(raster)
    x0, y0 = UTM19_ORIGIN
    extent = (x0 + 16.0, y0 - 112.0, x0 + 80.0, y0 - 48.0)
    task = RoadSegTask(run_params(raster.id(), road_model, extent=extent, min_length=5.0), iface=qgis_iface)
    assert wait_for_task(task)
    assert task.outcome.ok, task.outcome.message
    box = _added_lines("Roads").extent()
    assert box.xMinimum() >= extent[0] - 1 and box.xMaximum() <= extent[2] + 1
    assert box.yMinimum() >= extent[1] - 1 and box.yMaximum() <= extent[3] + 1


def test_cancel_before_run_leaves_nothing(qgis_new_project, road_raster_layer, tiny_checkpoint, bar, tmp_path,
                                          qgis_iface):
    out = tmp_path / "out" / "roads.gpkg"
    out.parent.mkdir()
    n_layers = len(QgsProject.instance().mapLayers())
    task = RoadSegTask(run_params(road_raster_layer.id(), tiny_checkpoint, output=str(out), add_probability=True),
                       iface=qgis_iface)
    task.cancel()
    assert task.run() is False
    task.finished(False)
    assert task.outcome.status is Status.CANCELLED
    assert not out.exists() and not out.with_name("roads_probability.tif").exists()
    assert list(out.parent.iterdir()) == []
    assert len(QgsProject.instance().mapLayers()) == n_layers
    assert len(bar.get_messages(Qgis.Info)) == 1 and bar.get_messages(Qgis.Critical) == []


def test_cancel_while_running_in_the_task_manager(qgis_new_project, tiny_checkpoint, bar, tmp_path, qgis_iface):
    tif, _ = write_road_geotiff(tmp_path / "big.tif", size=1024, seed=1)
    raster = QgsRasterLayer(str(tif), "big")
    qgis_new_project.addMapLayer(raster)
    out = tmp_path / "out" / "roads.geojson"
    out.parent.mkdir()
    task = RoadSegTask(run_params(raster.id(), tiny_checkpoint, output=str(out), add_probability=True),
                       iface=qgis_iface)
    seen: list[float] = []

    def cancel_once_started(t):
        if not seen and t.progress() > 0:
            seen.append(t.progress())
            t.cancel()

    assert wait_for_task(task, on_poll=cancel_once_started)
    assert seen and seen[0] < 85, "cancel should land during segmentation"
    assert task.outcome.status is Status.CANCELLED
    assert list(out.parent.iterdir()) == []  # no lines, no probability raster, no temporary files
    assert QgsProject.instance().mapLayersByName("Roads") == []
    assert len(bar.get_messages(Qgis.Info)) == 1 and bar.get_messages(Qgis.Critical) == []


def test_corrupt_model_fails_with_a_message_bar_error(qgis_new_project, road_raster_layer, bar, tmp_path,
                                                      qgis_iface):
    model = tmp_path / "corrupt.pt"
    model.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    out = tmp_path / "roads.gpkg"
    task = RoadSegTask(run_params(road_raster_layer.id(), model, output=str(out)), iface=qgis_iface)
    assert wait_for_task(task)
    assert task.outcome.status is Status.FAILED
    assert "corrupt.pt" in task.outcome.message
    errors = bar.get_messages(Qgis.Critical)
    assert len(errors) == 1 and "Segment roads failed" in errors[0] and "corrupt.pt" in errors[0]
    assert not out.exists()
    assert QgsProject.instance().mapLayersByName("Roads") == []


def test_unknown_layer_is_refused_on_the_main_thread(qgis_new_project):
    with pytest.raises(RoadSegError, match="no raster layer"):
        RoadSegTask(SegmentParams("no-such-layer-id"))


def test_every_option_reaches_extract_roads(qgis_new_project, road_raster_layer, road_geotiff, tiny_checkpoint,
                                            tmp_path, monkeypatch):
    """The task hands every InferenceParams / VectoriseParams option to the one pipeline call."""
    from roadseg_plugin.core import pipeline

    x0, y0 = UTM19_ORIGIN
    table = option_table(tiny_checkpoint, extent=(x0 + 8.0, y0 - 88.0, x0 + 88.0, y0 - 8.0))
    inference, vectorise = split_options(table)
    out = tmp_path / "roads.shp"
    params = SegmentParams(road_raster_layer.id(), InferenceParams(**inference), VectoriseParams(**vectorise),
                           output=str(out), add_probability=True)
    seen: dict = {}
    monkeypatch.setattr(pipeline, "extract_roads", fake_extract_roads(seen))
    task = RoadSegTask(params)
    assert task.run(), task.outcome.message
    assert seen["params"] is params.inference and seen["vectorise"] is params.vectorise
    assert_options_arrived(table, seen["params"], seen["vectorise"])
    assert seen["lines_out"] == out and seen["prob_out"] == out.with_name("roads_probability.tif")
    reader = seen["source"]  # the extent is read through the layer's data provider ...
    assert reader.bounds == pytest.approx(table["extent"])
    assert reader.files == [str(road_geotiff)]  # ... which still protects the layer's file


def test_an_output_over_the_layer_file_is_refused(qgis_new_project, road_geotiff, tiny_checkpoint, tmp_path,
                                                  qgis_iface):
    """A raster inside a GeoPackage read through the provider: writing the lines there would replace it."""
    from osgeo import gdal

    gpkg = tmp_path / "data.gpkg"
    gdal.Translate(str(gpkg), str(road_geotiff), format="GPKG")
    before = gpkg.read_bytes()
    raster = QgsRasterLayer(str(gpkg), "gpkg raster")
    assert raster.isValid()
    qgis_new_project.addMapLayer(raster)
    x0, y0 = UTM19_ORIGIN
    task = RoadSegTask(run_params(raster.id(), tiny_checkpoint, output=str(gpkg),
                                  extent=(x0 + 8.0, y0 - 88.0, x0 + 88.0, y0 - 8.0)), iface=qgis_iface)
    assert not isinstance(task.source, str)
    assert task.run() is False
    assert task.outcome.status is Status.FAILED and "would overwrite the input" in task.outcome.message
    assert gpkg.read_bytes() == before


def test_temporary_output_folder_goes_after_a_failure(qgis_new_project, road_raster_layer, tmp_path, qgis_iface):
    model = tmp_path / "corrupt.pt"
    model.write_bytes(b"not a checkpoint")
    task = RoadSegTask(run_params(road_raster_layer.id(), model, add_probability=True), iface=qgis_iface)
    before = set(Path(task._temp_root).glob("roadseg_*"))
    assert task.run() is False
    assert task.outcome.status is Status.FAILED
    assert set(Path(task._temp_root).glob("roadseg_*")) == before


def test_a_plain_png_gets_lines_over_it_and_the_warning_stays(qgis_new_project, road_model, bar, tmp_path,
                                                             qgis_iface):
    """An image without georeferencing: QGIS draws it at x = column, y = -row; the lines are there too
    (not above it), and the "no georeferencing" warning stays in the message bar and the log."""
    from qgis.core import QgsApplication

    from tests.conftest import draw_roads, road_image
    from tests.rasters import write_raster

    rng = np.random.default_rng(4)
    mask = draw_roads(128, rng, n=3, width=7)
    path = write_raster(tmp_path / "photo.png", road_image(mask, rng))
    raster = QgsRasterLayer(str(path), "photo")
    assert raster.isValid() and not raster.crs().isValid()
    qgis_new_project.addMapLayer(raster)
    logged = []
    QgsApplication.messageLog().messageReceived.connect(lambda message, tag, level: logged.append((tag, message)))
    task = RoadSegTask(run_params(raster.id(), road_model, threshold=0.5, min_length=5.0,
                                  layer_name="Roads (photo)"), iface=qgis_iface)
    assert task.run()
    task.finished(True)
    lines = _added_lines("Roads (photo)")
    assert lines.featureCount() >= 2
    assert raster.extent().contains(lines.extent()) and raster.extent().toString(0) == "0,-128 : 128,0"
    assert _on_roads_fraction(lines, mask, origin=(0.0, 0.0)) > 0.9  # x = column, y = -row
    (warning,) = bar.get_messages(Qgis.Warning)
    assert "no georeferencing" in warning and "log messages" in warning
    assert any(tag == "RoadSeg" and "no georeferencing" in message for tag, message in logged)
