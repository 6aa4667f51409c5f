"""The `roadseg` Processing provider: registration, the four algorithms, the dependency message."""
from __future__ import annotations

import subprocess
import sys

import pytest

from roadseg_plugin.install import deps

ALGORITHMS = ("segmentroads", "vectorisemask", "trainfromlines", "evaluatemodel", "segmentregion")


def test_provider_lists_its_algorithms(roadseg_provider) -> None:
    from qgis.core import QgsApplication

    registry = QgsApplication.processingRegistry()
    assert registry.providerById("roadseg") is not None
    ids = sorted(alg.id() for alg in roadseg_provider.algorithms())
    assert ids == sorted(f"roadseg:{name}" for name in ALGORITHMS)
    for name in ALGORITHMS:
        alg = registry.algorithmById(f"roadseg:{name}")
        assert alg is not None and alg.displayName() and alg.shortHelpString()
        assert alg.group() == "Road extraction" and alg.groupId() == "roadextraction"
        clone = alg.createInstance()
        assert type(clone) is type(alg) and clone is not alg


@pytest.mark.parametrize("name, params, outputs", [
    ("segmentroads", {"INPUT", "MODEL", "DEVICE", "EXTENT", "THRESHOLD", "MIN_LENGTH", "TTA", "OUTPUT", "MASK_OUTPUT"},
     {"OUTPUT", "MASK_OUTPUT"}),
    ("vectorisemask", {"INPUT", "THRESHOLD", "MIN_LENGTH", "SPUR_LENGTH", "GAP", "TOLERANCE", "SMOOTH", "OUTPUT"},
     {"OUTPUT"}),
    ("trainfromlines", {"RASTER", "LINES", "BUFFER", "AOI", "INIT_MODEL", "MINUTES", "VAL_FRACTION", "OUTPUT_MODEL",
                        "OUTPUT_FOLDER"}, {"OUTPUT_MODEL", "OUTPUT_FOLDER"}),
    ("evaluatemodel", {"MODEL", "RASTER", "LINES", "BUFFER", "REFERENCE_MASK", "DEVICE", "THRESHOLD", "OUTPUT_JSON"},
     {"OUTPUT_JSON", "IOU", "F1", "RELAXED_F1", "APLS"}),
])
def test_parameters_and_outputs(roadseg_provider, name: str, params: set, outputs: set) -> None:
    from qgis.core import QgsApplication

    alg = QgsApplication.processingRegistry().algorithmById(f"roadseg:{name}")
    assert params <= {p.name() for p in alg.parameterDefinitions()}
    assert outputs <= {o.name() for o in alg.outputDefinitions()}


def test_devices_and_default_model(roadseg_provider) -> None:
    import torch
    from qgis.core import QgsApplication

    from roadseg_plugin.core.params import BUNDLED_MODEL

    expected = ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for name, model_key in (("segmentroads", "MODEL"), ("evaluatemodel", "MODEL"), ("trainfromlines", "INIT_MODEL")):
        alg = QgsApplication.processingRegistry().algorithmById(f"roadseg:{name}").create()  # torch now imported
        assert alg.parameterDefinition("DEVICE").options() == expected, name
        assert alg.parameterDefinition(model_key).defaultValue() == str(BUNDLED_MODEL), name


def test_no_threshold_is_spelled_minus_one(roadseg_provider) -> None:
    """An empty optional threshold is the model's (or the raster's) own: no magic -1 anywhere."""
    from qgis.core import QgsApplication

    for name in ("segmentroads", "vectorisemask", "evaluatemodel"):
        threshold = QgsApplication.processingRegistry().algorithmById(f"roadseg:{name}").parameterDefinition(
            "THRESHOLD")
        assert threshold.flags() & threshold.FlagOptional and threshold.defaultValue() is None, name
        assert threshold.minimum() == 0 and threshold.maximum() == 1, name


def test_missing_dependency_is_a_processing_error(roadseg_provider, road_rasters, tmp_path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import processing
    from qgis.core import QgsProcessingException

    monkeypatch.setitem(deps.REQUIRED, "roadseg_absent_pkg", "roadseg-absent-pkg>=1")
    path, _ = road_rasters("area.tif", size=64)
    with pytest.raises(QgsProcessingException) as info:
        processing.run("roadseg:segmentroads", {"INPUT": str(path), "OUTPUT": str(tmp_path / "roads.gpkg")})
    assert str(info.value) == deps.dependency_message(["roadseg_absent_pkg"])  # one line, the menu item
    assert not (tmp_path / "roads.gpkg").exists()


def test_provider_loads_without_torch(tmp_path) -> None:
    """Listing the algorithms never imports torch, rasterio or the core (QGIS starts fast)."""
    code = f"""
import sys
from qgis.core import QgsApplication
app = QgsApplication([], False); app.initQgis()
from roadseg_plugin.processing.provider import RoadSegProvider
provider = RoadSegProvider()
QgsApplication.processingRegistry().addProvider(provider)
assert len(provider.algorithms()) == {len(ALGORITHMS)}
print(sorted(m for m in ('torch', 'rasterio', 'geopandas', 'roadseg_plugin.core.engine') if m in sys.modules))
"""
    root = str(deps.__file__).rsplit("/roadseg_plugin/", 1)[0]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120,
                          env={"QT_QPA_PLATFORM": "offscreen", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
