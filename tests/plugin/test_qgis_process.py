"""The command line: `qgis_process run roadseg:segmentroads -- INPUT=area.tif OUTPUT=roads.shp`
after installing the packaged plugin into a (temporary) QGIS profile.

Debian's /usr/bin/qgis_process wrapper adds --noversioncheck, which QGIS 3.22 rejects, so the
real binary qgis_process.bin is called (see docs/QGIS.md). qgis_process uses the default profile
under $HOME, loads Python plugins enabled in that profile's QGIS3.ini, and runs QGIS's own
Python, so the packages RoadSeg needs come from this virtual environment via PYTHONPATH.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import geopandas as gpd
import pytest

from tests.plugin.test_package import build
from tests.plugin.test_processing_segment_roads import FIELDS

QGIS_PROCESS = shutil.which("qgis_process.bin") or "/usr/bin/qgis_process.bin"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(QGIS_PROCESS).is_file(), reason=f"{QGIS_PROCESS} not installed (apt install qgis)"),
]


def _install(home: Path) -> Path:
    """Package the plugin and install it, enabled, into HOME's default QGIS profile."""
    from install_plugin import enable_plugin, install  # scripts/ is on sys.path via test_package

    profile = home / ".local" / "share" / "QGIS" / "QGIS3" / "profiles" / "default"
    install(build(home / "dist"), profile)
    enable_plugin(profile)
    return profile


def qgis_process(home: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {"HOME": str(home), "QT_QPA_PLATFORM": "offscreen", "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "PYTHONPATH": sysconfig.get_path("purelib"), "XDG_RUNTIME_DIR": str(home / "runtime")}
    (home / "runtime").mkdir(mode=0o700, exist_ok=True)
    return subprocess.run([QGIS_PROCESS, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_qgis_process_writes_a_shapefile_with_prj(road_rasters, road_model, tmp_path: Path) -> None:
    home = tmp_path / "home"
    _install(home)
    listed = qgis_process(home, "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr[-3000:]
    for name in ("segmentroads", "vectorisemask", "trainfromlines", "evaluatemodel"):
        assert f"roadseg:{name}" in listed.stdout

    road_rasters("area.tif", size=160, seed=3)
    model = shutil.copy(road_model, tmp_path / "model.pt")
    done = qgis_process(home, "run", "roadseg:segmentroads", "--", "INPUT=area.tif", f"MODEL={Path(model).name}",
                        "OUTPUT=roads.shp", cwd=tmp_path)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    assert (tmp_path / "roads.prj").is_file()
    lines = gpd.read_file(tmp_path / "roads.shp")
    assert list(lines.columns[:4]) == FIELDS and len(lines) > 0
    assert lines.crs.to_epsg() == 32619 or "19N" in lines.crs.name

    from roadseg_plugin.core.checkpoint import BUNDLED_MODEL

    if BUNDLED_MODEL.is_file():  # the exact command of the docs: the bundled model from the installed zip
        done = qgis_process(home, "run", "roadseg:segmentroads", "--", "INPUT=area.tif", "OUTPUT=bundled.shp",
                            cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        assert (tmp_path / "bundled.prj").is_file()
