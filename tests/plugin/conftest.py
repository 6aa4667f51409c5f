

# ---- Plugin GUI / task fixtures (RoadSegPlugin, SegmentDialog, RoadSegTask) -------------------
import numpy as _np  # noqa: E402
import pytest as _pytest  # noqa: E402

from tests.rasters import UTM19_ORIGIN, copy_window, write_road_geotiff  # noqa: E402, F401 (used by test modules)


@_pytest.fixture
def road_geotiff(tmp_path):
    """Path of a 96x96 1 m GeoTIFF in EPSG:32619 with drawn roads."""
    return write_road_geotiff(tmp_path / "roads_utm19.tif")[0]


@_pytest.fixture
def road_raster_layer(qgis_new_project, road_geotiff):
    """`road_geotiff` loaded into a fresh project as a QgsRasterLayer."""
    from qgis.core import QgsRasterLayer

    layer = QgsRasterLayer(str(road_geotiff), "aerial")
    assert layer.isValid(), road_geotiff
    qgis_new_project.addMapLayer(layer)
    return layer


# ---- Processing fixtures (provider, road rasters, a tiny trained model, real tiles) -------------
import shutil as _shutil  # noqa: E402
from pathlib import Path as _Path  # noqa: E402

from tests.conftest import SHARED_DATA as _SHARED_DATA  # noqa: E402

MASS_CRS = "EPSG:26919"  # NAD83 / UTM 19N, Massachusetts
MASS_ORIGIN = (320000.0, 4700000.0)


@_pytest.fixture
def roadseg_provider(qgis_processing):
    """The `roadseg` Processing provider, registered for one test (an already registered one is reused)."""
    from qgis.core import QgsApplication

    from roadseg_plugin.processing.provider import RoadSegProvider

    registry = QgsApplication.processingRegistry()
    existing = registry.providerById("roadseg")
    if existing is not None:
        yield existing
        return
    provider = RoadSegProvider()
    assert registry.addProvider(provider)
    yield provider
    if registry.providerById("roadseg") is not None:
        registry.removeProvider("roadseg")


@_pytest.fixture
def road_rasters(tmp_path):
    """Factory: `make(name, size=256, seed=0, **kw)` writes a drawn-roads GeoTIFF (EPSG:32619, 1 m),
    returning (path, road mask)."""

    def make(name: str = "area.tif", size: int = 256, seed: int = 0, **kw):
        return write_road_geotiff(tmp_path / name, size=size, seed=seed, **kw)

    return make


@_pytest.fixture(scope="session")
def road_model(tmp_path_factory) -> _Path:
    """A depth-2, base-8 U-Net trained for 2 short epochs on drawn roads: it really finds them.

    Grey roads on green-brown noise are easy; validation IoU is above 0.9 after one epoch.
    """
    from tests.conftest import draw_roads, road_image, write_png_pair
    from training.train import TrainConfig, train_model

    root = tmp_path_factory.mktemp("road_model")
    rng = _np.random.default_rng(0)
    for i in range(4):
        mask = draw_roads(128, rng, n=3, width=7)
        write_png_pair(root / "data", f"t{i}", road_image(mask, rng), mask)
    train_model(TrainConfig(data=root / "data", out=root / "run", epochs=2, tile=64, infer_tile=128, overlap=16,
                            batch_size=16, samples_per_epoch=96, base_channels=8, depth=2, workers=0,
                            augment=False, lr=1e-2, gsd_m=1.0, device="cpu", val_fraction=0.25))
    path = root / "road_model.pt"
    _shutil.copyfile(root / "run" / "best.pt", path)
    return path


@_pytest.fixture
def mass_tile(tmp_path):
    """A 512 px crop of a real Massachusetts tile with its mask, as GeoTIFFs given a CRS and a 1 m
    transform: (image path, mask path). Skips when the shared data is absent."""
    import rasterio
    from rasterio.windows import Window

    images = sorted((_SHARED_DATA / "images").glob("*.png")) if (_SHARED_DATA / "images").is_dir() else []
    if not images:
        _pytest.skip(f"real Massachusetts tiles not found at {_SHARED_DATA} (they live beside the repository)")
    window = Window(400, 400, 512, 512)
    for image_path in images:  # the first crop that is imagery (many tiles are partly white no-data)
        with rasterio.open(image_path) as src:
            white = (src.read(window=window) == 255).all(axis=0).mean()
        if white < 0.02:
            break
    mask_path = _SHARED_DATA / "masks" / image_path.name
    out = [copy_window(src_path, tmp_path / name, window, crs=MASS_CRS, origin=MASS_ORIGIN, gsd=1.0)
           for src_path, name in ((image_path, "mass.tif"), (mask_path, "mass_mask.tif"))]
    return tuple(out)


def lines_layer(geoms_wkt: list[str], crs: str = "EPSG:32619", kind: str = "LineString", name: str = "lines"):
    """A memory vector layer of the given WKT geometries (what a user digitises in QGIS)."""
    from qgis.core import QgsFeature, QgsGeometry, QgsVectorLayer

    layer = QgsVectorLayer(f"{kind}?crs={crs}", name, "memory")
    features = []
    for wkt in geoms_wkt:
        feature = QgsFeature()
        feature.setGeometry(QgsGeometry.fromWkt(wkt))
        features.append(feature)
    assert layer.dataProvider().addFeatures(features)
    layer.updateExtents()
    return layer


