"""Fixtures shared by the reliability tests (real files, the tiny real model, the real CLI)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.core.test_engine import write_contrast_checkpoint
from tests.reliability.test_segment_cli import TORCH, cli, scene, write_tif


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict[str, Path]:
    """A 200 px and a 512 px image, the tiny model, and a probability raster and lines of the 512 px one."""
    root = tmp_path_factory.mktemp("small")
    files = {"model": write_contrast_checkpoint(root / "tiny.pt"), "image": write_tif(root / "img.tif", scene(200)),
             "large": write_tif(root / "large.tif", scene(512, seed=1))}
    files["prob"], files["lines"] = root / "prob.tif", root / "lines.gpkg"
    done = cli("segment", files["large"], "--model", files["model"], *TORCH, "--out", files["lines"],
               "--mask-out", files["prob"], "--min-length", "5")
    assert done.returncode == 0, done.stderr
    return files
