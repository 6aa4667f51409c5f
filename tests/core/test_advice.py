"""The one-line advice when imagery looks unlike the model's (core/advice.py), end to end."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from rasterio.transform import from_origin

from roadseg_plugin.core.advice import unfamiliar_imagery
from roadseg_plugin.core.params import InferenceParams
from roadseg_plugin.core.pipeline import extract_roads
from tests.rasters import write_raster

ROOT = Path(__file__).resolve().parents[2]


def test_the_line_names_the_reason_and_the_remedy():
    assert unfamiliar_imagery(5.0, 2.25, 0.3) is None  # roads found, colours as in training
    few = unfamiliar_imagery(0.1, 2.25, None)
    assert few and "few roads found (0.10 km over 2.25 km²)" in few and "Train model from drawn road lines" in few
    assert "10 minutes" in few and "\n" not in few
    far = unfamiliar_imagery(5.0, 2.25, 3.4)
    assert far and "far from the model's training imagery (distance 3.4)" in far and "few roads" not in far
    assert unfamiliar_imagery(0.0, 0.01, None)  # a small raster: only when nothing at all was found
    assert unfamiliar_imagery(0.001, 0.01, None) is None
    assert unfamiliar_imagery(0.0, None, None) is None  # no pixel size: no area to judge


def _cast_raster(path: Path) -> Path:
    """A 600 m square of purple-cast noise: no roads, colours far from any aerial survey."""
    rng = np.random.default_rng(0)
    data = np.stack([rng.integers(150, 200, (600, 600)), rng.integers(0, 30, (600, 600)),
                     rng.integers(170, 255, (600, 600))]).astype(np.uint8)
    return write_raster(path, data, crs="EPSG:26986", transform=from_origin(200000, 900000, 1.0, 1.0))


def test_pipeline_and_cli_say_it_first(tmp_path):
    raster = _cast_raster(tmp_path / "purple.tif")
    result = extract_roads(raster, tmp_path / "roads.gpkg", InferenceParams(device="cpu"))
    assert result.warnings and result.warnings[0].startswith("this imagery looks unlike the model's")
    done = subprocess.run([sys.executable, "-m", "roadseg_plugin", "segment", str(raster), "--out",
                           str(tmp_path / "cli.gpkg")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    advice = [line for line in done.stderr.splitlines() if "unlike the model's" in line]
    assert len(advice) == 1 and "Train model from drawn road lines" in advice[0]
