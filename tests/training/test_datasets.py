import numpy as np
import pytest
import torch
from rasterio.transform import from_origin

from roadseg_plugin.core.errors import DatasetError
from tests.conftest import draw_roads, road_image, write_png_pair
from tests.rasters import write_raster
from training.datasets import (
    RandomCropDataset,
    find_pairs,
    load_tiles,
    read_image,
    read_mask,
    resize_sample,
    split_tiles,
)


def test_pairs_by_stem(road_dataset):
    pairs = find_pairs(road_dataset)
    assert [p[0] for p in pairs] == ["tile0", "tile1", "tile2", "tile3"]
    assert all(img.parent.name == "images" and m.parent.name == "masks" for _, img, m in pairs)


def test_missing_folder_names_it(tmp_path):
    with pytest.raises(DatasetError, match=r"images: folder not found; a dataset folder needs images/"):
        find_pairs(tmp_path)


def test_missing_partner_is_an_error_or_skipped(road_dataset):
    (road_dataset / "masks" / "tile2.png").unlink()
    with pytest.raises(DatasetError, match=r"tile2\.png: has no partner in masks/"):
        find_pairs(road_dataset)
    with pytest.warns(UserWarning, match="tile2"):
        assert [p[0] for p in find_pairs(road_dataset, skip_bad=True)] == ["tile0", "tile1", "tile3"]


def test_mismatched_sizes(road_dataset):
    rng = np.random.default_rng(1)
    write_png_pair(road_dataset, "odd", road_image(draw_roads(64, rng), rng), draw_roads(80, rng))
    with pytest.raises(DatasetError, match=r"masks/odd\.png: is 80x80 but its image is 64x64"):
        load_tiles(road_dataset)
    assert len(load_tiles(road_dataset, skip_bad=True)) == 4


def test_unreadable_file(road_dataset):
    (road_dataset / "images" / "tile1.png").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=r"images/tile1\.png: cannot be read"):
        load_tiles(road_dataset)
    with pytest.warns(UserWarning):
        assert [t.name for t in load_tiles(road_dataset, skip_bad=True)] == ["tile0", "tile2", "tile3"]


def test_white_pixels_are_not_valid(tmp_path):
    rng = np.random.default_rng(2)
    mask = draw_roads(64, rng)
    image = road_image(mask, rng)
    image[:, :10, :] = 255  # painted no-data strip (roads in the mask still run through it)
    image[0, 30, 30] = 255  # white in one band only: still valid
    write_png_pair(tmp_path, "a", image, mask)
    tile = load_tiles(tmp_path)[0]
    assert not tile.valid[:10].any()
    assert tile.valid[10:].all()


def test_raster_nodata_and_jpeg_and_geotiff(tmp_path):
    rng = np.random.default_rng(3)
    mask = draw_roads(32, rng)
    image = road_image(mask, rng)
    image[:, :, :4] = 0
    write_raster(tmp_path / "images" / "g.tif", image, nodata=0, crs="EPSG:32619",
                 transform=from_origin(300000, 4600000, 0.5, 0.5))
    write_raster(tmp_path / "masks" / "g.jpg", (mask * 255).astype(np.uint8))
    tile = load_tiles(tmp_path)[0]
    assert not tile.valid[:, :4].any() and tile.valid[:, 4:].all()
    assert tile.gsd_m == pytest.approx(0.5, rel=1e-3)  # ground metres (UTM's grid: within 0.1 %)
    assert (tile.mask == mask).mean() > 0.98  # JPEG artefacts stay on the right side of 127


@pytest.mark.parametrize("crs,res,expected", [("EPSG:2249", 2.0, 2 * 0.3048006096),  # US survey feet
                                              ("EPSG:4326", 1e-5, (0.5580 + 1.1141) / 2)])  # degrees at 60 N
def test_geotiff_gsd_is_in_metres_whatever_the_crs_units(tmp_path, crs, res, expected):
    write_raster(tmp_path / "t.tif", np.full((3, 16, 16), 90, np.uint8), crs=crs,
                 transform=from_origin(700000 if res > 1 else 10.0, 3000000 if res > 1 else 60.0 + 8 * res, res, res))
    _, _, gsd = read_image(tmp_path / "t.tif")
    assert gsd == pytest.approx(expected, rel=1e-3)


def test_rgba_alpha_marks_nodata(tmp_path):
    rng = np.random.default_rng(4)
    mask = draw_roads(32, rng)
    rgba = np.concatenate([road_image(mask, rng), np.full((1, 32, 32), 255, np.uint8)])
    rgba[3, 20:, :] = 0
    write_png_pair(tmp_path, "rgba", rgba, mask)
    image, valid, _ = read_image(tmp_path / "images" / "rgba.png")
    assert image.shape[0] == 3 and not valid[20:].any() and valid[:20].all()


