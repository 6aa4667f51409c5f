"""roadseg:trainfromlines: road lines digitised in QGIS (memory layers) -> a fine-tuned checkpoint."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from tests.conftest import needs_shared_data
from tests.plugin.conftest import UTM19_ORIGIN, lines_layer, mask_to_lines_wkt

X0, Y0 = UTM19_ORIGIN


def run(params: dict):
    import processing

    return processing.run("roadseg:trainfromlines", params)


def base_params(tmp_path: Path, rasters: list, lines, init: Path, **extra) -> dict:
    return {"RASTER": [str(r) for r in rasters], "LINES": lines, "INIT_MODEL": str(init), "MINUTES": 0.1,
            "DEVICE": "cpu", "OUTPUT_MODEL": str(tmp_path / "out" / "tuned.pt"),
            "OUTPUT_FOLDER": str(tmp_path / "run"), **extra}


def check_outputs(result: dict, tmp_path: Path, init_meta) -> None:
    from roadseg_plugin.core.checkpoint import load_model

    assert result["OUTPUT_MODEL"] == str(tmp_path / "out" / "tuned.pt")
    model, meta = load_model(result["OUTPUT_MODEL"])
    assert meta.arch_config == init_meta.arch_config  # fine-tuned, same architecture
    # a guarded fine-tune: the start model comes back when the tuned one is no better, and says so
    assert result["KEPT"] in ("tuned", "start") and "validation area" in result["SUMMARY"]
    if result["KEPT"] == "tuned":
        assert "drawn lines" in meta.data
    else:
        assert meta.to_dict() == init_meta.to_dict()
    run_dir = Path(result["OUTPUT_FOLDER"])
    for name in ("loss.png", "predictions.gif", "history.csv"):
        assert (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0, name


def test_lines_in_another_crs_over_two_rasters(roadseg_provider, road_rasters, tiny_checkpoint, tmp_path: Path) -> None:
    """Lines digitised in WGS84 over two UTM rasters, with an AOI; one epoch fine-tunes the model."""
    from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsGeometry, QgsProject

    from roadseg_plugin.core.checkpoint import load_model

    wkt = []
    rasters = []
    for i in range(2):
        origin = (X0 + 1000 * i, Y0)
        path, mask = road_rasters(f"area{i}.tif", size=160, seed=20 + i, origin=origin)
        rasters.append(path)
        wkt += mask_to_lines_wkt(mask, origin)
    to_wgs84 = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:32619"),
                                      QgsCoordinateReferenceSystem("EPSG:4326"), QgsProject.instance())
    wgs84 = []
    for w in wkt:
        geom = QgsGeometry.fromWkt(w)
        geom.transform(to_wgs84)
        wgs84.append(geom.asWkt(9))
    lines = lines_layer(wgs84, crs="EPSG:4326")
    aoi = lines_layer([f"POLYGON(({X0} {Y0}, {X0 + 1160} {Y0}, {X0 + 1160} {Y0 - 120}, {X0} {Y0 - 120}, {X0} {Y0}))"],
                      kind="Polygon", name="aoi")
    result = run(base_params(tmp_path, rasters, lines, tiny_checkpoint, AOI=aoi, BUFFER=3.5, VAL_FRACTION=0.3))
    check_outputs(result, tmp_path, load_model(tiny_checkpoint)[1])


@pytest.mark.parametrize("case, message", [
    ("empty", "has no lines"),
    ("outside", "falls on the raster"),
    ("aoi_outside", "does not overlap"),
])
def test_bad_labels_are_clear_errors(roadseg_provider, road_rasters, tiny_checkpoint, tmp_path: Path,
                                     case: str, message: str) -> None:
    from qgis.core import QgsProcessingException

    path, mask = road_rasters("area.tif", size=128)
    wkt = mask_to_lines_wkt(mask)
    extra = {}
    if case == "empty":
        lines = lines_layer([])
    elif case == "outside":
        lines = lines_layer([f"LINESTRING({X0 + 5000} {Y0}, {X0 + 5100} {Y0 - 100})"])
    else:
        lines = lines_layer(wkt)
        extra["AOI"] = lines_layer([f"POLYGON(({X0 - 900} {Y0}, {X0 - 800} {Y0}, {X0 - 800} {Y0 - 100}, "
                                    f"{X0 - 900} {Y0}))"], kind="Polygon")
    with pytest.raises(QgsProcessingException, match=message):
        run(base_params(tmp_path, [path], lines, tiny_checkpoint, **extra))
    assert not (tmp_path / "out" / "tuned.pt").exists()


@needs_shared_data
@pytest.mark.slow  # real data, 12 s; the fast twin: test_lines_in_another_crs_over_two_rasters (drawn roads)
def test_real_tile_one_epoch(roadseg_provider, mass_tile, tiny_checkpoint, tmp_path: Path) -> None:
    """Lines 'digitised' over a real Massachusetts crop (its mask's centre lines) train one epoch."""
    from roadseg_plugin.core.checkpoint import load_model
    from roadseg_plugin.core.vectorise import vectorise_mask

    image, mask_path = mass_tile
    with rasterio.open(mask_path) as src:
        centre_lines = vectorise_mask(src.read(1) > 127, src.transform, "EPSG:26919", min_length=10)
    assert len(centre_lines) > 0, "the crop has roads"
    lines = lines_layer([g.wkt for g in centre_lines.geometry], crs="EPSG:26919")
    assert lines.featureCount() == len(centre_lines)
    result = run(base_params(tmp_path, [image], lines, tiny_checkpoint))
    check_outputs(result, tmp_path, load_model(tiny_checkpoint)[1])
    history = (Path(result["OUTPUT_FOLDER"]) / "history.csv").read_text().splitlines()
    assert len(history) == 2 and np.isfinite(float(history[1].split(",")[1]))


def recording_feedback():
    """A real Processing feedback that keeps what the algorithm tells the log."""
    from qgis.core import QgsProcessingFeedback

    class Recording(QgsProcessingFeedback):
        def __init__(self) -> None:
            super().__init__()
            self.infos: list[str] = []
            self.warnings: list[str] = []

        def pushInfo(self, info: str) -> None:  # noqa: N802 (QGIS API)
            self.infos.append(info)
            super().pushInfo(info)

        def reportError(self, error: str, fatalError: bool = False) -> None:  # noqa: N802, N803 (QGIS API)
            self.warnings.append(error)
            super().reportError(error, fatalError)

    return Recording()


def test_training_talks_in_the_processing_log(roadseg_provider, road_rasters, tiny_checkpoint, tmp_path: Path) -> None:
    """Progress per round with the time left and the fine-tune's findings reach the Processing log
    as they happen (not only train.log), and the summary is there once."""
    import processing

    path, mask = road_rasters("area.tif", size=192, seed=7)
    feedback = recording_feedback()
    params = base_params(tmp_path, [path], lines_layer(mask_to_lines_wkt(mask)), tiny_checkpoint, MINUTES=0.2)
    result = processing.run("roadseg:trainfromlines", params, feedback=feedback)
    epochs = [line for line in feedback.infos if line.startswith("round ")]
    assert epochs and epochs[0].startswith("round 1: step ") and " left)" in epochs[0], feedback.infos
    assert "val_loss=" in epochs[0] and any(line.startswith("training for 0.2 min") for line in feedback.infos)
    assert any(line.startswith("start model on the validation area") for line in feedback.infos)
    summaries = [line for line in feedback.infos if line.startswith("validation area (")]
    assert summaries == [result["SUMMARY"]], feedback.infos  # once
    log = (tmp_path / "run" / "train.log").read_text()
    assert all(line in log for line in epochs)  # the same lines as train.log


def test_early_stopping_is_told_in_the_processing_log(qgis_processing) -> None:
    """The real EarlyStopping callback's notice reaches the feedback through `log_to_feedback`."""
    from roadseg_plugin.processing.base import log_to_feedback
    from training.callbacks.early_stopping import EarlyStopping

    class Run:
        stop_training, monitor, mode = False, "val_loss", "min"

    feedback, stopper, run = recording_feedback(), EarlyStopping(patience=1), Run()
    stopper.on_train_begin(run)
    with log_to_feedback(feedback):
        stopper.on_epoch_end(run, {"epoch": 1, "val_loss": 0.5})
        stopper.on_epoch_end(run, {"epoch": 2, "val_loss": 0.6})
    assert run.stop_training
    assert feedback.infos == ["early stopping: val_loss did not improve for 1 epochs"]


def test_without_the_training_packages_one_line_names_the_installer(roadseg_provider, road_rasters, tiny_checkpoint,
                                                                   tmp_path: Path, monkeypatch) -> None:
    """No torch in QGIS's Python: one line with the menu item and the set, no ModuleNotFoundError."""
    from qgis.core import QgsProcessingException

    from roadseg_plugin.install import packages

    real = packages.installed  # what the dependency checks ask (find_spec)
    monkeypatch.setattr(packages, "installed", lambda name: name != "torch" and real(name))
    path, mask = road_rasters("area.tif", size=128)
    with pytest.raises(QgsProcessingException) as caught:
        run(base_params(tmp_path, [path], lines_layer(mask_to_lines_wkt(mask)), tiny_checkpoint))
    message = str(caught.value)
    assert message == ("Train model from drawn road lines needs Python packages that are not installed: torch. "
                       'Install them with Plugins > RoadSeg > Install packages... "Training and GPU"'), message
    assert "\n" not in message and not (tmp_path / "out").exists()