def mask_to_lines_wkt(mask, origin=UTM19_ORIGIN, gsd: float = 1.0) -> list[str]:
    """Centre lines of the straight drawn roads of `draw_roads` masks, as WKT in map coordinates."""
    x0, y0 = origin
    size = mask.shape[0]
    wkt = []
    full_rows = _np.flatnonzero(mask.all(axis=1))
    full_cols = _np.flatnonzero(mask.all(axis=0))
    for run in _np.split(full_rows, _np.flatnonzero(_np.diff(full_rows) > 1) + 1) if full_rows.size else []:
        y = y0 - (run.mean() + 0.5) * gsd
        wkt.append(f"LINESTRING({x0} {y}, {x0 + size * gsd} {y})")
    for run in _np.split(full_cols, _np.flatnonzero(_np.diff(full_cols) > 1) + 1) if full_cols.size else []:
        x = x0 + (run.mean() + 0.5) * gsd
        wkt.append(f"LINESTRING({x} {y0}, {x} {y0 - size * gsd})")
    return wkt


# ---- Waiting for a QgsTask in the real task manager (plugin task tests) -------------------------
def wait_for_task(task, timeout: float = 120.0, on_poll=None) -> bool:
    """Add `task` to QGIS's task manager and process events until it completed or terminated.

    `on_poll(task)` runs on the main thread at every poll (e.g. to cancel it mid-run). Returns
    True when the task ended (its `finished()` has then run), False on timeout.
    """
    import time

    from qgis.core import QgsApplication

    ended = []
    task.taskCompleted.connect(lambda: ended.append("completed"))
    task.taskTerminated.connect(lambda: ended.append("terminated"))
    QgsApplication.taskManager().addTask(task)
    deadline = time.monotonic() + timeout
    while not ended and time.monotonic() < deadline:
        QgsApplication.processEvents()
        if on_poll is not None and not ended:
            on_poll(task)
        time.sleep(0.01)
    QgsApplication.processEvents()
    return bool(ended)


# ---- One option table for every adapter (dialog, task, Processing) ------------------------------
def option_names() -> tuple[set[str], set[str]]:
    """The field names of InferenceParams and of VectoriseParams: the options every adapter carries."""
    from dataclasses import fields

    from roadseg_plugin.core.params import InferenceParams, VectoriseParams

    return {f.name for f in fields(InferenceParams)}, {f.name for f in fields(VectoriseParams)}


def option_table(model, extent) -> dict:
    """A value other than the default for EVERY option of InferenceParams and VectoriseParams.

    The adapters' table tests set each of these through their own inputs (widgets, Processing
    parameters, SegmentParams) and check it arrives; an option added to the core without an entry
    here fails them all, so no adapter can forget it silently.
    """
    from roadseg_plugin.core.params import InferenceParams, VectoriseParams, describe
    from tests.option_values import NON_DEFAULT

    table = {**NON_DEFAULT, "model": str(model), "extent": extent}
    inference, vectorise = option_names()
    assert set(table) == inference | vectorise, (
        f"give the option table a non-default value for {sorted((inference | vectorise) ^ set(table))}")
    for name, value in table.items():
        kind = InferenceParams if name in inference else VectoriseParams
        assert value != describe(kind, name)["default"], f"{name}: the table's value is the default"
    return table


def split_options(table: dict) -> tuple[dict, dict]:
    """`table` as (InferenceParams kwargs, VectoriseParams kwargs)."""
    inference, _ = option_names()
    return ({k: v for k, v in table.items() if k in inference}, {k: v for k, v in table.items() if k not in inference})


def assert_options_arrived(table: dict, inference, vectorise, skip: tuple[str, ...] = ()) -> None:
    """Every option of `table` (but `skip`) has its value in the params objects an adapter built."""
    import pytest

    names, _ = option_names()
    for name, value in table.items():
        if name in skip:
            continue
        got = getattr(inference if name in names else vectorise, name)
        expected = pytest.approx(value) if isinstance(value, (float, tuple)) else value
        assert got == expected, f"option {name}: {got!r} arrived instead of {value!r}"


def fake_extract_roads(seen: dict):
    """A stand-in for `core.pipeline.extract_roads` that records its arguments and finds no road."""
    from pathlib import Path
    from types import SimpleNamespace

    import geopandas as gpd

    from roadseg_plugin.core.pipeline import RoadsResult

    def extract_roads(source, lines_out, params, vectorise_params=None, prob_out=None, on_progress=None,
                      is_cancelled=None):
        seen.update(source=source, lines_out=lines_out, params=params, vectorise=vectorise_params,
                    prob_out=prob_out)
        lines = gpd.GeoDataFrame({"id": [], "length_m": [], "width_m": [], "mean_prob": []}, geometry=[])
        segment = SimpleNamespace(width=1, height=1, crs=None, backend="fake", device="cpu", seconds=0.1,
                                  threshold=params.threshold or 0.5, warnings=[])
        return RoadsResult(Path(lines_out) if lines_out else None, Path(prob_out) if prob_out else None,
                           segment, segment.threshold, held=lines)

    return extract_roads


SAMPLE_PNG = _Path(__file__).resolve().parents[2] / "samples" / "massachusetts_19678630_crop.png"


@_pytest.fixture
def sample_geotiff(tmp_path):
    """A 512 x 512 crop of the bundled sample image as a GeoTIFF: 1 m pixels in EPSG:26986 (the demo's)."""
    from rasterio.windows import Window

    return copy_window(SAMPLE_PNG, tmp_path / "sample_26986.tif", Window(256, 256, 512, 512), bands=[1, 2, 3],
                       crs="EPSG:26986", origin=(230000.0, 900000.0), gsd=1.0)
