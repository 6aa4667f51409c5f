"""No-data next to roads must not cost roads: a tile alone and the same tile with a no-data
collar or hole give the same roads (IoU within 0.02), through the real engine, with the
bundled model, on Massachusetts and web-basemap tiles."""
from __future__ import annotations

import pytest

from roadseg_plugin.core.metrics import PixelCounts
from roadseg_plugin.core.params import BUNDLED_MODEL, read_model_info
from tests.conftest import SHARED_DATA, needs_shared_data
from training.datasets import load_tiles
from training.nodata import compare, road_crop, with_nodata
from training.robustness import validation_stems

WEB = SHARED_DATA.parents[1] / "web-basemap-us"


def test_with_nodata_adds_a_white_collar_or_hole_and_says_where(tmp_path):
    import numpy as np

    from training.datasets import Tile

    tile = Tile("t", np.full((3, 30, 30), 90, np.uint8), np.eye(30, dtype=bool), np.ones((30, 30), bool), 1.0)
    padded, offset, hole = with_nodata(tile, "border", border=5)
    assert padded.shape == (40, 40) and offset == (5, 5) and not hole.any()
    assert (padded.image[:, :5] == 255).all() and not padded.valid[:5].any() and padded.mask[5:35, 5:35].all() == \
        tile.mask.all()
    holed, offset, hole = with_nodata(tile, "hole")
    assert offset == (0, 0) and hole.sum() == 100 and (holed.image[:, hole] == 255).all()
    assert not holed.valid[hole].any() and holed.valid[~hole].all()
    with pytest.raises(ValueError, match="unknown no-data kind"):
        with_nodata(tile, "ring")


def _pooled(tiles, gsd: float, kind: str) -> tuple[float, float]:
    alone, nodata = PixelCounts(), PixelCounts()
    for tile in tiles:
        a, b = compare(tile, gsd, kind)
        alone, nodata = alone + a, nodata + b
    return alone.metrics()["iou"], nodata.metrics()["iou"]


@needs_shared_data
@pytest.mark.parametrize("kind", ["border", "hole"])
def test_massachusetts_roads_beside_nodata(kind):
    tiles = {t.name: t for t in load_tiles(SHARED_DATA)}
    held = [road_crop(tiles[s]) for s in validation_stems(read_model_info(BUNDLED_MODEL))[:4] if s in tiles]
    alone, nodata = _pooled(held, 1.0, kind)
    print(f"massachusetts {kind}: IoU alone {alone:.3f}, with no-data {nodata:.3f}")
    assert alone > 0.3 and abs(alone - nodata) <= 0.02


@needs_shared_data
@pytest.mark.skipif(not (WEB / "images").is_dir(), reason=f"web-basemap tiles not found at {WEB}")
@pytest.mark.parametrize("kind", ["border", "hole"])
def test_web_basemap_roads_beside_nodata(kind):
    tiles = load_tiles(WEB)[:6]
    alone, nodata = _pooled(tiles, 0.45, kind)
    print(f"web-basemap {kind}: IoU alone {alone:.3f}, with no-data {nodata:.3f}")
    assert alone > 0.2 and abs(alone - nodata) <= 0.02
