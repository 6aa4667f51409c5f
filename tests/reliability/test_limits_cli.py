"""Nothing lost, round 2 (issue 19, items 5-7, 9, 10, 12, 13): damaged PNGs, sizes over what memory
allows, non-finite values, model metadata, terminal noise, the vectoriser's streaming output and
Dask on 127.0.0.1. Each case runs the real CLI (`python -m roadseg_plugin`, `python -m training`)
in a subprocess on real small files, with the inputs and the previous outputs hashed before and after.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tests.conftest import draw_roads, road_image, write_png_pair
from tests.rasters import write_raster
from tests.reliability.test_segment_cli import (
    ENV,
    ROOT,
    TORCH,
    UTM,
    cli,
    hashes,
    one_error,
    previous_outputs,
    scene,
    temporaries,
    write_tif,
)

NOISE = ("Warning:", "warnings.warn", "NotGeoreferenced", "Axes3D", "UserWarning", "Traceback")


def quiet(stderr: str) -> bool:
    """Only RoadSeg's own lines reach the terminal: no library warning or traceback."""
    return not any(n in stderr for n in NOISE)


def plain_png(path: Path, size: int = 200, seed: int = 0) -> Path:
    return write_raster(path, scene(size, seed))


def edit_checkpoint(source: Path, target: Path, **meta: object) -> Path:
    """A copy of a checkpoint whose metadata keys are changed (None removes a key)."""
    import torch

    payload = torch.load(source, weights_only=True)
    for key, value in meta.items():
        if key.startswith("arch_config."):
            payload["meta"]["arch_config"][key.split(".", 1)[1]] = value
        elif value is None:
            payload["meta"].pop(key)
        else:
            payload["meta"][key] = value
    torch.save(payload, target)
    return target


# ------------------------------------------------------------------- 5. truncated PNG

def test_a_truncated_png_is_refused_not_made_up(small, tmp_path):
    whole = plain_png(tmp_path / "whole.png", 300)
    damaged = tmp_path / "cut.png"
    damaged.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    lines, prob = previous_outputs(small, tmp_path / "out")
    before = hashes(tmp_path)
    one_error(cli("segment", damaged, "--model", small["model"], *TORCH, "--out", lines, "--mask-out", prob),
              f"{damaged}: reading failed", "truncated or damaged")
    one_error(cli("vectorise", damaged, "--out", lines), f"{damaged}: reading failed", "truncated or damaged")
    assert hashes(tmp_path) == before and temporaries(tmp_path) == []


# ------------------------------------------------------------------- 6. sizes memory cannot hold

def huge_vrt(path: Path, source: Path, side: int) -> Path:
    """A VRT declaring side x side px, with `source` in its top-left corner."""
    with rasterio.open(source) as src:
        w, h = src.width, src.height
    bands = "".join(f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource><SourceFilename relativeToVRT="0">'
                    f"{source}</SourceFilename><SourceBand>{b}</SourceBand>"
                    f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/><DstRect xOff="0" yOff="0" xSize="{w}" '
                    f'ySize="{h}"/></SimpleSource></VRTRasterBand>' for b in (1, 2, 3))
    path.write_text(f'<VRTDataset rasterXSize="{side}" rasterYSize="{side}"><SRS>EPSG:32631</SRS><GeoTransform>'
                    f"500000,1,0,5700000,0,-1</GeoTransform>{bands}</VRTDataset>")
    return path


@pytest.mark.parametrize(("options", "said"), [
    (["--tile", "32768"], "tile 32768: needs about"),
    (["--tile", "1048576"], "tile 1048576: needs about"),
    (["--batch-size", "1000000"], "batch_size 1000000: needs about"),
    (["--block-size", "100000"], "block_size 100000: must lie between 64 and 16384"),
    (["--halo", "5000"], "halo 5000: must lie between 32 and the block size"),
], ids=["tile 32768", "tile 2^20", "batch", "block size", "halo"])
def test_sizes_over_what_memory_allows_are_refused_up_front(small, tmp_path, options, said):
    lines, prob = previous_outputs(small, tmp_path / "out")
    before = hashes(tmp_path, small["image"], small["model"])
    done = cli("segment", small["image"], "--model", small["model"], *TORCH, "--out", lines, "--mask-out", prob,
               *options)
    line = one_error(done, said)
    if "needs about" in said:
        assert "limit (half of this machine's" in line and "at most" in line
    assert hashes(tmp_path, small["image"], small["model"]) == before and temporaries(tmp_path) == []


