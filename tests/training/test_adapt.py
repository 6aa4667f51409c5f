"""adapt-bench's choice of tiles: the labelled ones are never scored, the model's held-out tiles
are scored when it has some, and a set the model only validated on is split."""
from __future__ import annotations

import numpy as np

from training.adapt import pick
from training.datasets import Tile


def _tiles(n: int) -> list[Tile]:
    mask = np.eye(16, dtype=bool)
    return [Tile(f"t{i}", np.zeros((3, 16, 16), np.uint8), mask, np.ones((16, 16), bool), 1.0) for i in range(n)]


def test_the_models_held_out_tiles_are_scored_and_never_labelled():
    tiles = _tiles(10)
    chosen, scored = pick(tiles, ["t1", "t2"], labelled=8, seed=0)
    assert [t.name for t in scored] == ["t1", "t2"] and len(chosen) == 8
    assert not {t.name for t in chosen} & {"t1", "t2"}


def test_a_set_held_out_whole_is_split_into_labelled_and_scored():
    tiles = _tiles(10)
    chosen, scored = pick(tiles, [t.name for t in tiles], labelled=8, seed=0)
    assert len(chosen) == 5 and len(scored) == 5 and not {t.name for t in chosen} & {t.name for t in scored}
    chosen, scored = pick(tiles, [], labelled=3, seed=0)
    assert len(chosen) == 3 and len(scored) == 7
