"""Region runs on real Dask clusters (a `dask scheduler` with `dask worker` processes, as
docs/SCALE.md starts them, and the local cluster `segment-region` starts itself), real files and
real tiles, no mocks.

The reference is always the single-process chain (`extract_roads`, what `segment` runs): a
region run's probability mosaic and lines must equal it, with workers killed mid-run, after an
interrupted run resumed, and across inputs of different CRS and pixel size.

One scheduler and its 2 worker processes, bound to 127.0.0.1, serve every test of this module
that needs a cluster (`cluster`); the local cluster's own start is what the interrupted run
checks (and the slow 8192 px run, and tests/plugin's segment-region algorithm).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHARED_DATA, default_sigint, needs_shared_data
from tests.rasters import write_raster

ROOT = Path(__file__).resolve().parents[2]
SIZE = 1500  # one real tile's worth of mosaic
CHUNK = 512  # 1500 px -> 3 x 3 chunks with the bundled model (512 px tiles, 32 px overlap)
GROUPS = 4  # line groups: 2 x 2 blocks of the vectoriser's 1024 px
MAX_DIFF, MEAN_DIFF = 2, 0.1  # blending tolerance, in 1/255


# ---------------------------------------------------------------------------------- inputs

def real_mosaic(path: Path, size: int, crs: str = "EPSG:26986", gsd: float = 1.0,
                origin: tuple[float, float] = (200000.0, 900000.0), first: int = 0) -> Path:
    """A size x size georeferenced RGB GeoTIFF mosaicked from the real Massachusetts tiles with
    the least white no-data (the same tiles in the same places whatever the size)."""
    import rasterio
    from rasterio.windows import Window

    from tests.rasters import raster_writer

    images = sorted((SHARED_DATA / "images").glob("*.png"))
    white = []
    for image in images:
        with rasterio.open(image) as src:
            white.append(((src.read(out_shape=(3, 100, 100)) == 255).all(axis=0).mean(), image))
    tiles = [image for _, image in sorted(white)][first:]
    k = -(-size // 1500)
    with raster_writer(path, width=size, height=size, count=3, crs=crs, origin=origin, gsd=gsd, tiled=True,
                       compress="deflate") as dst:
        for i in range(k * k):
            r, c = divmod(i, k)
            h, w = min(1500, size - r * 1500), min(1500, size - c * 1500)
            with rasterio.open(tiles[i % len(tiles)]) as src:
                data = src.read(window=Window(0, 0, w, h))
            dst.write(data, window=Window(c * 1500, r * 1500, w, h))
    return path


def single_process(raster: Path, out: Path) -> tuple[np.ndarray, np.ndarray, object]:
    """(probability, valid mask, lines) of `segment` on `raster`, the reference."""
    import rasterio

    from roadseg_plugin.core.params import InferenceParams, VectoriseParams
    from roadseg_plugin.core.pipeline import extract_roads

    out.mkdir(parents=True, exist_ok=True)
    result = extract_roads(raster, out / "roads.gpkg", InferenceParams(), VectoriseParams(),
                           prob_out=out / "prob.tif")
    with rasterio.open(out / "prob.tif") as src:
        return src.read(1), src.read_masks(1), result.lines


def assert_same_probability(vrt: Path, reference: tuple) -> None:
    import rasterio

    with rasterio.open(vrt) as src:
        values, mask = src.read(1), src.read_masks(1)
    diff = np.abs(values.astype(int) - reference[0].astype(int))
    assert diff.max() <= MAX_DIFF and diff.mean() <= MEAN_DIFF, (diff.max(), diff.mean())
    assert (mask > 0).sum() == (reference[1] > 0).sum()


def assert_same_lines(lines, reference) -> None:
    assert abs(len(lines) - len(reference)) <= 0.01 * len(reference), (len(lines), len(reference))
    total, expected = lines["length_m"].sum(), reference["length_m"].sum()
    assert abs(total - expected) <= 0.005 * expected, (total, expected)


def border_ends(lines, borders: list[float], axis: int) -> np.ndarray:
    """Line end points lying on one of `borders` (map coordinate along `axis`, within 1 m)."""
    import shapely

    ends = np.concatenate([shapely.get_coordinates(shapely.get_point(lines.geometry, i)) for i in (0, -1)])
    near = np.min(np.abs(ends[:, axis][:, None] - np.asarray(borders)[None, :]), axis=1) <= 1.0
    return ends[near]


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory) -> Path:
    if not (SHARED_DATA / "images").is_dir():
        pytest.skip(f"real Massachusetts tiles not found at {SHARED_DATA} (they live beside the repository)")
    return real_mosaic(tmp_path_factory.mktemp("mosaic") / "mosaic.tif", SIZE)


@pytest.fixture(scope="module")
def reference(mosaic, tmp_path_factory):
    return single_process(mosaic, tmp_path_factory.mktemp("reference"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A real `dask scheduler` and `dask worker` (2 processes, 1 thread each) on 127.0.0.1, started
    from RoadSeg's environment as docs/SCALE.md tells, shared by the module's tests; its address.
    Stopped (by PID) afterwards."""
    folder = tmp_path_factory.mktemp("cluster")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    file = folder / "scheduler.json"
    started = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                 "--port", "0", "--no-dashboard", "--scheduler-file", str(file)], env=env, cwd=folder,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not file.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        started.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file",
                                         str(file), "--host", "127.0.0.1", "--nworkers", "2", "--nthreads", "1",
                                         "--no-dashboard"], env=env, cwd=folder, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL))
        address = json.loads(file.read_text())["address"]
        two_workers(address)
        yield address
    finally:
        for proc in reversed(started):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def two_workers(address: str) -> None:
    """Return once the scheduler at `address` has its 2 workers."""
    from distributed import Client

    with Client(address, timeout=60, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=120)


