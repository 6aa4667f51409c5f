import numpy as np
import pytest

from roadseg_plugin.core.metrics import PixelCounts, best_threshold, pixel_counts


def test_exact_counts_hand_computed():
    true = np.array([[1, 1, 0, 0]], bool)
    pred = np.array([[1, 0, 1, 0]], bool)
    m = pixel_counts(pred, true, relax_px=0).metrics()
    assert m["iou"] == pytest.approx(1 / 3)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(0.5)


def test_invalid_pixels_are_ignored():
    true = np.array([[1, 1, 0, 0]], bool)
    pred = np.array([[1, 0, 1, 0]], bool)
    valid = np.array([[1, 1, 0, 1]], bool)  # hides the false positive
    m = pixel_counts(pred, true, valid, relax_px=0).metrics()
    assert m["precision"] == 1.0 and m["recall"] == 0.5 and m["iou"] == 0.5


def test_relaxed_tolerates_three_pixel_offsets():
    true = np.zeros((20, 20), bool)
    true[:, 10] = True
    pred = np.zeros((20, 20), bool)
    pred[:, 13] = True  # 3 px away: counts as correct
    m = pixel_counts(pred, true).metrics()
    assert m["f1"] == 0.0
    assert m["relaxed_precision"] == 1.0 and m["relaxed_recall"] == 1.0 and m["relaxed_f1"] == 1.0
    pred[:, 13] = False
    pred[:, 14] = True  # 4 px away: does not
    m = pixel_counts(pred, true).metrics()
    assert m["relaxed_precision"] == 0.0 and m["relaxed_recall"] == 0.0


def test_relaxed_asymmetric_case():
    true = np.zeros((1, 20), bool)
    true[0, 0:2] = True  # 2 true pixels
    pred = np.zeros((1, 20), bool)
    pred[0, [1, 4, 10]] = True  # 1 and 4 within 3 px of a true pixel, 10 is not
    m = pixel_counts(pred, true).metrics()
    assert m["relaxed_precision"] == pytest.approx(2 / 3)
    assert m["relaxed_recall"] == pytest.approx(1.0)
    assert m["relaxed_f1"] == pytest.approx(2 * (2 / 3) / (2 / 3 + 1))


def test_micro_average_adds_counts_not_ratios():
    a = pixel_counts(np.array([[1, 1]], bool), np.array([[1, 1]], bool))
    b = pixel_counts(np.array([[1, 0, 0, 0, 0, 0]], bool), np.array([[0, 1, 1, 1, 1, 1]], bool), relax_px=0)
    total = (a + b).metrics()
    assert total["iou"] == pytest.approx(2 / 8)  # tp=2, fp=1, fn=5
    assert isinstance(a + b, PixelCounts)


def test_empty_prediction_and_truth_give_zero_not_nan():
    z = np.zeros((4, 4), bool)
    assert all(v == 0.0 for v in pixel_counts(z, z).metrics().values())


def test_best_threshold_separates_scores():
    prob = np.array([0.1, 0.2, 0.3, 0.62, 0.7, 0.9])
    true = np.array([0, 0, 0, 1, 1, 1], bool)
    t, f1 = best_threshold(prob, true)
    assert 0.3 < t <= 0.62 and f1 == 1.0
