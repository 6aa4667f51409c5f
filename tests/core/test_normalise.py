"""Radiometric normalisation (`normalise.Radiometry`): off keeps today's numbers, auto maps only
rasters far from the training range, and the engine and training map a raster identically."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from roadseg_plugin.core.checkpoint import ModelMeta
from roadseg_plugin.core.engine import make_normaliser, segment_raster
from roadseg_plugin.core.errors import CheckpointError
from roadseg_plugin.core.normalise import (
    InputNormaliser,
    Radiometry,
    band_limits,
    distance,
    fill_nodata,
    normalise,
    remap_image,
    standardise,
    training_radiometry,
)
from roadseg_plugin.core.readers import open_raster
from tests.conftest import draw_roads, road_image
from tests.rasters import write_raster as write_array

TARGET = [[10.0, 190.0], [15.0, 190.0], [8.0, 185.0]]


def meta_with(mode: str | None) -> ModelMeta:
    extra = {} if mode is None else {"normalisation": {"mode": mode, "target": TARGET}}
    return ModelMeta(mean=[0.3, 0.3, 0.28], std=[0.19, 0.18, 0.18], extra=extra)


def typical(seed: int = 0, size: int = 128) -> np.ndarray:
    """An image spanning about the training range (a stretched synthetic scene)."""
    rng = np.random.default_rng(seed)
    image = road_image(draw_roads(size, rng, n=4), rng).astype(np.float32)
    lim = band_limits(image.astype(np.uint8))
    t = np.asarray(TARGET, np.float32)
    scaled = (image - lim[:, :1, None]) / (lim[:, 1:, None] - lim[:, :1, None])
    return np.clip(scaled * (t[:, 1:, None] - t[:, :1, None]) + t[:, :1, None], 0, 254).astype(np.uint8)


def test_without_the_key_nothing_changes_for_8_bit_and_16_bit():
    meta = meta_with(None)
    image = typical()
    assert Radiometry.from_meta(meta).mode == "off"
    np.testing.assert_array_equal(normalise(image, meta), standardise(image, meta))
    lut = InputNormaliser(meta, "uint8")
    valid = np.ones(image.shape[1:], bool)
    np.testing.assert_allclose(lut(image, valid), standardise(image, meta), atol=1e-6)
    raw = image.astype(np.uint16) * 8
    limits = np.array([[80.0, 1500.0]] * 3, np.float32)
    old = np.clip((raw.astype(np.float32) - 80) * (np.float32(255) / np.float32(1420)), 0, 255)
    np.testing.assert_allclose(InputNormaliser(meta, "uint16", limits)(raw, valid), standardise(old, meta), atol=1e-5)


@pytest.mark.parametrize("bad, words", [({"mode": "sometimes", "target": TARGET}, "mode 'sometimes'"),
                                        ({"mode": "auto"}, "needs target"),
                                        ({"mode": "auto", "target": TARGET[:2]}, "target has 2 band(s)"),
                                        ({"mode": "auto", "target": [[200, 100]] * 3}, "low < high"),
                                        ("auto", "must be a mapping")])
def test_a_bad_setting_is_refused_naming_the_key(bad, words):
    data = {**meta_with(None).to_dict(), "extra": {"normalisation": bad}}
    with pytest.raises(CheckpointError, match="extra.normalisation") as err:
        ModelMeta.from_dict(data, "m.pt")
    assert words in str(err.value)


def test_unknown_metadata_keys_are_ignored_and_the_setting_round_trips():
    meta = meta_with("auto")
    again = ModelMeta.from_dict({**meta.to_dict(), "future_key": 1}, "m.pt")
    assert Radiometry.from_meta(again) == Radiometry.from_meta(meta)
    assert Radiometry.from_meta(again).with_mode("always").mode == "always"


def test_distance_is_small_for_the_training_range_and_large_for_dark_hazy_or_cast_images():
    image = typical()
    assert distance(band_limits(image), TARGET) < 0.5
    dark = (image * 0.4).astype(np.uint8)
    hazy = (image * 0.6 + 80).astype(np.uint8)
    warm = np.clip(image * np.array([1.2, 1.0, 0.75])[:, None, None], 0, 255).astype(np.uint8)
    for shifted in (dark, hazy, warm):
        assert distance(band_limits(shifted), TARGET) > 1.5


def test_auto_maps_a_dark_image_onto_the_training_range_and_leaves_a_typical_one():
    meta = meta_with("auto")
    image = typical()
    assert remap_image(image, meta) is image
    np.testing.assert_array_equal(normalise(image, meta), standardise(image, meta))
    dark = (image * 0.4).astype(np.uint8)
    mapped = remap_image(dark, meta)
    np.testing.assert_allclose(band_limits(mapped), TARGET, atol=3)
    always = remap_image(image, meta_with("always"))
    assert always is not image and np.abs(always.astype(int) - image).max() <= 3


def test_white_no_data_is_left_out_of_the_statistics():
    meta = meta_with("auto")
    dark = (typical() * 0.4).astype(np.uint8)
    with_white = dark.copy()
    with_white[:, :, :40] = 255  # 30 % white no-data would put the 98th percentile at 255
    rest = np.ones(dark.shape[1:], bool)
    rest[:, :40] = False
    np.testing.assert_array_equal(remap_image(with_white, meta)[:, :, 40:], remap_image(dark, meta, rest)[:, :, 40:])
    assert band_limits(with_white)[:, 1].max() < 150


def test_training_radiometry_is_the_median_of_the_per_tile_ranges_and_their_spread():
    images = [(typical(seed), np.ones((128, 128), bool)) for seed in range(3)]
    made = training_radiometry(images, "auto")
    np.testing.assert_allclose(made.target, TARGET, atol=3)
    assert made.mode == "auto" and len(made.tolerance) == 4 and all(0 < v < 0.1 for v in made.tolerance)
    assert Radiometry.from_dict(made.to_dict()) == made


def write_raster(path: Path, data: np.ndarray) -> Path:
    return write_array(path, data, crs="EPSG:26986", transform=from_origin(200000, 900000, 1, 1))


@pytest.mark.parametrize("mode", ["off", "auto", "always"])
def test_the_engine_maps_a_raster_exactly_as_training_maps_the_tile(tmp_path, mode):
    meta = meta_with(mode)
    dark = (typical(size=160) * 0.4).astype(np.uint8)
    with open_raster(write_raster(tmp_path / "dark.tif", dark)) as reader:
        normaliser, notes = make_normaliser(reader, meta, [1, 2, 3])
        raw, valid = reader.read(rasterio.windows.Window(0, 0, 160, 160), [1, 2, 3])
    engine = normaliser(raw, valid)
    np.testing.assert_allclose(engine, standardise(remap_image(dark, meta), meta), atol=1e-6)
    np.testing.assert_allclose(engine, normalise(dark, meta), atol=1e-6)
    assert bool(notes) == (mode != "off")
    if mode == "auto":
        assert "far from the model's training imagery" in notes[0]


def test_auto_maps_a_colour_cast_that_the_model_does_not_know():
    meta = meta_with("auto")
    warm = np.clip(typical() * np.array([1.2, 1.0, 0.75])[:, None, None], 0, 255).astype(np.uint8)
    mapped = remap_image(warm, meta)
    np.testing.assert_allclose(band_limits(mapped), TARGET, atol=3)


def test_16_bit_values_go_onto_the_training_range_when_the_model_has_one(tmp_path):
    image = typical(size=96).astype(np.uint16) * 8 + 100
    path = write_raster(tmp_path / "u16.tif", image)
    with open_raster(path) as reader:
        off, off_notes = make_normaliser(reader, meta_with(None), [1, 2, 3])
        auto, auto_notes = make_normaliser(reader, meta_with("auto"), [1, 2, 3])
    assert "0-255 input range" in off_notes[0] and "training range" in auto_notes[0]
    np.testing.assert_allclose(off.target, [[0, 255]] * 3)
    np.testing.assert_allclose(auto.target, TARGET)


def test_segment_raster_reports_the_mapping(tmp_path, tiny_checkpoint):
    from roadseg_plugin.core.checkpoint import load_model, save_checkpoint

    model, meta = load_model(tiny_checkpoint)
    meta.extra = {"normalisation": {"mode": "auto", "target": TARGET}}
    save_checkpoint(tmp_path / "norm.pt", model, meta)
    dark = (typical(size=96) * 0.4).astype(np.uint8)
    result = segment_raster(write_raster(tmp_path / "dark.tif", dark), tmp_path / "out.tif", tmp_path / "norm.pt",
                            backend="torch")
    assert any("mapped per band onto the training range" in w for w in result.warnings)


def test_the_engine_normaliser_gives_every_8_bit_level_exactly_as_standardise():
    meta = meta_with(None)
    levels = np.repeat(np.arange(256, dtype=np.uint8)[None, None, :], 3, axis=0)
    valid = np.ones(levels.shape[1:], bool)
    got = InputNormaliser(meta, "uint8")(levels, valid)
    assert np.array_equal(got.view(np.uint32), standardise(levels, meta).view(np.uint32))  # bit for bit
    stretched = InputNormaliser(meta, "uint8", np.array([[20.0, 200.0]] * 3, np.float32),
                                np.asarray(TARGET, np.float32))(levels, valid)
    assert not np.array_equal(stretched, got) and np.all(np.diff(stretched, axis=2) >= 0)
    holes = valid.copy()
    holes[0, ::7] = False
    filled = InputNormaliser(meta, "uint8")(levels, holes)[0, 0]  # band 1 of the one row
    for col in np.flatnonzero(~holes[0]):  # each gap takes a neighbour's value
        assert filled[col] in {got[0, 0, c] for c in (col - 1, col + 1) if 0 <= c < 256}
    assert not InputNormaliser(meta, "uint8")(levels, np.zeros_like(valid)).any()


def test_nodata_carries_the_nearest_valid_pixel_on_as_a_raster_edge_does():
    x = np.arange(2 * 6 * 5, dtype=np.float32).reshape(2, 6, 5)
    valid = np.ones((6, 5), bool)
    valid[4:] = False  # a collar of two rows
    valid[1, 2] = False  # a one-pixel hole between valid neighbours
    before = x.copy()
    out = fill_nodata(x, valid)
    assert out is x and np.array_equal(out[:, valid], before[:, valid])
    assert np.array_equal(out[:, 4], before[:, 3]) and np.array_equal(out[:, 5], before[:, 3])
    assert any(np.array_equal(out[:, 1, 2], before[:, r, c]) for r, c in ((0, 2), (2, 2), (1, 1), (1, 3)))
    assert fill_nodata(np.ones((1, 2, 2), np.float32), np.zeros((2, 2), bool)).sum() == 0