@pytest.fixture
def scheduler(cluster) -> str:
    """The shared cluster's address once both its workers are up (a killed one is restarted by its nanny)."""
    two_workers(cluster)
    return cluster


@pytest.fixture(scope="module")
def region(mosaic, cluster, tmp_path_factory):
    """A region run of the mosaic on the shared scheduler's 2 workers, 9 chunks."""
    from roadseg_plugin.core.region import segment_region

    seen = []
    result = segment_region([mosaic], tmp_path_factory.mktemp("region") / "out", scheduler=cluster, chunk=CHUNK,
                            on_progress=seen.append)
    return result, seen


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "roadseg_plugin", "segment-region", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(done: subprocess.CompletedProcess, *expected: str) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------- chunks equal the whole run

@pytest.mark.parametrize("case", ["uint8", "uint16_resampled", "tile_edges"])
def test_chunks_equal_the_single_process_engine(tmp_path, tiny_checkpoint, case):
    """Every chunk of a plan, predicted alone, holds the whole-raster engine's values (in-process,
    a tiny model: any chunk size, raster edges, a resampled grid and stretched uint16 values)."""
    import rasterio
    from affine import Affine

    from roadseg_plugin.core.engine import segment_raster
    from roadseg_plugin.core.params import InferenceParams, read_model_info
    from roadseg_plugin.core.region.chunk import ChunkTask, segment_chunk
    from roadseg_plugin.core.region.plan import inspect_input, plan_chunks

    rng = np.random.default_rng(1)
    dtype, gsd, size = ("uint16", 0.6, (330, 290)) if case == "uint16_resampled" else ("uint8", 1.0, (301, 257))
    data = rng.integers(0, 250 if dtype == "uint8" else 4000, (3, *size)).astype(dtype)
    src = tmp_path / "in.tif"
    write_raster(src, data, crs="EPSG:32619", transform=Affine(gsd, 0, 330000, 0, -gsd, 4690000))
    params = InferenceParams(model=str(tiny_checkpoint), backend="torch", device="cpu",
                             overlap=24 if case == "tile_edges" else None)
    settings = params.resolve(read_model_info(tiny_checkpoint))
    whole = segment_raster(src, tmp_path / "whole.tif", tiny_checkpoint, backend="torch", device="cpu",
                           overlap=params.overlap)
    with rasterio.open(whole.path) as f:
        expected = f.read(1)
    plan = inspect_input(str(src), settings)
    assert (plan.height, plan.width) == expected.shape
    size = {"uint8": 96, "uint16_resampled": 48, "tile_edges": 60}[case]
    chunks = plan_chunks(plan.height, plan.width, whole.tile, whole.overlap, size)
    assert len(chunks) >= 9
    got = np.zeros_like(expected)
    for chunk in chunks:
        info = segment_chunk(ChunkTask(str(src), chunk.window, str(tmp_path / f"{chunk.name}.tif"), settings,
                                       normaliser=plan.normaliser))
        r0, r1, c0, c1 = chunk.window
        with rasterio.open(info["part"]) as part:
            got[r0:r1, c0:c1] = part.read(1)
            assert part.transform == whole.transform * Affine.translation(c0, r0)
    assert np.abs(got.astype(int) - expected).max() <= 1