def test_split_is_by_tile_and_reproducible(road_dataset):
    tiles = load_tiles(road_dataset)
    train, val = split_tiles(tiles, 0.25, seed=0)
    assert len(val) == 1 and len(train) == 3
    assert not {t.name for t in train} & {t.name for t in val}
    assert [t.name for t in split_tiles(tiles, 0.25, seed=0)[1]] == [t.name for t in val]


def test_crops_keep_image_and_labels_aligned(tmp_path):
    # Roads are drawn bright in the image: after crop + augmentation, bright pixels must be road.
    rng = np.random.default_rng(5)
    mask = draw_roads(128, rng, n=4)
    image = np.where(mask, 250, 10).astype(np.uint8)[None].repeat(3, 0)
    write_png_pair(tmp_path, "t", image, mask)
    tiles = load_tiles(tmp_path)
    ds = RandomCropDataset(tiles, 48, 40, [0.0] * 3, [1.0] * 3, augment=True, scale_jitter=0.3, seed=1)
    for i in range(len(ds)):
        s = ds[i]
        assert s["image"].shape == (3, 48, 48) and s["mask"].shape == (48, 48)
        bright = s["image"].mean(0) > 0.45
        agree = (bright == (s["mask"] > 0.5)).float().mean()
        assert agree > 0.93, i


def test_crops_are_deterministic_per_epoch(road_dataset):
    tiles = load_tiles(road_dataset)
    ds = RandomCropDataset(tiles, 32, 4, [0.5] * 3, [0.2] * 3, seed=0)
    a = ds[2]["image"]
    assert torch.equal(a, ds[2]["image"])
    ds.set_epoch(1)
    assert not torch.equal(a, ds[2]["image"])


def test_mostly_nodata_crops_are_avoided(tmp_path):
    rng = np.random.default_rng(6)
    mask = draw_roads(128, rng)
    image = road_image(mask, rng)
    image[:, :, :96] = 255  # three quarters no-data
    write_png_pair(tmp_path, "w", image, mask)
    ds = RandomCropDataset(load_tiles(tmp_path), 32, 30, [0.5] * 3, [0.2] * 3, augment=False)
    assert np.mean([ds[i]["valid"].mean().item() >= 0.5 for i in range(30)]) == 1.0


def test_resize_keeps_labels_binary():
    s = {"image": torch.rand(3, 40, 40), "mask": (torch.rand(40, 40) > 0.5).float(), "valid": torch.ones(40, 40)}
    r = resize_sample(s, 32)
    assert set(r["mask"].unique().tolist()) <= {0.0, 1.0} and r["valid"].min() == 1


def truncate(path):
    """Keep the first half of a file, as an interrupted copy or download does."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def write_tif_pair(root, name, image, mask):
    for sub, array in (("images", image), ("masks", (mask * 255).astype(np.uint8))):
        write_raster(root / sub / f"{name}.tif", array)


@pytest.mark.parametrize("fmt,sub", [("png", "images"), ("png", "masks"), ("tif", "images")])
def test_truncated_file_is_refused_not_zero_filled(road_dataset, fmt, sub):
    # GDAL's fast PNG path decodes a truncated PNG without an error (made-up rows): reads are strict
    rng = np.random.default_rng(7)
    mask = draw_roads(96, rng)
    if fmt == "png":
        write_png_pair(road_dataset, "cut", road_image(mask, rng), mask)
    else:
        write_tif_pair(road_dataset, "cut", road_image(mask, rng), mask)
    truncate(road_dataset / sub / f"cut.{fmt}")
    with pytest.raises(DatasetError, match=rf"{sub}/cut\.{fmt}: cannot be read \(.+\); replace or remove"):
        load_tiles(road_dataset)
    with pytest.warns(UserWarning, match=rf"skipping: .*cut\.{fmt}"):
        assert [t.name for t in load_tiles(road_dataset, skip_bad=True)] == ["tile0", "tile1", "tile2", "tile3"]


def test_zero_one_masks_are_road_and_background(road_dataset):
    rng = np.random.default_rng(8)
    mask = draw_roads(64, rng)
    write_png_pair(road_dataset, "01", road_image(mask, rng), mask)
    write_raster(road_dataset / "masks" / "01.png", mask.astype(np.uint8))  # values 0 and 1, not 0 and 255
    tiles = {t.name: t for t in load_tiles(road_dataset)}
    assert mask.any() and np.array_equal(tiles["01"].mask, mask)
    assert np.array_equal(read_mask(road_dataset / "masks" / "tile0.png"), tiles["tile0"].mask)  # 0/255 unchanged


def test_other_mask_values_keep_the_over_127_rule(tmp_path):
    values = np.array([[0, 1, 100, 128, 200, 255]], np.uint8)
    write_raster(tmp_path / "m.png", values)
    assert read_mask(tmp_path / "m.png").tolist() == [[False, False, False, True, True, True]]
    write_raster(tmp_path / "z.png", np.zeros((1, 1, 6), np.uint8))
    assert not read_mask(tmp_path / "z.png").any()
