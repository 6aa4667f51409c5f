"""CPU inference without torch: the CLI, the Segment roads task and the Processing algorithms run
in a Python where torch cannot be imported, on the ONNX files beside the checkpoint.

"Without torch" is real, not mocked: QGIS's interpreter (the one this virtual environment was made
from) runs with a folder of links to this environment's site-packages minus torch and its kin
on PYTHONPATH, so `import torch` fails and `find_spec("torch")` is None, as on a machine where
only the CPU-inference packages were installed.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from roadseg_plugin.core.normalise import normalise
from roadseg_plugin.core.onnx_backend import DIGEST_KEY, checkpoint_digest, find_fp32, find_int8
from roadseg_plugin.core.params import BUNDLED_MODEL
from tests.conftest import ROOT
from tests.rasters import copy_window

BLOCKED = {"torch", "functorch", "torchgen", "torchvision", "triton", "nvidia"}
BASE_PYTHON = os.path.realpath(sys.executable)  # /usr/bin/python3.11: QGIS's own interpreter
SAMPLE = ROOT / "samples" / "massachusetts_19678630_crop.png"
needs_bundled_model = pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason=f"no bundled model at {BUNDLED_MODEL}")


@pytest.fixture(scope="module")
def no_torch_site(tmp_path_factory) -> Path:
    """A folder of links to this environment's packages, torch and its kin left out."""
    farm = tmp_path_factory.mktemp("site_without_torch")
    for entry in Path(sysconfig.get_path("purelib")).iterdir():
        top = entry.name.split("-")[0].split(".")[0].lower()
        if top not in BLOCKED and entry.suffix != ".pth":
            (farm / entry.name).symlink_to(entry)
    return farm