def test_vrt_written_without_gdal_bindings_reads_like_buildvrt(tmp_path):
    import rasterio
    from affine import Affine
    from rasterio.crs import CRS

    from roadseg_plugin.core.region.parts import build_vrt, vrt_xml

    transform, crs = Affine(1, 0, 1000, 0, -1, 2000), CRS.from_epsg(26986)
    values = np.arange(60 * 70, dtype=np.uint32).reshape(60, 70).astype(np.uint8)
    parts = []
    for r0, r1, c0, c1 in [(0, 60, 0, 30), (0, 60, 30, 70)]:
        path = tmp_path / "parts" / f"p{c0}.tif"
        path.parent.mkdir(exist_ok=True)
        write_raster(path, values[None, r0:r1, c0:c1], valid=np.full((r1 - r0, c1 - c0), 255, np.uint8), crs=crs,
                     transform=transform * Affine.translation(c0, r0))
        parts.append(((r0, r1, c0, c1), str(path)))
    tags = {"ROADSEG_THRESHOLD": "0.4", "ROADSEG_VALUES": "road probability x 255"}
    built = build_vrt(tmp_path / "gdal.vrt", parts, 70, 60, crs, transform, tags)
    own = tmp_path / "own.vrt"
    own.write_text(vrt_xml([(w, os.path.relpath(p, tmp_path)) for w, p in parts], 70, 60, crs, transform, tags))
    for vrt in (built, own):
        with rasterio.open(vrt) as src:
            assert (src.read(1) == values).all() and src.transform == transform and src.crs == crs
            assert src.tags()["ROADSEG_THRESHOLD"] == "0.4" and (src.read_masks(1) == 255).all()
        assert str(tmp_path) not in vrt.read_text()  # parts named relative to the VRT


# --------------------------------------------------------------- real tiles, real cluster

@needs_shared_data
def test_region_on_two_workers_equals_segment(mosaic, reference, region):
    import geopandas as gpd
    import rasterio
    import shapely

    from roadseg_plugin.core.region.parts import sha256
    from roadseg_plugin.core.region.plan import chunk_borders

    result, seen = region
    assert result.chunks == result.chunks_run == 9 and result.workers == 2 and not result.reruns
    assert seen[-1].chunks_done == 9 and seen[-1].groups_done == seen[-1].groups_total == GROUPS
    assert_same_probability(result.rasters[0], reference)
    lines = gpd.read_file(result.lines_path)
    assert_same_lines(lines, reference[2])
    assert lines.crs.to_epsg() == 26986 and set(lines["source"]) == {str(mosaic.resolve())}
    assert list(lines.columns) == ["id", "length_m", "width_m", "mean_prob", "source", "geometry"]
    assert result.mpx_s > 0 and result.pixels_run == SIZE * SIZE
    # no road ends on a chunk border where the single-process road goes on
    cuts = chunk_borders(SIZE, 512, 32, CHUNK)[1:-1]
    assert len(cuts) == 2
    for b in cuts:  # real roads cross every cut, or the check below would hold for nothing
        x, y = 200000.0 + b, 900000.0 - b
        for cut in (shapely.LineString([(x, 900000.0), (x, 900000.0 - SIZE)]),
                    shapely.LineString([(200000.0, y), (200000.0 + SIZE, y)])):
            assert shapely.intersects(reference[2].geometry.values, cut).any(), cut
    for axis, borders in ((0, [200000.0 + b for b in cuts]), (1, [900000.0 - b for b in cuts])):
        mine, theirs = border_ends(lines, borders, axis), border_ends(reference[2], borders, axis)
        for point in mine:
            assert len(theirs) and np.hypot(*(theirs - point).T).min() <= 1.0, point
    # parts: cloud-optimised GeoTIFFs, each recorded in the manifest with its hash, no leftovers
    manifest = json.loads((result.folder / "region.json").read_text())
    assert manifest["complete"] and len(manifest["parts"]) == 9 + GROUPS
    for name, entry in manifest["parts"].items():
        assert sha256(result.folder / name) == entry["sha256"]
    with rasterio.open(result.folder / next(n for n in manifest["parts"] if n.endswith(".tif"))) as part:
        assert part.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG" and part.compression is not None
    assert not [f for f in (result.folder / "parts").rglob(".*")]


