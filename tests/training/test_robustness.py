"""training.robustness: shifted held-out tiles segmented through the real engine."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tests.conftest import SHARED_DATA, needs_shared_data
from training.cli import main
from training.datasets import Tile, load_tiles
from training.robustness import (
    SHIFTS,
    format_table,
    held_out_stems,
    label_on_grid,
    make_case,
    parse_ood,
    run_suite,
    write_case,
)


def tile(size: int = 96) -> Tile:
    from tests.conftest import draw_roads, road_image

    rng = np.random.default_rng(0)
    mask = draw_roads(size, rng)
    valid = np.ones((size, size), bool)
    valid[:, :8] = False
    return Tile("t0", road_image(mask, rng), mask, valid)


@pytest.mark.parametrize("shift", sorted(SHIFTS))
def test_every_shift_makes_a_raster_the_engine_reads(tmp_path, shift):
    t = tile()
    case = make_case(t, shift, 1.0, np.random.default_rng(0))
    size = {"gsd_0.3m": 320, "gsd_2m": 48}.get(shift, 96)
    assert case.data.shape == (3, size, size) and case.valid.shape == (size, size)
    assert case.data.dtype == (np.uint16 if shift.startswith("uint16") else np.uint8)
    if shift not in ("clean", "bgr_bands_321", "bgr_undeclared"):
        assert case.data.dtype != np.uint8 or not np.array_equal(case.data, t.image)
    path = write_case(tmp_path / "case.tif", case)
    with rasterio.open(path) as src:
        assert src.crs.to_epsg() == 26986 and src.res == (case.gsd_m, case.gsd_m)
        np.testing.assert_array_equal(src.read(), case.data)
        np.testing.assert_array_equal(src.dataset_mask() > 0, case.valid)
    again = make_case(t, shift, 1.0, np.random.default_rng(0))
    np.testing.assert_array_equal(again.data, case.data)


def test_bgr_file_declared_with_bands_is_the_clean_raster_in_the_engine():
    t = tile()
    case = make_case(t, "bgr_bands_321", 1.0, np.random.default_rng(0))
    np.testing.assert_array_equal(case.data[[2, 1, 0]], t.image)
    assert case.bands == [3, 2, 1]
    assert make_case(t, "bgr_undeclared", 1.0, np.random.default_rng(0)).bands is None


def test_label_on_grid_is_exact_on_the_same_grid_and_averages_on_a_coarser_one():
    t = tile()
    from training.robustness import _transform

    same, valid = label_on_grid(t.mask, t.valid, 1.0, (96, 96), _transform(1.0))
    np.testing.assert_array_equal(same, t.mask)
    np.testing.assert_array_equal(valid, t.valid)
    coarse, _ = label_on_grid(t.mask, t.valid, 1.0, (48, 48), _transform(2.0))
    assert abs(coarse.mean() - t.mask.mean()) < 0.05


def test_suite_runs_the_engine_on_each_shift_and_out_of_domain_set(road_dataset, tiny_checkpoint):
    rows = []
    result = run_suite(road_dataset, tiny_checkpoint, "torch", ["clean", "bgr_bands_321", "uint16_11bit", "gsd_2m"],
                       limit=2, ood={"same-at-0.5m": (road_dataset, 0.5)}, on_row=rows.append)
    assert [(r["set"], r["shift"]) for r in result["rows"]] == [
        ("held-out", "clean"), ("held-out", "bgr_bands_321"), ("held-out", "uint16_11bit"), ("held-out", "gsd_2m"),
        ("same-at-0.5m", "clean")]
    assert rows == result["rows"] and result["backend"] == "torch"
    clean, bgr = result["rows"][0], result["rows"][1]
    assert clean["tiles"] == 2 and {"iou", "relaxed_f1", "apls"} <= clean.keys()
    assert bgr["iou"] == pytest.approx(clean["iou"])  # the same pixels once the bands are declared
    assert any("resampled" in n for n in result["rows"][3]["notes"])
    assert any("stretched" in n for n in result["rows"][2]["notes"])
    assert any("resampled" in n for n in result["rows"][4]["notes"])  # 0.5 m pixels read at the model's 1 m
    table = format_table(result)
    assert "gsd_2m" in table and "dIoU" in table
    assert format_table(result, markdown=True).startswith("| set | shift |")


def test_only_picks_tiles_and_unknown_ones_are_named(road_dataset, tiny_checkpoint):
    result = run_suite(road_dataset, tiny_checkpoint, "torch", ["clean"], only=["tile1"])
    assert [r["name"] for r in result["rows"][0]["per_tile"]] == ["tile1"]
    with pytest.raises(ValueError, match="tile9"):
        run_suite(road_dataset, tiny_checkpoint, "torch", ["clean"], only=["tile9"])


def test_parse_ood_and_held_out_stems():
    assert parse_ood(["shanghai=../a/b:0.76"]) == {"shanghai": (Path("../a/b"), 0.76)}
    with pytest.raises(ValueError, match="NAME=DIR:GSD"):
        parse_ood(["shanghai=../a/b"])
    # the bundled model's held-out tiles of every set it was trained or validated on
    stems = held_out_stems(None)
    assert {"16228945_15", "23579125_15"} <= set(stems) and len(stems) == len(set(stems)) > 8


def test_cli_writes_table_and_json_and_refuses_unknown_shifts(road_dataset, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["robustness", "--data", str(road_dataset), "--model", str(tiny_checkpoint), "--backend", "torch",
                 "--shifts", "clean,dark", "--tiles", "1", "--json", str(out)]) == 0
    assert [r["shift"] for r in json.loads(out.read_text())["rows"]] == ["clean", "dark"]
    assert "dark" in capsys.readouterr().out
    assert main(["robustness", "--data", str(road_dataset), "--shifts", "fog"]) == 2
    assert "shifts fog: unknown shift" in capsys.readouterr().err


@needs_shared_data
@pytest.mark.slow
def test_bundled_model_on_a_real_held_out_tile():
    stem = held_out_stems(None)[0]
    result = run_suite(SHARED_DATA, None, "auto", ["clean", "bgr_bands_321", "bgr_undeclared", "cast_warm"],
                       only=[stem])
    clean, bgr, wrong, warm = result["rows"]
    assert clean["iou"] > 0.4 and clean["apls"] > 0.3
    assert bgr["iou"] == pytest.approx(clean["iou"], abs=1e-9)
    assert wrong["iou"] < clean["iou"] - 0.2  # forgetting `bands` on a BGR file is what the suite shows
    tiles = {t.name for t in load_tiles(SHARED_DATA)}
    assert len(set(held_out_stems(None)) & tiles) == 8  # the Massachusetts ones (the others are other sets')
    # normalisation "auto" maps the cast back: about the clean figure (the blended model: 0.454 vs 0.449)
    assert abs(warm["iou"] - clean["iou"]) <= 0.02
