"""Nothing lost, round 2 (issue 19, items 1-4, 8 and 11): every name form of an input is protected,
ONNX caches are checked against their checkpoint, outputs move together, long names work,
concurrent runs on one output are refused. Each case runs `python -m roadseg_plugin` as a real
subprocess on real small files, with the inputs and the previous outputs hashed before and after.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import rasterio

from tests.core.test_engine import write_contrast_checkpoint
from tests.reliability.test_segment_cli import (
    TORCH,
    cli,
    hashes,
    one_error,
    previous_outputs,
    scene,
    temporaries,
    write_tif,
)


def wrapping_vrt(path: Path, source: Path) -> Path:
    """A VRT whose only source is `source` (relative to the VRT), as gdalbuildvrt writes it."""
    with rasterio.open(source) as src:
        bands = "".join(
            f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource>'
            f'<SourceFilename relativeToVRT="1">{os.path.relpath(source, path.parent)}</SourceFilename>'
            f"<SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand>" for b in range(1, src.count + 1))
        gt = ",".join(str(v) for v in src.transform.to_gdal())
        path.write_text(f'<VRTDataset rasterXSize="{src.width}" rasterYSize="{src.height}"><SRS>{src.crs}</SRS>'
                        f"<GeoTransform>{gt}</GeoTransform>{bands}</VRTDataset>")
    return path


# ------------------------------------------------------------------- 1. other name forms of an input

def name_forms(small: dict[str, Path], tmp: Path) -> dict[str, tuple[list[object], Path]]:
    """Each case: (command line, the input file it would overwrite)."""
    image, model, prob = (Path(shutil.copy(small[k], tmp)) for k in ("image", "model", "prob"))
    gpkg = tmp / "r.gpkg"
    with rasterio.open(image) as src:
        write_tif(gpkg, src.read(), driver="GPKG", RASTER_TABLE="scene")
    nested = wrapping_vrt(tmp / "outer.vrt", wrapping_vrt(tmp / "inner.vrt", image))
    with zipfile.ZipFile(tmp / "images.zip", "w") as archive:
        archive.write(image, "img.tif")
    m = ["--model", model, *TORCH]
    return {
        "GTIFF_DIR prefix": (["segment", f"GTIFF_DIR:1:{image}", *m, "--out", tmp / "x.gpkg", "--mask-out", image],
                             image),
        "vrt:// name": (["segment", f"vrt://{image}?bands=1,2,3", *m, "--out", image, "--format", "gpkg"], image),
        "a VRT's source": (["segment", wrapping_vrt(tmp / "wrap.vrt", image), *m, "--out", tmp / "x.gpkg",
                            "--mask-out", image], image),
        "a VRT of a VRT": (["segment", nested, *m, "--out", image, "--format", "gpkg"], image),
        "vectorise a VRT's source": (["vectorise", wrapping_vrt(tmp / "p.vrt", prob), "--out", prob,
                                      "--format", "gpkg"], prob),
        "lower-case gpkg prefix": (["segment", f"gpkg:{gpkg}:scene", *m, "--out", gpkg], gpkg),
        "a /vsizip/ archive": (["segment", f"/vsizip/{tmp / 'images.zip'}/img.tif", *m, "--out",
                                tmp / "images.zip", "--format", "gpkg"], tmp / "images.zip"),
    }


NAME_FORMS = ["GTIFF_DIR prefix", "vrt:// name", "a VRT's source", "a VRT of a VRT", "vectorise a VRT's source",
              "lower-case gpkg prefix", "a /vsizip/ archive"]


@pytest.mark.parametrize("case", NAME_FORMS)
def test_no_name_form_of_an_input_is_overwritten(small, tmp_path, case):
    args, victim = name_forms(small, tmp_path)[case]
    before = hashes(tmp_path)
    one_error(cli(*args), "would overwrite the input", victim.name)
    assert hashes(tmp_path) == before
    assert temporaries(tmp_path) == []


# ------------------------------------------------------------------- 2. quantize calibration images

def test_quantize_never_writes_over_a_calibration_image(small, tmp_path):
    calibration = tmp_path / "calib"
    calibration.mkdir()
    image = Path(shutil.copy(small["image"], calibration / "a.tif"))
    model = Path(shutil.copy(small["model"], tmp_path))
    before = hashes(tmp_path)
    one_error(cli("quantize", model, "--calibration", calibration, "--out", image), f"{image}: ",
              "would overwrite the input")
    link = calibration / "b.onnx"
    os.link(image, link)  # the same file under an ONNX name
    one_error(cli("quantize", model, "--calibration", calibration, "--out", link), "would overwrite the input")
    link.unlink()
    one_error(cli("quantize", model, "--calibration", calibration, "--out", calibration / "c.png"),
              "cannot be written as '.png'", "something.onnx")
    assert hashes(tmp_path) == before


# ------------------------------------------------------------------- 3. ONNX caches beside a checkpoint

@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """Two tiny checkpoints, each with its fp32 export cached beside it by a first run, and an image."""
    root = tmp_path_factory.mktemp("onnx")
    image = write_tif(root / "img.tif", scene(200, seed=4))
    files = {"image": image}
    for name, seed in (("a", 0), ("b", 5)):
        model = write_contrast_checkpoint(root / name / "m.pt", seed=seed)
        done = cli("segment", image, "--model", model, "--backend", "onnxruntime", "--out", root / name / "l.gpkg",
                   "--min-length", "5")
        assert done.returncode == 0, done.stderr
        files[name] = model
        files[f"{name}.onnx"] = next(model.parent.glob("m.*.onnx"))
        files[f"{name}.lines"] = root / name / "l.gpkg"
    return files


def test_an_output_never_replaces_a_cached_onnx_model(exported, tmp_path):
    cache = exported["a.onnx"]
    before = hashes(cache, exported["a"])
    for out in (cache, cache.with_name(cache.name.replace(".onnx", ".int8.onnx"))):  # made or not yet
        done = cli("segment", exported["image"], "--model", exported["a"], "--backend", "onnxruntime", "--out", out,
                   "--format", "gpkg")
        one_error(done, "the ONNX model cached for the model", "inputs are never replaced")
    assert hashes(cache, exported["a"]) == before


def test_another_models_export_under_the_cache_name_is_rebuilt(exported, tmp_path):
    import geopandas as gpd

    folder = tmp_path / "a"
    model = Path(shutil.copy(exported["a"], folder.mkdir() or folder / "m.pt"))
    cache = folder / exported["a.onnx"].name
    shutil.copy(exported["b.onnx"], cache)  # model b's graph under model a's cache name
    shutil.copy(exported["b.onnx"], folder / cache.name.replace(".onnx", ".int8.onnx"))
    out = tmp_path / "l.gpkg"
    done = cli("segment", exported["image"], "--model", model, "--out", out, "--min-length", "5")
    assert done.returncode == 0, done.stderr
    assert "with onnxruntime on cpu" in done.stdout  # not the int8 name holding model b
    assert "not an export of this checkpoint" in done.stderr
    assert hashes(cache)[str(cache)] == hashes(exported["a.onnx"])[str(exported["a.onnx"])]  # rebuilt: a's own
    got, expected = gpd.read_file(out), gpd.read_file(exported["a.lines"])
    assert len(got) == len(expected) > 0 and got.geometry.geom_equals_exact(expected.geometry, 1e-9).all()


# ------------------------------------------------------------------- 4. all outputs, or none

@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("chattr") is None, reason="chattr +i needs root")
def test_an_immutable_previous_raster_keeps_the_previous_lines_too(small, tmp_path):
    lines, prob = previous_outputs(small, tmp_path / "out")
    if subprocess.run(["chattr", "+i", str(prob)], capture_output=True).returncode:
        pytest.skip("this file system has no immutable attribute")
    try:
        before = hashes(tmp_path, small["image"], small["model"])
        done = cli("segment", small["image"], "--model", small["model"], *TORCH, "--out", lines, "--mask-out", prob,
                   "--threshold", "0.3")
        # the tiny model may find no roads on this image: that warning comes first, then the one error
        errors = [line for line in done.stderr.strip().splitlines() if not line.startswith("warning: ")]
        assert done.returncode == 2 and len(errors) == 1, done.stderr[-3000:]
        assert errors[0].startswith(f"error: {prob}: cannot replace this file") and "no output was changed" in errors[0]
        assert hashes(tmp_path, small["image"], small["model"]) == before
        assert temporaries(tmp_path) == []
    finally:
        subprocess.run(["chattr", "-i", str(prob)], check=True)


# ------------------------------------------------------------------- 8. long names and paths

def test_a_long_valid_output_name_is_written_and_a_too_long_one_refused(small, tmp_path):
    name = "r" * 235 + ".gpkg"  # 240 bytes: valid, though its temporaries' plain names would not be
    done = cli("segment", small["image"], "--model", small["model"], *TORCH, "--out", tmp_path / name,
               "--mask-out", tmp_path / ("p" * 236 + ".tif"), "--min-length", "5")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / name).is_file() and temporaries(tmp_path) == []
    before = hashes(tmp_path, small["image"])
    too_long = tmp_path / ("r" * 250 + ".gpkg")
    one_error(cli("segment", small["image"], "--model", small["model"], *TORCH, "--out", too_long),
              "the file name is 255 bytes long, over the 247")
    deep = tmp_path.joinpath(*["d" * 200] * 21) / "roads.gpkg"  # past PATH_MAX (4096)
    one_error(cli("segment", small["image"], "--model", small["model"], *TORCH, "--out", deep), "the path is",
              "bytes long, over the")
    assert hashes(tmp_path, small["image"]) == before


# ------------------------------------------------------------------- 11. one run per output

def live_lock(target: Path) -> tuple[subprocess.Popen, Path]:
    """The lock a live run of this machine holds on `target` (a real process that sleeps)."""
    from roadseg_plugin.core.atomic import HOST_TAG

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    lock = target.parent / f".{target.name}.lock"
    lock.write_text(f"{sleeper.pid}-{HOST_TAG}")
    return sleeper, lock


def test_a_second_run_on_the_same_output_is_refused(small, tmp_path):
    lines, prob = previous_outputs(small, tmp_path / "out")
    sleeper, lock = live_lock(lines)
    try:
        before = hashes(tmp_path)
        done = cli("segment", small["image"], "--model", small["model"], *TORCH, "--out", lines, "--mask-out", prob)
        one_error(done, f"{lines}: is being written by another run (process {sleeper.pid})")
        assert hashes(tmp_path) == before
    finally:
        sleeper.kill()
        sleeper.wait()
    # the same lock once its process is gone: taken over, the run succeeds and removes it
    done = cli("segment", small["image"], "--model", small["model"], *TORCH, "--out", lines, "--mask-out", prob)
    assert done.returncode == 0, done.stderr
    assert not lock.exists() and temporaries(tmp_path / "out") == []


def test_a_second_region_run_into_the_same_folder_is_refused(small, tmp_path):
    out = tmp_path / "region"
    sleeper, _ = live_lock(out)
    try:
        done = cli("segment-region", small["image"], "--out", out, "--model", small["model"], *TORCH,
                   "--workers", "1")
        one_error(done, f"{out}: is being written by another run (process {sleeper.pid})")
        assert not out.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