@needs_shared_data
def test_a_worker_killed_mid_run_loses_and_doubles_nothing(mosaic, reference, scheduler, tmp_path):
    import geopandas as gpd

    from roadseg_plugin.core.region import segment_region

    killed = []

    def kill_a_busy_worker(progress) -> None:
        if killed or progress.chunks_done < 1:
            return
        busy = [address for address, keys in progress.client.processing().items() if keys]
        pids = progress.client.run(os.getpid, workers=busy[:1])
        for pid in pids.values():
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    result = segment_region([mosaic], tmp_path / "out", scheduler=scheduler, chunk=CHUNK,
                            on_progress=kill_a_busy_worker)
    assert killed and result.reruns >= 1
    assert_same_probability(result.rasters[0], reference)
    assert_same_lines(gpd.read_file(result.lines_path), reference[2])
    parts = sorted(p.name for p in (result.folder / "parts").rglob("*") if p.is_file())
    assert len(parts) == 9 + GROUPS and not [p for p in parts if p.startswith(".")]


@needs_shared_data
def test_resume_after_ctrl_c_reruns_only_unfinished_chunks(mosaic, reference, scheduler, tmp_path):
    """Ctrl-C on a run on its own local cluster (1 worker: chunks one after another, so it is
    caught half-way), then resumed on the shared scheduler: the manifest, not the cluster, says
    what is left."""
    import geopandas as gpd

    out = tmp_path / "out"
    common = [str(mosaic), "--out", str(out), "--chunk", str(CHUNK)]
    args = [*common, "--workers", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "roadseg_plugin", "segment-region", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)  # Ctrl-C as a terminal gives it (see the function)
    deadline, recorded = time.monotonic() + 240, {}
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            recorded = json.loads((out / "region.json").read_text())["parts"]
        except (OSError, ValueError, KeyError):
            recorded = {}
        if sum(n.endswith(".tif") for n in recorded) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "--resume" in err, err
    recorded = json.loads((out / "region.json").read_text())["parts"]
    kept = {n: (out / n).stat().st_mtime_ns for n in recorded if n.endswith(".tif")}
    assert 2 <= len(kept) < 9
    assert cli(*args).returncode == 2  # the folder is that run's: refused without --resume
    done = cli(*common, "--scheduler", scheduler, "--resume")
    assert done.returncode == 0, done.stderr
    assert f"{len(kept)} finished before" in done.stdout
    assert {n: (out / n).stat().st_mtime_ns for n in kept} == kept  # finished chunks were not run again
    manifest = json.loads((out / "region.json").read_text())
    assert manifest["complete"] and sum(n.endswith(".tif") for n in manifest["parts"]) == 9
    assert_same_probability(next(out.glob("*.vrt")), reference)
    assert_same_lines(gpd.read_file(out / "roads.gpkg"), reference[2])


