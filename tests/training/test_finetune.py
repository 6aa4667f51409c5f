"""training.finetune: drawn lines -> a model that is never worse without saying so."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rasterio.transform import from_origin

from roadseg_plugin.core.params import BUNDLED_MODEL
from roadseg_plugin.core.vectorise import vectorise_mask
from tests.conftest import SHARED_DATA, draw_roads, needs_shared_data, road_image
from tests.rasters import write_raster
from training.datasets import Tile, load_tiles
from training.finetune import FinetuneConfig, finetune_from_lines, measure, on_torch
from training.finetune_data import split_by_area, undrawn_share

CRS = "EPSG:26986"


def write_geotiff(path: Path, image: np.ndarray, x0: float = 200000.0, y0: float = 900000.0) -> Path:
    return write_raster(path, image, crs=CRS, transform=from_origin(x0, y0, 1.0, 1.0))


def drawn(tmp_path: Path, n: int = 2, size: int = 192) -> tuple[list[Path], object]:
    """`n` synthetic rasters side by side and every road on them drawn as lines."""
    import geopandas as gpd
    import pandas as pd

    rng = np.random.default_rng(3)
    rasters, frames = [], []
    for i in range(n):
        mask = draw_roads(size, rng, n=4, width=5)
        x0 = 200000.0 + i * (size + 50)
        rasters.append(write_geotiff(tmp_path / f"r{i}.tif", road_image(mask, rng), x0))
        frames.append(vectorise_mask(mask, from_origin(x0, 900000.0, 1, 1), CRS, min_length=5))
    return rasters, gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=CRS)


def named_tile(name: str, road: bool = True) -> Tile:
    mask = np.zeros((16, 16), bool)
    mask[8, :] = road
    return Tile(name, np.zeros((3, 16, 16), np.uint8), mask, np.ones((16, 16), bool))


def test_split_by_area_holds_out_whole_tiles_from_the_end_of_each_raster():
    tiles = [named_tile(f"{i:02d}_scene{i}_{r:05d}_{c:05d}") for i in range(2) for r in (0, 512) for c in (0, 512)]
    train, val = split_by_area(tiles, 0.25)
    assert [t.name for t in val] == ["00_scene0_00512_00512", "01_scene1_00512_00512"][:len(val)]
    assert len(val) == 2 and not {t.name for t in train} & {t.name for t in val}
    assert len(train) + len(val) == len(tiles)
    train, val = split_by_area(tiles[:4], 0.5)  # one raster: its last row of tiles
    assert {t.name for t in val} == {"00_scene0_00512_00512", "00_scene0_00512_00000"}
    train, val = split_by_area([named_tile("00_a_00000_00000"), named_tile("00_a_00512_00000", road=False)], 0.9)
    assert len(train) == 1 and len(val) == 1 and train[0].mask.any()  # training keeps its road
    with pytest.raises(ValueError, match="at least 2"):
        split_by_area(tiles[:1], 0.25)


def test_undrawn_share_counts_predicted_roads_far_from_any_drawn_one():
    t = named_tile("00_a_00000_00000")
    prob = np.zeros((16, 16), np.float32)
    prob[8, :] = 1.0  # the drawn road
    assert undrawn_share([t], [prob], 0.5) == 0
    t.mask[:] = False
    t.mask[0, 0] = True
    prob[:, :] = 0
    prob[15, 15] = 1.0  # far from the only drawn pixel
    assert undrawn_share([t], [prob], 0.5) == 1.0


def test_finetune_flow_measures_before_and_after_and_reports(tmp_path, tiny_checkpoint):
    rasters, lines = drawn(tmp_path)
    result = finetune_from_lines(FinetuneConfig(rasters=rasters, lines=lines, out=tmp_path / "run",
                                                init=tiny_checkpoint, label_tile=64, crop=64, minutes=0.05,
                                                round_steps=4, batch_size=4, device="cpu", keep_worse=True))
    assert result.kept == "tuned" and result.model == tmp_path / "run" / "finetuned.pt" and result.model.is_file()
    from roadseg_plugin.core.onnx_backend import checkpoint_digest

    digest = checkpoint_digest(result.model)[:12]
    assert (tmp_path / "run" / f"finetuned.{digest}.onnx").is_file()  # runs without torch too
    assert result.val_tiles and not set(result.val_tiles) & set(result.train_tiles)
    assert all({"iou", "relaxed_f1", "apls"} <= m.keys() for m in (result.start, result.tuned))
    assert not result.threshold_tuned and result.threshold == 0.5  # too little road to tune: the model's
    assert not result.frozen_encoder  # a start model that finds nothing: the whole model learns
    assert any("unlike the start model's" in m for m in result.messages)
    assert result.rounds >= 1 and result.steps >= 4 and not result.cancelled
    saved = json.loads((tmp_path / "run" / "finetune.json").read_text())
    assert saved["kept"] == "tuned" and saved["start"] == result.start
    log = (tmp_path / "run" / "train.log").read_text()
    assert "finetune: start model on the validation area" in log and "validation area (" in log


def test_a_worse_fine_tune_returns_the_start_model_and_says_so(tmp_path, tiny_checkpoint, monkeypatch):
    import torch

    from roadseg_plugin.core.checkpoint import load_model, save_checkpoint
    from training import train

    def harmful_training(cfg):  # a run that ends with a model that finds no road at all
        model, meta = load_model(cfg.init)
        with torch.no_grad():
            model.head.weight.zero_()
            model.head.bias.fill_(-20.0)
        save_checkpoint(Path(cfg.out) / "best.pt", model, meta)
        return type("T", (), {"epoch": 1})()

    monkeypatch.setattr(train, "train_model", harmful_training)
    model, meta = load_model(tiny_checkpoint)
    meta.threshold = 0.01  # a start model that calls everything road: it finds every road, some IoU
    start = tmp_path / "start.pt"
    save_checkpoint(start, model, meta)
    rasters, lines = drawn(tmp_path)
    config = FinetuneConfig(rasters=rasters, lines=lines, out=tmp_path / "run", init=start, label_tile=64,
                            crop=64, minutes=0.05, round_steps=2, device="cpu")
    result = finetune_from_lines(config)
    assert result.tuned["iou"] == 0.0 < result.start["iou"]
    assert result.kept == "start" and result.threshold == 0.01
    assert result.model.read_bytes() == start.read_bytes()
    assert any("warning: the fine-tuned model is worse" in m for m in result.messages)
    assert "kept the start model" in (tmp_path / "run" / "train.log").read_text()
    config.keep_worse = True
    forced = finetune_from_lines(config)
    assert forced.kept == "tuned" and any("as asked" in m for m in forced.messages)


@pytest.fixture(scope="module")
def fifty_lines(tmp_path_factory):
    """Two real tiles as GeoTIFFs with ~50 drawn lines over them (about half their roads), three
    held-out tiles and the bundled model's figures on them: (rasters, lines, held, before), made
    once for both fine-tunes."""
    import geopandas as gpd
    import pandas as pd

    if not (SHARED_DATA / "images").is_dir():
        pytest.skip(f"real Massachusetts tiles not found at {SHARED_DATA} (they live beside the repository)")
    folder = tmp_path_factory.mktemp("fifty_lines")
    extra = SHARED_DATA.parent / "extra"
    tiles = {t.name: t for t in load_tiles(extra)}
    rasters, frames = [], []
    for i, name in enumerate(("10528795_15", "10678810_15")):
        t = tiles[name]
        x0 = 200000.0 + i * 2000
        rasters.append(write_geotiff(folder / f"{name}.tif", t.image, x0))
        lines = vectorise_mask(t.mask, from_origin(x0, 900000.0, 1, 1), CRS)
        frames.append(lines.nlargest(25, "length_m"))  # ~50 drawn lines over the two tiles, about half the roads
    lines = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=CRS)
    held = [tiles[name] for name in ("10228660_15", "10378795_15", "10078720_15")]
    before, _ = measure(on_torch(BUNDLED_MODEL, "cpu"), held)
    return rasters, lines, held, before


@needs_shared_data
@pytest.mark.slow
@pytest.mark.parametrize("replay", [False, True])
def test_fifty_drawn_lines_on_real_tiles_never_make_held_out_tiles_worse(fifty_lines, tmp_path, replay):
    rasters, lines, held, before = fifty_lines
    result = finetune_from_lines(FinetuneConfig(rasters=rasters, lines=lines, out=tmp_path / "run", minutes=1,
                                                device="cpu", replay=SHARED_DATA if replay else None))
    after, _ = measure(on_torch(result.model, "cpu"), held)
    print(f"replay={replay} held-out before", {k: round(before[k], 4) for k in ("iou", "relaxed_f1", "apls")},
          "after", {k: round(after[k], 4) for k in ("iou", "relaxed_f1", "apls")}, result.summary())
    assert result.undrawn_share > 0.35 and any("look incomplete" in m for m in result.messages)
    assert not result.threshold_tuned  # incomplete labels never tune the threshold
    assert after["iou"] >= before["iou"] - 0.005 and after["apls"] >= before["apls"] - 0.01
