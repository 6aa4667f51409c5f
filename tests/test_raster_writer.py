"""The tests write rasters in one place, `tests/rasters.py`, and what it writes reads back."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent


def opens_for_writing(source: str) -> list[int]:
    """Lines of the `rasterio.open(...)` calls with a "w" or "w+" mode."""
    tree = ast.parse(source)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        is_open = (isinstance(func, ast.Attribute) and func.attr == "open" and isinstance(func.value, ast.Name)
                   and func.value.id == "rasterio")
        if not is_open:
            continue
        modes = [a for a in node.args[1:2]] + [k.value for k in node.keywords if k.arg == "mode"]
        if any(isinstance(m, ast.Constant) and isinstance(m.value, str) and m.value.startswith("w") for m in modes):
            found.append(node.lineno)
    return found


def test_the_rule_finds_a_writer():
    assert opens_for_writing('import rasterio\nwith rasterio.open(p, "w", driver="GTiff") as d:\n    pass\n') == [2]
    assert opens_for_writing("rasterio.open(p, mode='w+')") == [1]
    assert opens_for_writing('rasterio.open(p)\nrasterio.open(p, "r+")') == []


def test_only_tests_rasters_opens_a_raster_for_writing():
    others = {}
    for path in sorted(TESTS.rglob("*.py")):
        if path.name == "rasters.py" and path.parent == TESTS:
            continue
        lines = opens_for_writing(path.read_text(encoding="utf-8"))
        if lines:
            others[str(path.relative_to(TESTS))] = lines
    assert not others, f"write rasters with tests.rasters.write_raster (or raster_writer), not here: {others}"


@pytest.mark.parametrize("name", ["a.tif", "a.png", "a.jpg"])
def test_written_rasters_read_back(tmp_path, name):
    import rasterio
    from affine import Affine

    from tests.rasters import write_raster

    rows, cols = np.mgrid[0:20, 0:30]
    data = np.stack([rows * 10, cols * 8, rows + cols]).astype(np.uint8)  # smooth: JPEG keeps it closely
    geo = {"crs": "EPSG:32619", "origin": (330000.0, 4690000.0), "gsd": 0.5} if name.endswith(".tif") else {}
    path = write_raster(tmp_path / "sub" / name, data, tags={"KEY": "value"} if name.endswith(".tif") else None,
                        **geo)
    with rasterio.open(path) as src:
        assert (src.count, src.height, src.width) == (3, 20, 30)
        assert src.driver == {"tif": "GTiff", "png": "PNG", "jpg": "JPEG"}[name[-3:]]
        if name.endswith(".jpg"):
            assert np.abs(src.read().astype(int) - data).mean() < 3  # lossy
        else:
            assert (src.read() == data).all()
        if geo:
            assert src.crs.to_epsg() == 32619 and src.transform == Affine(0.5, 0, 330000.0, 0, -0.5, 4690000.0)
            assert src.tags()["KEY"] == "value"


def test_one_band_mask_and_a_copied_profile(tmp_path):
    import rasterio

    from tests.rasters import write_raster

    mask = np.zeros((10, 12), bool)
    mask[:, :4] = True
    one = write_raster(tmp_path / "one.tif", np.arange(120, dtype=np.uint16).reshape(10, 12), valid=~mask,
                       crs="EPSG:26986", origin=(200000.0, 900000.0))
    with rasterio.open(one) as src:
        profile = src.profile
        assert src.dtypes == ("uint16",) and (src.read_masks(1)[:, :4] == 0).all()
        assert (src.read_masks(1)[:, 4:] == 255).all()
    again = write_raster(tmp_path / "again.tif", np.ones((10, 12), np.uint16), **profile)
    with rasterio.open(again) as src:
        assert src.crs == profile["crs"] and src.transform == profile["transform"]
    with pytest.raises(AssertionError, match="width"):
        write_raster(tmp_path / "bad.tif", np.ones((10, 13), np.uint16), **profile)
