import json

import numpy as np
import pytest

from roadseg_plugin.core.checkpoint import BUNDLED_MODEL
from tests.conftest import SHARED_DATA, needs_shared_data
from training.cli import main
from training.datasets import load_tiles
from training.evaluate import evaluate_tiles

KEYS = {"iou", "precision", "recall", "f1", "relaxed_precision", "relaxed_recall", "relaxed_f1", "apls",
        "threshold", "tiles", "per_tile"}


def test_evaluate_tiles_micro_averages_with_a_known_predictor(road_dataset):
    tiles = load_tiles(road_dataset)
    # A "model" that returns the truth shifted by 2 px: exact F1 < 1, relaxed F1 == 1.
    truth = {id(t.image): t.mask for t in tiles}
    result = evaluate_tiles(tiles, lambda img, valid: np.roll(truth[id(img)], 2, axis=1).astype(np.float32), 0.5)
    assert result["tiles"] == 4 and [r["name"] for r in result["per_tile"]] == [t.name for t in tiles]
    assert result["f1"] < 0.9 and result["relaxed_f1"] == pytest.approx(1.0, abs=0.02)
    assert set(result) == KEYS and result["apls"] > 0.9  # a 2 px shift keeps the topology


def test_evaluate_tiles_empty_prediction_scores_zero(road_dataset):
    tiles = load_tiles(road_dataset)
    result = evaluate_tiles(tiles, lambda img, valid: np.zeros(img.shape[1:], np.float32), 0.5)
    assert result["iou"] == 0 and result["apls"] == 0 and result["relaxed_recall"] == 0


@needs_shared_data
@pytest.mark.skipif(not BUNDLED_MODEL.exists(), reason="bundled model not present")
def test_evaluate_bundled_model_on_real_tiles(tmp_path):
    data = tmp_path / "two"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
        for name in ("19678630_15.png", "17728720_15.png"):
            (data / sub / name).symlink_to(SHARED_DATA / sub / name)
    out = tmp_path / "out.json"
    assert main(["evaluate", "--data", str(data), "--json", str(out), "--device", "cpu"]) == 0
    result = json.loads(out.read_text())
    assert KEYS <= set(result) and result["tiles"] == 2
    # measured with the shipped model: relaxed F1 0.84, IoU 0.56, APLS 0.62; well below means a regression
    assert result["relaxed_f1"] > 0.75 and result["iou"] > 0.45 and result["apls"] > 0.4