@pytest.mark.parametrize(("meta", "said"), [
    ({"tile": 2**20}, "metadata key 'tile' (1048576) needs about"),
    ({"arch_config.base_channels": 100000}, "metadata key 'base_channels' (100000) needs about"),
    ({"threshold": None}, "metadata key 'threshold' is missing"),
], ids=["tile 2^20", "base_channels 100000", "no threshold"])
def test_model_metadata_out_of_bounds_is_refused(small, tmp_path, meta, said):
    model = edit_checkpoint(small["model"], tmp_path / "edited.pt", **meta)
    before = hashes(tmp_path, small["image"])
    one_error(cli("segment", small["image"], "--model", model, *TORCH, "--out", tmp_path / "roads.gpkg"),
              f"{model}: {said}")
    assert hashes(tmp_path, small["image"]) == before and not (tmp_path / "roads.gpkg").exists()


def test_a_raster_larger_than_memory_allows_is_refused_with_an_estimate(small, tmp_path):
    vrt = huge_vrt(tmp_path / "huge.vrt", small["image"], 4_000_000)
    env = {**ENV, "ROADSEG_MEMORY_MB": "8000"}  # the same answer on any machine
    done = subprocess.run([sys.executable, "-m", "roadseg_plugin", "segment", vrt, "--model", small["model"], *TORCH,
                           "--out", tmp_path / "roads.gpkg"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    one_error(done, f"{vrt}: 4000000 x 4000000 px needs about 16.3 GB of memory", "8.4 GB limit (ROADSEG_MEMORY_MB)",
              "--extent")
    assert not (tmp_path / "roads.gpkg").exists() and temporaries(tmp_path) == []


def test_training_refuses_a_tile_memory_cannot_hold_before_making_the_run_folder(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(2):
        mask = draw_roads(96, rng)
        write_png_pair(tmp_path / "data", f"t{i}", road_image(mask, rng), mask)
    before = hashes(tmp_path)
    for options, said in ((["--tile", "1048576"], "tile 1048576: needs about"),
                          (["--base-channels", "100000"], "base_channels 100000: needs about")):
        done = subprocess.run([sys.executable, "-m", "training", "train", "--data", tmp_path / "data", "--out",
                               tmp_path / "run", *options], cwd=ROOT, env=ENV, capture_output=True, text=True,
                              timeout=300)
        one_error(done, said)
        assert not (tmp_path / "run").exists()
    assert hashes(tmp_path) == before


# ------------------------------------------------------------------- 7. non-finite and absurd pixel sizes

def test_gsd_infinite_or_absurd_is_one_line_naming_the_users_file(small, tmp_path):
    image = plain_png(tmp_path / "plain.png")
    before = hashes(tmp_path)
    one_error(cli("segment", image, "--model", small["model"], *TORCH, "--gsd", "inf", "--out", tmp_path / "r.gpkg"),
              "gsd inf: must be a finite number")
    one_error(cli("segment", image, "--model", small["model"], *TORCH, "--gsd", "1e6", "--out", tmp_path / "r.gpkg"),
              f"{image}: resampled from 1e+06 m to the model's 1 m pixels, 200000000 x 200000000 px needs about")
    assert hashes(tmp_path) == before and temporaries(tmp_path) == []


def test_full_disk_without_mask_out_names_the_line_file(small, tmp_path):
    lines = previous_outputs(small, tmp_path / "out")[0]
    before = hashes(tmp_path, small["large"], small["model"])
    done = cli("segment", small["large"], "--model", small["model"], *TORCH, "--out", lines, "--threshold", "0.3",
               file_limit=60_000)  # the probability raster (~170 kB) does not fit
    one_error(done, f"{lines}: the probability raster made for these lines: ", "disk")
    assert hashes(tmp_path, small["large"], small["model"]) == before and temporaries(tmp_path) == []


# ------------------------------------------------------------------- 9. model files

def test_an_unreadable_model_is_not_called_damaged(small):
    work = Path(tempfile.mkdtemp(prefix="roadseg-unreadable-"))  # a folder another user may enter
    try:
        os.chmod(work, 0o777)
        image = Path(shutil.copy(small["image"], work / "img.tif"))
        model = Path(shutil.copy(small["model"], work / "m.pt"))
        os.chmod(model, 0)
        before = hashes(image)
        user = 65534 if os.geteuid() == 0 else None  # root reads anything: run the command as nobody
        done = subprocess.run([sys.executable, "-m", "roadseg_plugin", "segment", image, "--model", model, *TORCH,
                               "--out", work / "r.gpkg"], cwd=ROOT, env={**ENV, "HOME": str(work)},
                              capture_output=True, text=True, timeout=120, user=user)
        line = one_error(done, f"{model}: cannot be read (permission denied)")
        assert "damaged" not in line and not (work / "r.gpkg").exists() and hashes(image) == before
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------- 10. nothing but RoadSeg's lines

def test_plain_images_vrt_names_and_quantize_print_no_library_noise(small, tmp_path):
    image = plain_png(tmp_path / "plain.png")
    calibration = tmp_path / "calib"
    calibration.mkdir()
    plain_png(calibration / "a.png", 128)
    for args in (["segment", image, "--model", small["model"], *TORCH, "--out", tmp_path / "a.geojson",
                  "--mask-out", tmp_path / "a.tif"],
                 ["segment", f"vrt://{image}", "--model", small["model"], *TORCH, "--out", tmp_path / "b.fgb"],
                 ["vectorise", tmp_path / "a.tif", "--out", tmp_path / "c.shp"],
                 ["quantize", small["model"], "--calibration", calibration, "--crops", "2", "--out",
                  tmp_path / "q.onnx"]):
        done = cli(*args)
        assert done.returncode == 0, done.stderr
        assert quiet(done.stderr), done.stderr
        assert all(line.startswith("warning: ") for line in done.stderr.strip().splitlines()), done.stderr


def test_training_prints_no_library_noise(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(3):
        mask = draw_roads(96, rng)
        write_png_pair(tmp_path / "data", f"t{i}", road_image(mask, rng), mask)
    done = subprocess.run([sys.executable, "-m", "training", "train", "--data", tmp_path / "data", "--out",
                           tmp_path / "run", "--epochs", "1", "--tile", "64", "--infer-tile", "64", "--overlap", "8",
                           "--batch-size", "4", "--base-channels", "4", "--depth", "2", "--samples-per-epoch", "4",
                           "--device", "cpu", "--workers", "0"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert quiet(done.stderr), done.stderr


# ------------------------------------------------------------------- 12. lines written as they are found

def road_grid(height: int, width: int, step: int = 150) -> np.ndarray:
    """A 0/1 mask of a street grid, slightly irregular: one connected network over the whole area."""
    rng = np.random.default_rng(3)
    mask = np.zeros((height, width), np.uint8)
    for r in range(40, height - 20, step):
        r2 = r + int(rng.integers(-6, 7))
        mask[r2 - 2:r2 + 3, :] = 1
    for c in range(40, width - 20, step):
        mask[:, c - 2:c + 3] = 1
    return mask


def test_vectorise_streams_the_same_lines_as_the_whole_mask(tmp_path):
    import geopandas as gpd

    from roadseg_plugin.core.vectorise import iter_raster_frames, vectorise_mask

    mask = road_grid(2600, 1500)
    raster = write_tif(tmp_path / "grid.tif", mask[None], tiled=True, blockxsize=256, blockysize=256)
    whole = vectorise_mask(mask, UTM, "EPSG:32631", block_size=4096)  # one block: the reference
    seen: list[float] = []
    first = next(iter_raster_frames(raster, on_progress=seen.append))
    assert 0 < len(first) < len(whole) and seen[-1] < 0.7  # lines handed out before the raster is read
    before = hashes(raster)
    for name in ("roads.gpkg", "roads.fgb", "roads.geojson", "roads.shp"):
        done = cli("vectorise", raster, "--out", tmp_path / name)
        assert done.returncode == 0, done.stderr
        got = gpd.read_file(tmp_path / name)
        assert len(got) == len(whole) and sorted(got["id"]) == list(range(1, len(whole) + 1))
        assert got["length_m"].sum() == pytest.approx(whole["length_m"].sum(), rel=1e-6)
        assert line_set(got) == line_set(whole)
    assert hashes(raster) == before and temporaries(tmp_path) == []


def line_set(frame) -> list[tuple]:
    """The lines as sorted tuples of coordinates rounded to a millimetre, direction ignored."""
    import shapely

    return sorted(tuple(map(tuple, shapely.get_coordinates(g).round(3))) for g in frame.geometry.normalize())


# ------------------------------------------------------------------- 13. Dask on this machine only

def listening(pid: int) -> set[str]:
    """Addresses the process and its children listen on."""
    import psutil

    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return set()
    found = set()
    for proc in procs:
        try:
            found |= {c.laddr.ip for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_a_local_region_cluster_listens_on_127_0_0_1_only(small, tmp_path):
    before = hashes(small["image"], small["model"])
    out = tmp_path / "region"
    proc = subprocess.Popen([sys.executable, "-m", "roadseg_plugin", "segment-region", small["large"], "--out", out,
                             "--model", small["model"], *TORCH, "--workers", "2", "--chunk", "256"], cwd=ROOT,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: set[str] = set()
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        seen |= listening(proc.pid)
        time.sleep(0.2)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert seen and seen <= {"127.0.0.1"}, seen  # scheduler, workers, nannies, dashboard
    assert (out / "roads.gpkg").is_file() and hashes(small["image"], small["model"]) == before
