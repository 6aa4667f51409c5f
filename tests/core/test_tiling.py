from itertools import pairwise

import numpy as np
import pytest

from roadseg_plugin.core.tiling import blend_window, predict_array, tile_origins


@pytest.mark.parametrize("length,tile,stride", [(100, 32, 24), (32, 32, 24), (20, 32, 24), (1000, 512, 480)])
def test_origins_cover_everything(length, tile, stride):
    origins = tile_origins(length, tile, stride)
    covered = np.zeros(max(length, tile), bool)
    for o in origins:
        covered[o:o + tile] = True
    assert covered[:length].all()
    assert origins[-1] + tile == max(length, tile)
    assert all(b - a <= stride for a, b in pairwise(origins))


def test_window_is_positive_and_peaks_inside():
    w = blend_window(64, 16)
    assert w.min() > 0 and w.max() == pytest.approx(1.0)
    assert w[0, 0] < 0.01 and w[32, 32] == 1.0


def brightness(batch: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-batch.mean(axis=1)))


@pytest.mark.parametrize("shape", [(3, 50, 70), (3, 130, 97), (3, 20, 20), (3, 64, 64)])
def test_pointwise_model_is_reproduced_exactly(shape):
    # A per-pixel "model" must come out unchanged: tiling, padding and blending add nothing.
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    prob = predict_array(image, brightness, tile=32, overlap=8, batch_size=3)
    assert prob.shape == shape[1:]
    np.testing.assert_allclose(prob, brightness(image[None])[0], atol=1e-5)


def test_progress_reaches_one_and_cancel_stops():
    from roadseg_plugin.core.errors import Cancelled

    seen = []
    predict_array(np.zeros((3, 100, 100), np.float32), brightness, 32, 8, on_progress=seen.append)
    assert seen[-1] == 1.0 and seen == sorted(seen)
    with pytest.raises(Cancelled):
        predict_array(np.zeros((3, 100, 100), np.float32), brightness, 32, 8, is_cancelled=lambda: True)