@needs_shared_data
def test_other_crs_and_gsd_a_bad_input_skipped_on_a_dask_scheduler(tmp_path, scheduler):
    """A folder of three rasters: 1 m in EPSG:26986, 0.6 m in EPSG:32619 (resampled to the model's
    1 m) and a damaged file, on a `dask scheduler` with its own workers. Refused as is; with
    --skip-bad, each good one equals its own single-process run and all lines come in the first
    raster's CRS."""
    import geopandas as gpd

    folder = tmp_path / "in"
    folder.mkdir()
    a = real_mosaic(folder / "a.tif", 1100)
    b = real_mosaic(folder / "b.tif", 1400, crs="EPSG:32619", gsd=0.6, origin=(330000.0, 4690000.0), first=3)
    (folder / "c.tif").write_bytes(b"II*\x00" + os.urandom(2000))
    out = tmp_path / "out"
    one_line_error(cli(str(folder), "--out", str(out), "--scheduler", scheduler), "c.tif", "--skip-bad")
    assert not out.exists()  # refused before any work
    done = cli(str(folder), "--out", str(out), "--scheduler", scheduler, "--chunk", "512", "--skip-bad")
    assert done.returncode == 0, done.stderr
    assert "on 2 worker(s)" in done.stdout and "c.tif: skipped" in done.stdout
    lines = gpd.read_file(out / "roads.gpkg")
    assert lines.crs.to_epsg() == 26986 and set(lines["source"]) == {str(a.resolve()), str(b.resolve())}
    for raster in (a, b):
        ref = single_process(raster, tmp_path / f"ref_{raster.stem}")
        assert_same_probability(next(out.glob(f"{raster.stem}-*.vrt")), ref)
        assert_same_lines(lines[lines["source"] == str(raster.resolve())], ref[2])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_shared_data
def test_bad_input_is_one_line_before_any_work(region, tmp_path):
    """Each refusal is one line, before any work. A scheduler that does not answer is given up on
    within the timeout asked for (3 s here; the command line's default 20 s: the slow twin)."""
    from roadseg_plugin.core.errors import ParamError
    from roadseg_plugin.core.region import segment_region

    done_region = region[0].folder
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(cli(str(empty), "--out", str(tmp_path / "out"), "--scheduler", f"tcp://127.0.0.1:{free_port()}"),
                   "holds no raster")
    some = real_mosaic(empty / "a.tif", 300)
    start = time.monotonic()
    with pytest.raises(ParamError, match="cannot be reached"):
        segment_region([some], tmp_path / "o2", scheduler=f"tcp://127.0.0.1:{free_port()}", timeout=3)
    assert time.monotonic() - start < 3 + 10
    one_line_error(cli(str(empty), "--out", str(empty / "out")), "inside the input folder")
    one_line_error(cli(str(some), "--out", str(some)), "is one of the inputs")
    one_line_error(cli(str(some), "--out", str(done_region)), "another region run", "--resume")
    one_line_error(cli(str(some), "--out", str(done_region), "--resume"), "other inputs")
    one_line_error(cli(str(some), "--out", str(tmp_path / "o3"), "--chunk", "10"), "chunk 10")
    assert not (tmp_path / "out").exists() and not (tmp_path / "o2").exists() and not (empty / "out").exists()


@pytest.mark.slow
@needs_shared_data
def test_an_unreachable_scheduler_is_one_line_within_the_default_timeout(tmp_path):
    """The command line's form of the fast test's 3 s case: its default timeout, one line, no output folder."""
    from roadseg_plugin.core.region.cluster import DEFAULT_TIMEOUT

    some = real_mosaic(tmp_path / "a.tif", 300)
    start = time.monotonic()
    one_line_error(cli(str(some), "--out", str(tmp_path / "o2"), "--scheduler", f"tcp://127.0.0.1:{free_port()}"),
                   "scheduler", "cannot be reached")
    assert time.monotonic() - start < DEFAULT_TIMEOUT + 30  # given up on after the timeout (+ the command's start)
    assert not (tmp_path / "o2").exists()


@pytest.mark.slow
@needs_shared_data
def test_8192_px_region_equals_segment(tmp_path):
    """The issue's size: 8192 x 8192 px of real tiles, 2 x 2 chunks of 4096 on 2 workers."""
    import geopandas as gpd

    from roadseg_plugin.core.region import segment_region

    raster = real_mosaic(tmp_path / "big.tif", 8192)
    reference = single_process(raster, tmp_path / "ref")
    result = segment_region([raster], tmp_path / "out", workers=2, chunk=4096)
    assert result.chunks == 4
    assert_same_probability(result.rasters[0], reference)
    assert_same_lines(gpd.read_file(result.lines_path), reference[2])
