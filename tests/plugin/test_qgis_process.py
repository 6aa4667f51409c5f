"""The command line of the README, `qgis_process run roadseg:segmentroads -- INPUT=a.tif OUTPUT=roads.shp`,
after what `make install-plugin` does, in a fresh QGIS profile and with no extra environment.

`scripts/install_plugin.py` installs the zip into a temporary HOME's default profile, enables it
and installs the CPU-inference packages with pip for QGIS's Python (/usr/bin/python3) into
`PROFILE/python/roadseg-packages/py3.11`, which the plugin puts on sys.path itself. qgis_process
then runs with HOME, PATH and the display settings only: no PYTHONPATH, and no torch (the system
Python has none and the CPU set does not bring it), so the model runs in ONNX Runtime from the
ONNX files beside the checkpoint. Slow: pip downloads the packages (about 270 MB, or its cache).

Debian's /usr/bin/qgis_process wrapper adds --noversioncheck, which QGIS 3.22 rejects, so the
real binary qgis_process.bin is called (see docs/QGIS.md).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import pytest

from tests.plugin.test_package import ROOT, build
from tests.plugin.test_processing_segment_roads import FIELDS

QGIS_PROCESS = shutil.which("qgis_process.bin") or "/usr/bin/qgis_process.bin"
QGIS_PYTHON = "/usr/bin/python3"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(QGIS_PROCESS).is_file(), reason=f"{QGIS_PROCESS} not installed (apt install qgis)"),
]


def make_install_plugin(home: Path) -> Path:
    """What `make install-plugin` runs (scripts/install_plugin.py), into HOME's default profile."""
    profile = home / ".local" / "share" / "QGIS" / "QGIS3" / "profiles" / "default"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "install_plugin.py"), "--profile", str(profile),
                           "--zip", str(build(home / "dist")), "--python", QGIS_PYTHON],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    assert "packages: CPU inference" in done.stdout
    return profile


def qgis_process(home: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """qgis_process with nothing but HOME, PATH and the display settings: no PYTHONPATH."""
    env = {"HOME": str(home), "QT_QPA_PLATFORM": "offscreen", "PATH": "/usr/bin:/bin",
           "XDG_RUNTIME_DIR": str(home / "runtime")}
    (home / "runtime").mkdir(mode=0o700, exist_ok=True)
    return subprocess.run([QGIS_PROCESS, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


@pytest.mark.skipif(not Path(QGIS_PYTHON).is_file(), reason=f"QGIS's Python {QGIS_PYTHON} not found")
def test_readme_command_after_make_install_plugin(road_rasters, road_model, tmp_path: Path) -> None:
    from roadseg_plugin.core.onnx_backend import copy_with_exports
    from roadseg_plugin.core.params import BUNDLED_MODEL

    home = tmp_path / "home"
    profile = make_install_plugin(home)
    folder = profile / "python" / "roadseg-packages" / "py3.11"
    assert (folder / "onnxruntime").is_dir() and not (folder / "torch").exists()
    no_torch = subprocess.run([QGIS_PYTHON, "-c", "import torch"], capture_output=True, env={"PATH": "/usr/bin"})
    assert no_torch.returncode != 0, "this test needs a QGIS Python without torch"
    # a second run finds everything importable and downloads nothing
    again = subprocess.run([sys.executable, str(ROOT / "scripts" / "install_plugin.py"), "--profile", str(profile),
                            "--zip", str(next((home / "dist").glob("*.zip")))],
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "already importable" in again.stdout, again.stdout + again.stderr

    listed = qgis_process(home, "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr[-3000:]
    for name in ("segmentroads", "vectorisemask", "trainfromlines", "evaluatemodel"):
        assert f"roadseg:{name}" in listed.stdout

    road_rasters("a.tif", size=160, seed=3)
    if BUNDLED_MODEL.is_file():  # the README's command, word for word: the bundled model's ONNX files
        done = qgis_process(home, "run", "roadseg:segmentroads", "--", "INPUT=a.tif", "OUTPUT=roads.shp",
                            cwd=tmp_path)
        assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
        assert "onnxruntime-int8" in done.stdout
        assert (tmp_path / "roads.prj").is_file()
        lines = gpd.read_file(tmp_path / "roads.shp")
        assert list(lines.columns[:4]) == FIELDS
        assert lines.crs.to_epsg() == 32619 or "19N" in lines.crs.name

    # a checkpoint without its ONNX files cannot be exported without torch: one clear line
    shutil.copy(road_model, tmp_path / "bare.pt")
    refused = qgis_process(home, "run", "roadseg:segmentroads", "--", "INPUT=a.tif", "MODEL=bare.pt",
                           "OUTPUT=bare.shp", cwd=tmp_path)
    assert refused.returncode != 0 and not (tmp_path / "bare.shp").exists()
    assert "needs torch to export it to ONNX; install the Training and GPU packages" in refused.stdout + refused.stderr
    # with the files training wrote beside best.pt, it runs
    best = road_model.parent / "run" / "best.pt"
    copy_with_exports(best, tmp_path / "model.pt")
    done = qgis_process(home, "run", "roadseg:segmentroads", "--", "INPUT=a.tif", "MODEL=model.pt",
                        "OUTPUT=roads.gpkg", "MASK_OUTPUT=prob.tif", cwd=tmp_path)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    assert len(gpd.read_file(tmp_path / "roads.gpkg")) > 0
    done = qgis_process(home, "run", "roadseg:vectorisemask", "--", "INPUT=prob.tif", "OUTPUT=vectorised.gpkg",
                        cwd=tmp_path)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    assert len(gpd.read_file(tmp_path / "vectorised.gpkg")) > 0