def run_without_torch(site: Path, args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "PATH": "/usr/bin:/bin", "HOME": str(cwd),
           "PYTHONNOUSERSITE": "1", "QT_QPA_PLATFORM": "offscreen", "XDG_RUNTIME_DIR": str(cwd)}
    return subprocess.run([BASE_PYTHON, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def write_geotiff(path: Path, size: int = 512) -> Path:
    """A crop of the shipped Massachusetts sample as a 1 m GeoTIFF in EPSG:26986."""
    return copy_window(SAMPLE, path, Window(256, 256, size, size), bands=[1, 2, 3], crs="EPSG:26986",
                       origin=(230000.0, 900000.0), gsd=1.0)


@pytest.fixture(scope="module")
def area(tmp_path_factory) -> Path:
    return write_geotiff(tmp_path_factory.mktemp("area") / "area.tif")


# ---- the shipped ONNX files -------------------------------------------------------------------
@needs_bundled_model
def test_the_shipped_fp32_export_belongs_to_the_shipped_checkpoint():
    # Fails when roadseg_default.pt is replaced without re-exporting: then run
    # `python -m roadseg_plugin export-onnx` beside it (and `quantize`) and commit both files.
    import onnx

    fp32 = find_fp32()
    assert fp32 is not None and fp32.parent == BUNDLED_MODEL.parent, "re-export the bundled model to ONNX"
    props = {p.key: p.value for p in onnx.load(str(fp32), load_external_data=False).metadata_props}
    assert props[DIGEST_KEY] == checkpoint_digest(BUNDLED_MODEL)
    assert find_int8() is not None


@needs_bundled_model
def test_the_shipped_fp32_export_computes_what_torch_computes():
    pytest.importorskip("torch")
    from roadseg_plugin.core.backends import OnnxRuntimeBackend, TorchBackend

    by_torch, by_onnx = TorchBackend.load(BUNDLED_MODEL, "cpu"), OnnxRuntimeBackend(find_fp32(), "cpu")
    with rasterio.open(SAMPLE) as src:
        batch = normalise(src.read(window=Window(0, 0, 256, 256)), by_torch.meta)[None]
    np.testing.assert_allclose(by_onnx.predict(batch), by_torch.predict(batch), atol=1e-4)


# ---- the Python without torch -----------------------------------------------------------------
def test_torch_cannot_be_imported_but_every_cpu_module_can(no_torch_site, tmp_path):
    code = """
import importlib, importlib.util, sys
try:
    import torch
    print("torch imported")
except ImportError:
    pass
assert importlib.util.find_spec("torch") is None
for name in ("roadseg_plugin.core.engine", "roadseg_plugin.core.pipeline", "roadseg_plugin.core.vectorise",
             "roadseg_plugin.core.readers", "roadseg_plugin.core.onnx_backend", "roadseg_plugin.core.backends",
             "roadseg_plugin.core.params", "roadseg_plugin.cli.main", "roadseg_plugin.install.deps",
             "roadseg_plugin.install.packages"):
    importlib.import_module(name)
from roadseg_plugin.install import deps
print(deps.missing_dependencies(), deps.missing_optional())
print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "roadseg_plugin.core.checkpoint")))
"""
    done = run_without_torch(no_torch_site, ["-c", code], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == ["[] ['torch']", "[]"]


@needs_bundled_model
def test_cli_segments_and_vectorises_with_the_shipped_onnx_files(no_torch_site, area, tmp_path):
    done = run_without_torch(no_torch_site, ["-m", "roadseg_plugin", "segment", str(area), "--out", "roads.gpkg",
                                             "--mask-out", "prob.tif"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "with onnxruntime-int8 on cpu" in done.stdout + done.stderr
    fp32 = run_without_torch(no_torch_site, ["-m", "roadseg_plugin", "segment", str(area), "--out", "fp32.gpkg",
                                             "--backend", "onnxruntime"], tmp_path)
    assert fp32.returncode == 0, fp32.stderr[-3000:]
    assert "with onnxruntime on cpu" in fp32.stdout + fp32.stderr
    vectorised = run_without_torch(no_torch_site, ["-m", "roadseg_plugin", "vectorise", "prob.tif", "--out",
                                                   "lines.shp"], tmp_path)
    assert vectorised.returncode == 0, vectorised.stderr[-3000:]
    import geopandas as gpd

    for name in ("roads.gpkg", "fp32.gpkg", "lines.shp"):
        assert len(gpd.read_file(tmp_path / name)) > 5, name


@needs_bundled_model
def test_a_checkpoint_runs_on_its_fp32_export_and_without_one_says_what_to_install(no_torch_site, tmp_path):
    digest = checkpoint_digest(BUNDLED_MODEL)[:12]
    with_fp32 = tmp_path / "with" / "mine.pt"
    with_fp32.parent.mkdir()
    shutil.copyfile(BUNDLED_MODEL, with_fp32)
    shutil.copyfile(find_fp32(), with_fp32.with_name(f"mine.{digest}.onnx"))
    bare = tmp_path / "bare" / "mine.pt"
    bare.parent.mkdir()
    shutil.copyfile(BUNDLED_MODEL, bare)
    code = f"""
from roadseg_plugin.core.backends import load_backend
from roadseg_plugin.core.errors import CheckpointError
print(load_backend({str(with_fp32)!r}, "cpu").name, load_backend({str(with_fp32)!r}, "auto").device)
for model, kw in (({str(bare)!r}, {{}}), ({str(with_fp32)!r}, {{"backend": "torch"}})):
    try:
        load_backend(model, "cpu", **kw)
    except CheckpointError as exc:
        print(exc)
try:
    load_backend({str(with_fp32)!r}, "cuda")
except ValueError as exc:
    print(exc)
"""
    done = run_without_torch(no_torch_site, ["-c", code], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "onnxruntime cpu"
    assert lines[1].startswith(f"{bare}: has no ONNX export beside it and needs torch to export it to ONNX; "
                               "install the Training and GPU packages (Plugins > RoadSeg > Install packages...) "
                               "or pass an .onnx model")
    assert "the torch backend needs PyTorch, which is not installed" in lines[2]
    assert lines[3].startswith("device 'cuda' needs PyTorch, which is not installed; use --device cpu")
    assert not list(bare.parent.glob("*.onnx"))  # nothing half-made


QGIS_RUN = """
import json, sys
from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingFeedback, QgsProject, QgsRasterLayer
app = QgsApplication([], False)
app.initQgis()
from roadseg_plugin.processing.provider import RoadSegProvider
provider = RoadSegProvider()  # kept referenced: the registry does not own a Python provider
QgsApplication.processingRegistry().addProvider(provider)
result = {}
# the Segment roads button: the dialog's task, run here on this thread
from roadseg_plugin.core.params import InferenceParams, VectoriseParams
from roadseg_plugin.gui.params import SegmentParams
from roadseg_plugin.gui.task import RoadSegTask
layer = QgsRasterLayer(sys.argv[1], "aerial")
QgsProject.instance().addMapLayer(layer)
task = RoadSegTask(SegmentParams(layer_id=layer.id(), inference=InferenceParams(device="cpu"),
                                 vectorise=VectoriseParams(), layer_name="Roads"))
task.finished(task.run())
result["task"] = [task.outcome.status.value, task.outcome.message, task.outcome.n_lines,
                  [l.name() for l in task.added_layers]]
for alg_id, params in (("roadseg:segmentroads", {"INPUT": sys.argv[1], "DEVICE": 1, "OUTPUT": "seg.gpkg",
                                                 "MASK_OUTPUT": "prob.tif"}),
                       ("roadseg:vectorisemask", {"INPUT": "prob.tif", "OUTPUT": "vec.gpkg"}),
                       ("roadseg:evaluatemodel", {"RASTER": sys.argv[1], "REFERENCE_MASK": "prob.tif",
                                                  "OUTPUT_JSON": "eval.json"})):
    alg = QgsApplication.processingRegistry().createAlgorithmById(alg_id)
    context, feedback = QgsProcessingContext(), QgsProcessingFeedback()
    outputs, ok = alg.run(params, context, feedback)
    result[alg_id] = [ok, sorted(outputs)]
result["torch"] = sorted(m for m in sys.modules if m.split(".")[0] == "torch")
print("RESULT " + json.dumps(result))
"""


@needs_bundled_model
def test_qgis_task_and_processing_run_without_torch(no_torch_site, area, tmp_path):
    """Segment roads (the task the dialog starts), roadseg:segmentroads, vectorisemask and evaluatemodel."""
    done = run_without_torch(no_torch_site, ["-c", QGIS_RUN, str(area)], tmp_path)
    line = next((out for out in done.stdout.splitlines() if out.startswith("RESULT ")), None)
    assert line is not None, (done.stdout[-2000:], done.stderr[-3000:])
    result = json.loads(line[len("RESULT "):])
    status, message, n_lines, added = result["task"]
    assert status == "ok" and n_lines > 5 and added == ["Roads"], message
    assert result["roadseg:segmentroads"] == [True, ["MASK_OUTPUT", "OUTPUT"]], done.stderr[-3000:]
    assert result["roadseg:vectorisemask"][0] is True, done.stderr[-3000:]
    assert result["roadseg:evaluatemodel"][0] is True, done.stderr[-3000:]
    assert json.loads((tmp_path / "eval.json").read_text())
    assert result["torch"] == []
    import geopandas as gpd

    assert len(gpd.read_file(tmp_path / "seg.gpkg")) > 5 and len(gpd.read_file(tmp_path / "vec.gpkg")) > 5
