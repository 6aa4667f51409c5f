"""APLS on drawn masks: identical, empty, cut, shifted, symmetric, sampled, valid areas."""
from __future__ import annotations

import numpy as np
import pytest

from roadseg_plugin.core.apls import apls, apls_scores


def road(h: int = 100, w: int = 420, c0: int = 10, c1: int = 410) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    mask[47:54, c0:c1] = True
    return mask


def grid(size: int = 300) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    for k in range(40, size - 20, 70):
        mask[k - 3:k + 4, 15:size - 15] = True
        mask[15:size - 15, k - 3:k + 4] = True
    return mask


@pytest.mark.parametrize("make", [road, grid])
def test_identical_masks_score_one(make):
    assert apls(make(), make()) == 1.0


def test_empty_cases():
    empty = np.zeros((100, 420), bool)
    assert apls(road(), empty) == 0.0
    assert apls(empty, road()) == 0.0
    assert apls(empty, empty) == 1.0


def test_cut_in_the_middle_of_a_road():
    """Truth skeleton runs ~col 12..407: control nodes at ~12, 62, ..., 362 and the end ~407.

    The node at ~212 falls in the cut (cols 205-214) and cannot be snapped; 4 nodes lie on
    each side. Of the 9 * 8 ordered pairs only the 2 * 4 * 3 same-side pairs keep their
    length, so truth -> proposal = 24 / 72 = 1/3. Each proposal piece matches the truth
    exactly, and pairs across the cut are not connected in the proposal (not scored), so
    proposal -> truth = 1. APLS = harmonic mean(1/3, 1) = 0.5.
    """
    cut = road()
    cut[:, 205:215] = False
    total, gt_to_prop, prop_to_gt = apls_scores(road(), cut)
    assert gt_to_prop == pytest.approx(1 / 3, abs=1e-9)
    assert prop_to_gt == pytest.approx(1.0, abs=0.01)
    assert total == pytest.approx(0.5, abs=0.005)
    small_cut = road()
    small_cut[:, 300:303] = False  # a narrow cut near the end hurts fewer pairs
    assert total < apls(road(), small_cut) < 1.0


def test_symmetric():
    cut = road()
    cut[:, 205:215] = False
    a, b = apls_scores(road(), cut), apls_scores(cut, road())
    assert a[0] == b[0]
    assert (a[1], a[2]) == (b[2], b[1])
    g = grid()
    g[100:140, :] = False
    assert apls(grid(), g) == apls(g, grid())


def test_snapping_buffer():
    shifted = np.roll(road(), 2, axis=0)
    assert apls(road(), shifted) == pytest.approx(1.0, abs=0.01)  # within max_snap_px: same paths
    far = np.roll(road(), 8, axis=0)
    assert apls(road(), far) == 0.0
    assert apls(road(), far, max_snap_px=10) == pytest.approx(1.0, abs=0.01)


def test_missing_side_roads_lower_the_score_in_one_direction():
    partial = grid()
    partial[:, 200:] = False
    partial |= grid() & (np.arange(300) < 60)[:, None]  # keep a connected strip
    total, gt_to_prop, prop_to_gt = apls_scores(grid(), partial)
    assert gt_to_prop < prop_to_gt
    assert 0.0 < total < 1.0


def test_sampling_is_seeded_and_bounded():
    g = grid()
    cut = g.copy()
    cut[:, 148:152] = False
    first = apls(g, cut, max_nodes=20, node_spacing_px=10, seed=1)
    assert first == apls(g, cut, max_nodes=20, node_spacing_px=10, seed=1)
    assert 0.0 < first < 1.0
    assert apls(g, g, max_nodes=20, node_spacing_px=10) == 1.0


def test_invalid_area_is_ignored():
    cut = road()
    cut[:, 205:215] = False
    valid = np.ones_like(cut)
    valid[:, 200:220] = False  # the cut lies in no-data: both sides lose it
    assert apls(road(), cut, valid) == 1.0
    assert apls(road(), cut) < 0.6


def test_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        apls(road(), road(w=400))
