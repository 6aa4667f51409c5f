"""`python -m roadseg_plugin segment|vectorise|export-onnx|quantize` never loses data: each refusal,
interruption and write failure, run as a real subprocess on real small files, with the inputs and
the previous outputs hashed before and after.

Refusals and failures exit 2 with one line `error: <file>: <what is wrong>; <what to do>` on
stderr naming the user's file (never a temporary one), and nothing else: no GDAL or libtiff
noise. Ctrl-C exits 130 and SIGTERM 143. In every case the previous outputs are unchanged and no
temporary is left; one a SIGKILL leaves is removed by the next run for the same output.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from tests.conftest import default_sigint, draw_roads, road_image
from tests.rasters import write_raster

resource = pytest.importorskip("resource", reason="POSIX only: file size limits, SIGKILL")

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
UTM = Affine(1.0, 0.0, 500000.0, 0.0, -1.0, 5700000.0)  # EPSG:32631, 1 m pixels (the test model's GSD)
TORCH = ["--backend", "torch", "--device", "cpu"]  # the tiny model: no ONNX export written beside it


def cli(*args: object, timeout: float = 300, file_limit: int | None = None) -> subprocess.CompletedProcess:
    def limit() -> None:  # in the child, before exec: a file size limit like `ulimit -f`
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, resource.RLIM_INFINITY))

    # No .pyc writes under a limit: Python imports before the CLI ignores SIGXFSZ.
    env = ENV if file_limit is None else {**ENV, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-m", "roadseg_plugin", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=limit if file_limit is not None else None)


def start(*args: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "roadseg_plugin", *map(str, args)], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)


def one_error(done: subprocess.CompletedProcess, *expected: str) -> str:
    """The single stderr line of a refusal (exit 2, no traceback, no library messages)."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, (done.returncode, done.stderr[-3000:])
    assert lines[0].startswith("error: ") and "; " in lines[0], lines[0]
    assert ".tmp" not in lines[0] and ".part" not in lines[0], lines[0]  # the user's file, not ours
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def hashes(*paths: Path) -> dict[str, str]:
    """sha256 of every file under `paths` (and of `paths` that are files)."""
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*"))) if f.is_file()]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def temporaries(folder: Path) -> list[str]:
    """Hidden entries a run leaves (every RoadSeg temporary starts with a dot)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))


def write_tif(path: Path, data: np.ndarray, transform: Affine | None = UTM, crs: str | None = "EPSG:32631",
              **extra: object) -> Path:
    return write_raster(path, data, crs=crs, transform=transform, **{"driver": "GTiff", **extra})


def scene(size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return road_image(draw_roads(size, rng, n=5), rng)


def previous_outputs(small: dict[str, Path], folder: Path) -> tuple[Path, Path]:
    """Lines and probability raster of an earlier run, copied into `folder`."""
    folder.mkdir(exist_ok=True)
    return Path(shutil.copy(small["lines"], folder / "roads.gpkg")), Path(shutil.copy(small["prob"], folder / "p.tif"))


# ------------------------------------------------------------------- interrupted runs

@pytest.fixture(scope="module")
def big(tmp_path_factory) -> dict[str, Path]:
    """A 3000 x 3000 px image (a few seconds with the bundled model) and one finished run on it."""
    root = tmp_path_factory.mktemp("big")
    image = write_tif(root / "big.tif", scene(3000, seed=2), tiled=True, blockxsize=256, blockysize=256)
    done = cli("segment", image, "--out", root / "roads.gpkg", "--mask-out", root / "prob.tif")
    assert done.returncode == 0, done.stderr
    return {"image": image, "lines": root / "roads.gpkg", "prob": root / "prob.tif"}


def run_and_signal(big: dict[str, Path], folder: Path, signum: int) -> tuple[subprocess.Popen, str]:
    """Segment the big image into `folder` (holding earlier outputs) and send `signum` once the
    probability raster is being written; the process and what it wrote on stderr."""
    lines, prob = folder / "roads.gpkg", folder / "prob.tif"
    proc = start("segment", big["image"], "--out", lines, "--mask-out", prob, "--threshold", "0.3")
    deadline = time.monotonic() + 120
    while not any(p.name.endswith(".part.tif") for p in folder.rglob(".*")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never started writing"
        time.sleep(0.02)
    time.sleep(0.3)  # mid-raster
    assert proc.poll() is None, "the run ended before the signal: use a bigger image"
    proc.send_signal(signum)
    return proc, proc.communicate(timeout=120)[1]


@pytest.mark.parametrize(("signum", "code", "said"), [(signal.SIGINT, 130, "cancelled"),
                                                      (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_and_sigterm_keep_the_previous_outputs(big, tmp_path, signum, code, said):
    shutil.copy(big["lines"], tmp_path / "roads.gpkg")
    shutil.copy(big["prob"], tmp_path / "prob.tif")
    before = hashes(tmp_path, big["image"])
    proc, stderr = run_and_signal(big, tmp_path, signum)
    assert proc.returncode == code
    assert stderr.strip() == f"error: {said}; earlier outputs are unchanged"
    assert hashes(tmp_path, big["image"]) == before
    assert temporaries(tmp_path) == []


def test_a_killed_run_leaves_temporaries_that_the_next_run_removes(big, tmp_path):
    shutil.copy(big["lines"], tmp_path / "roads.gpkg")
    shutil.copy(big["prob"], tmp_path / "prob.tif")
    outputs = [tmp_path / "roads.gpkg", tmp_path / "prob.tif"]
    before = hashes(*outputs)
    proc, _ = run_and_signal(big, tmp_path, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert hashes(*outputs) == before
    left = temporaries(tmp_path)
    locks = [tmp_path / ".prob.tif.lock", tmp_path / ".roads.gpkg.lock"]  # the killed run's claim on its outputs
    assert all(lock.read_text().startswith(f"{proc.pid}-") for lock in locks)
    left = [name for name in left if not name.endswith(".lock")]
    assert left and all(re.match(rf"\.prob\.tif\.{proc.pid}-\w+\.\w+\.tmp", name) for name in left), left

    done = cli("segment", big["image"], "--out", tmp_path / "roads.gpkg", "--mask-out", tmp_path / "prob.tif")
    assert done.returncode == 0, done.stderr
    assert temporaries(tmp_path) == []
    with rasterio.open(tmp_path / "prob.tif") as got, rasterio.open(big["prob"]) as expected:
        assert np.array_equal(got.read(1), expected.read(1))  # the same run as the finished one
    import geopandas as gpd

    got, expected = gpd.read_file(tmp_path / "roads.gpkg"), gpd.read_file(big["lines"])
    assert len(got) == len(expected) > 0 and got.geometry.geom_equals_exact(expected.geometry, 1e-9).all()


def test_a_live_runs_temporaries_are_never_removed(tmp_path):
    from roadseg_plugin.core.atomic import remove_stale_temporaries, temporary_folder, temporary_sibling

    target = tmp_path / "roads.gpkg"
    mine, folder = temporary_sibling(target), temporary_folder(target)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        theirs = tmp_path / mine.name.replace(f".{os.getpid()}-", f".{sleeper.pid}-")
        theirs.write_bytes(b"")
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout.strip()
        stale = tmp_path / mine.name.replace(f".{os.getpid()}-", f".{dead}-")
        stale.write_bytes(b"")
        other_host = tmp_path / re.sub(r"-(\w{6})\.", "-zzzzzz.", stale.name)
        other_host.write_bytes(b"")
        unrelated = tmp_path / ".roads.gpkg.notes"
        unrelated.write_text("mine")
        assert remove_stale_temporaries(target) == [stale]
        assert all(p.exists() for p in (mine, folder, theirs, other_host, unrelated))
    finally:
        sleeper.kill()
        sleeper.wait()


# ------------------------------------------------------------------- full disk, file size limit

def test_raster_write_failure_is_one_line_naming_the_raster(small, tmp_path):
    lines, prob = previous_outputs(small, tmp_path / "out")
    before = hashes(tmp_path, small["large"], small["model"])
    done = cli("segment", small["large"], "--model", small["model"], *TORCH, "--out", lines, "--mask-out", prob,
               "--threshold", "0.3", file_limit=60_000)  # the probability raster is ~170 kB
    one_error(done, f"{prob}: the probability raster", "disk")
    assert hashes(tmp_path, small["large"], small["model"]) == before
    assert temporaries(tmp_path) == []


def test_line_write_failure_keeps_the_new_raster_out_too(small, tmp_path):
    lines, prob = previous_outputs(small, tmp_path / "out")
    before = hashes(tmp_path, small["image"], small["model"])
    done = cli("segment", small["image"], "--model", small["model"], *TORCH, "--out", lines, "--mask-out", prob,
               "--threshold", "0.3", file_limit=60_000)  # raster ~30 kB fits, the GeoPackage does not
    one_error(done, f"{lines}: writing the GPKG layer failed")
    assert hashes(tmp_path, small["image"], small["model"]) == before
    assert temporaries(tmp_path) == []


def test_geopackage_without_its_spatial_index_is_not_reported_as_written(small, tmp_path):
    import geopandas as gpd
    import pyogrio

    lines = previous_outputs(small, tmp_path / "out")[0]
    with_index = lines.stat().st_size
    pyogrio.write_dataframe(gpd.read_file(lines), tmp_path / "no_index.gpkg", SPATIAL_INDEX="NO")
    without = (tmp_path / "no_index.gpkg").stat().st_size
    assert without < with_index
    before = hashes(lines, small["prob"])
    # room for every feature but not for the R-tree GDAL builds when it closes the file
    done = cli("vectorise", small["prob"], "--out", lines, "--min-length", "5",
               file_limit=(without + with_index) // 2)
    one_error(done, f"{lines}: writing the GPKG layer failed (the spatial index was not written)")
    assert hashes(lines, small["prob"]) == before
    assert temporaries(tmp_path / "out") == []


# ------------------------------------------------------------------- damaged and unusual inputs

def test_vectorise_a_truncated_geotiff(small, tmp_path):
    damaged = tmp_path / "prob.tif"
    data = small["prob"].read_bytes()
    damaged.write_bytes(data[:len(data) // 2])
    lines = previous_outputs(small, tmp_path / "out")[0]
    before = hashes(tmp_path)
    one_error(cli("vectorise", damaged, "--out", lines), f"{damaged}: ", "truncated or damaged")
    assert hashes(tmp_path) == before
    assert temporaries(tmp_path) == []


def gcp_image(path: Path, transform: Affine, crs: str | None, size: int = 200) -> Path:
    """A GeoTIFF placed by 9 ground control points of `transform` and no geotransform."""
    from rasterio.control import GroundControlPoint
    from rasterio.crs import CRS

    gcps = [GroundControlPoint(row=r, col=c, x=(transform * (c, r))[0], y=(transform * (c, r))[1])
            for r in (0, size / 2, size) for c in (0, size / 2, size)]
    return write_raster(path, scene(size, seed=3), gcps=(gcps, crs or CRS()))  # an empty CRS: GCPs without one


def test_gcp_only_raster_is_warped_to_where_its_gcps_put_it(small, tmp_path):
    import geopandas as gpd

    placed = Affine.translation(500000, 5700000) * Affine.rotation(-30) * Affine.scale(1.0, -1.0)
    image = gcp_image(tmp_path / "gcp.tif", placed, "EPSG:32631")
    corners = np.array([placed * (c, r) for c in (0, 200) for r in (0, 200)])
    footprint = (*corners.min(axis=0), *corners.max(axis=0))
    out, prob = tmp_path / "roads.gpkg", tmp_path / "p.tif"
    done = cli("segment", image, "--model", small["model"], *TORCH, "--out", out, "--mask-out", prob,
               "--min-length", "5")
    assert done.returncode == 0, done.stderr
    assert "ground control points" in done.stderr
    with rasterio.open(prob) as src:
        assert src.crs.to_epsg() == 32631
        assert src.transform.b == src.transform.d == 0 and src.transform.a == pytest.approx(-src.transform.e)
        np.testing.assert_allclose(tuple(src.bounds), footprint, atol=2 * src.transform.a)
        valid = src.dataset_mask() > 0
        assert 0.45 < valid.mean() < 0.8  # the rotated image fills about half its north-up box
    lines = gpd.read_file(out)
    assert lines.crs.to_epsg() == 32631 and len(lines) > 0
    x0, y0, x1, y1 = lines.total_bounds
    assert footprint[0] - 1 <= x0 and x1 <= footprint[2] + 1 and footprint[1] - 1 <= y0 and y1 <= footprint[3] + 1


def test_gcps_without_a_crs_are_refused(small, tmp_path):
    image = gcp_image(tmp_path / "gcp.tif", UTM, None)
    before = hashes(tmp_path)
    done = cli("segment", image, "--model", small["model"], *TORCH, "--out", tmp_path / "roads.gpkg")
    one_error(done, f"{image}: the raster has 9 ground control points but no CRS")
    assert hashes(tmp_path) == before


def test_length_is_measured_on_the_written_lines(small, tmp_path):
    import geopandas as gpd

    sheared = Affine(0.9, 0.35, 500000.0, 0.15, -0.9, 5700000.0)
    with rasterio.open(small["prob"]) as src:
        data = src.read()
    prob = write_tif(tmp_path / "sheared.tif", data, sheared)
    out = tmp_path / "roads.gpkg"
    done = cli("vectorise", prob, "--out", out, "--min-length", "5")
    assert done.returncode == 0, done.stderr
    lines = gpd.read_file(out)
    assert len(lines) > 10
    from tests.core.test_vectorise import ellipsoid_lengths

    ground = sum(ellipsoid_lengths(lines))  # measured on the ellipsoid, as a GIS does: UTM's grid is 0.04 % off
    assert lines["length_m"].sum() == pytest.approx(ground, rel=1e-9)
    assert ground == pytest.approx(lines.geometry.length.sum(), rel=1e-3)
    said = float(re.search(r"\(([\d.]+) km\)", done.stdout).group(1))
    assert said == pytest.approx(ground / 1000, abs=0.01)


# ------------------------------------------------------------------- an output over an input

def over_inputs(small: dict[str, Path], tmp: Path) -> dict[str, tuple[list[object], Path, str]]:
    """Each case: (command line, the input it would overwrite, text of the error line)."""
    image, model, prob = (Path(shutil.copy(small[k], tmp)) for k in ("image", "model", "prob"))
    gpkg = tmp / "r.gpkg"
    with rasterio.open(small["image"]) as src:
        write_tif(gpkg, src.read(), driver="GPKG", RASTER_TABLE="scene")
    with rasterio.open(f"GPKG:{gpkg}:scene") as src:
        assert src.count >= 3  # a real GeoPackage raster (RGBA)
    calibration = tmp / "calibration"
    calibration.mkdir()
    shutil.copy(image, calibration)
    return {
        "lines over the image": (["segment", image, "--model", model, "--out", image, "--format", "gpkg"],
                                 image, "would overwrite the input"),
        "lines over a GeoPackage raster": (["segment", f"GPKG:{gpkg}:scene", "--model", model, "--out", gpkg],
                                           gpkg, "would overwrite the input"),
        "probability over the model": (["segment", image, "--model", model, "--out", tmp / "x.gpkg",
                                        "--mask-out", model], model, f"{model}: the probability raster"),
        "vectorise over its raster": (["vectorise", prob, "--out", prob, "--format", "gpkg"], prob,
                                      "would overwrite the input"),
        "lines and probability the same": (["segment", image, "--model", model, "--out", tmp / "both.gpkg",
                                            "--mask-out", tmp / "both.gpkg"], image, "both.gpkg"),
        "export over its checkpoint": (["export-onnx", model, model], model, "would overwrite the input"),
        "quantize over its checkpoint": (["quantize", model, "--out", model, "--calibration", calibration], model,
                                         "would overwrite the input"),
    }


CASES = ["lines over the image", "lines over a GeoPackage raster", "probability over the model",
         "vectorise over its raster", "lines and probability the same", "export over its checkpoint",
         "quantize over its checkpoint"]


@pytest.mark.parametrize("case", CASES)
def test_an_output_never_replaces_an_input(small, tmp_path, case):
    args, victim, said = over_inputs(small, tmp_path)[case]
    before = hashes(tmp_path)
    one_error(cli(*args), said)
    assert hashes(tmp_path) == before and victim.is_file()
    assert temporaries(tmp_path) == []


# ------------------------------------------------------------------- ONNX models that do not fit

def onnx_model(path: Path, graph_bands: int, meta_bands: int, fixed: int | None = None) -> Path:
    """A RoadSeg ONNX file whose graph takes `graph_bands` bands (tiles of `fixed` px only, if
    given) while its metadata says `meta_bands`."""
    import warnings

    import onnx
    import torch

    from roadseg_plugin.core.checkpoint import ModelMeta
    from roadseg_plugin.core.model_meta import ONNX_META_KEY
    from roadseg_plugin.core.unet import build_model

    torch.manual_seed(0)
    net = build_model("unet", in_channels=graph_bands, base_channels=4, depth=2).eval()

    class Probabilities(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.net(x))[:, 0]

    axes = {"image": {0: "batch"}, "prob": {0: "batch"}}
    if fixed is None:
        axes = {"image": {0: "batch", 2: "h", 3: "w"}, "prob": {0: "batch", 1: "h", 2: "w"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Probabilities(), torch.zeros(1, graph_bands, fixed or 64, fixed or 64), str(path),
                          opset_version=17, dynamo=False, input_names=["image"], output_names=["prob"],
                          dynamic_axes=axes)
    graph = onnx.load(str(path))
    bands = list(range(1, meta_bands + 1))
    meta = ModelMeta(arch_config={"in_channels": meta_bands, "base_channels": 4, "depth": 2}, tile=64, overlap=16,
                     bands=bands, band_names=[f"b{b}" for b in bands], mean=[0.5] * meta_bands,
                     std=[0.25] * meta_bands)
    entry = graph.metadata_props.add()
    entry.key, entry.value = ONNX_META_KEY, json.dumps(meta.to_dict())
    onnx.save(graph, str(path))
    return path


@pytest.mark.parametrize(("graph_bands", "meta_bands", "fixed", "said"), [
    (1, 3, None, "the model takes 1 band(s) but its RoadSeg metadata says 3"),
    (4, 3, None, "the model takes 4 band(s) but its RoadSeg metadata says 3"),
    (3, 3, 32, "the model takes only 32 x 32 px tiles but its RoadSeg metadata says 64"),
], ids=["one band", "four bands", "fixed size"])
def test_onnx_model_that_does_not_fit_its_metadata(small, tmp_path, graph_bands, meta_bands, fixed, said):
    model = onnx_model(tmp_path / "m.onnx", graph_bands, meta_bands, fixed)
    before = hashes(tmp_path, small["image"])
    done = cli("segment", small["image"], "--model", model, "--out", tmp_path / "roads.gpkg")
    one_error(done, f"{model}: {said}")
    assert hashes(tmp_path, small["image"]) == before


def test_fixed_size_onnx_model_with_another_tile(small, tmp_path):
    model = onnx_model(tmp_path / "m.onnx", 3, 3, fixed=64)
    lines, prob = previous_outputs(small, tmp_path / "out")
    before = hashes(tmp_path)
    done = cli("segment", small["image"], "--model", model, "--tile", "128", "--out", lines, "--mask-out", prob)
    one_error(done, f"{model}: the model takes only 64 x 64 px tiles, not 128 x 128", "--tile 64")
    assert hashes(tmp_path) == before and temporaries(tmp_path) == []
    assert cli("segment", small["image"], "--model", model, "--out", lines, "--mask-out", prob).returncode == 0


def test_four_band_model_on_an_rgb_raster(small, tmp_path):
    model = onnx_model(tmp_path / "m.onnx", 4, 4)
    one_error(cli("segment", small["image"], "--model", model, "--out", tmp_path / "roads.gpkg"),
              f"{small['image']}: raster has 3 image band(s) but the model needs 4")
