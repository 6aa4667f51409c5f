"""The data side of fine-tuning from drawn lines: the split by area, the pooled figures that
decide keep-or-revert, the undrawn-roads check and the replay crops.

Validation holds back WHOLE AREAS: per raster, tiles from its end (bottom rows, then right
columns), rasters in turn (starting from each raster in turn). The tiles held back are those whose share
of the labelled road pixels comes closest to the asked fraction between `MIN_SIDE_SHARE` and
`MAX_VAL_SHARE` (a tile holding most of the roads never goes to validation).

Figures are pooled over the whole validation area: pixel counts summed over its tiles (IoU,
relaxed F1), and APLS averaged with each tile weighted by its labelled road length, so that
one nearly empty tile cannot decide alone.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from roadseg_plugin.core.apls import apls
from roadseg_plugin.core.metrics import PixelCounts, pixel_counts

from .datasets import Tile, load_tiles

MIN_SIDE_SHARE = 0.15  # of the labelled road pixels, at least on each side of the split
MAX_VAL_SHARE = 0.5  # validation never holds more than half of the drawn road
UNDRAWN_PX = 10  # start-model roads farther than this from any drawn road count as undrawn
REPLAY_VAL_TILES = 2
KEYS = ("iou", "relaxed_f1", "apls")


def tile_place(name: str) -> tuple[str, int, int]:
    """(raster, row, col) of a `make_label_dataset` tile name `ii_stem_rrrrr_ccccc`."""
    head, row, col = name.rsplit("_", 2)
    return head.split("_", 1)[0], int(row), int(col)


def road_px(tiles: list[Tile]) -> int:
    return sum(int((t.mask & t.valid).sum()) for t in tiles)


def split_by_area(tiles: list[Tile], val_fraction: float) -> tuple[list[Tile], list[Tile]]:
    """(train, validation) by whole areas, validation's share of the road pixels as close to
    `val_fraction` as the tiles allow within `MIN_SIDE_SHARE`..`MAX_VAL_SHARE` (see the module notes)."""
    if len(tiles) < 2:
        raise ValueError("fine-tuning needs at least 2 labelled tiles")
    by_raster: dict[str, list[Tile]] = {}
    for t in sorted(tiles, key=lambda t: tile_place(t.name)):
        by_raster.setdefault(tile_place(t.name)[0], []).append(t)
    groups = [list(reversed(group)) for group in by_raster.values()]  # each raster from its end
    total = max(1, road_px(tiles))
    best: tuple[float, list[Tile], int] = (np.inf, [], 1)
    for first in range(len(groups)):  # rasters in turn, starting from each one
        order, queues = [], [list(g) for g in groups[first:] + groups[:first]]
        while queues:
            queue = queues.pop(0)
            order.append(queue.pop(0))
            if queue:
                queues.append(queue)
        for n in range(1, len(order)):
            share = road_px(order[:n]) / total
            ok = MIN_SIDE_SHARE <= share <= MAX_VAL_SHARE
            gap = abs(share - val_fraction) + (0 if ok else 1)  # unbalanced only when nothing else is possible
            if gap < best[0] - 1e-12:
                best = (gap, order, n)
    _, order, best_n = best
    while best_n > 1 and not any((t.mask & t.valid).any() for t in order[best_n:]):
        best_n -= 1  # training keeps some road whatever the split
    val = order[:best_n]
    return [t for t in tiles if t not in val], val


def pooled_figures(tiles: list[Tile], probs: list[np.ndarray], threshold: float) -> dict[str, float]:
    """IoU, relaxed F1 (and the other pixel figures) summed over the area, APLS weighted by road."""
    counts, scores, weights = PixelCounts(), [], []
    for t, prob in zip(tiles, probs, strict=True):
        pred = prob >= threshold
        counts = counts + pixel_counts(pred, t.mask, t.valid)
        scores.append(apls(t.mask, pred, t.valid))
        weights.append(float((t.mask & t.valid).sum()))
    figures = counts.metrics()
    figures["apls"] = float(np.average(scores, weights=weights)) if sum(weights) else float(np.mean(scores or [0]))
    return figures


def score(figures: dict[str, float]) -> float:
    """The one number keep-or-revert compares: the mean of IoU, relaxed F1 and APLS."""
    return float(np.mean([figures[k] for k in KEYS]))


def undrawn_share(tiles: list[Tile], probs: list[np.ndarray], threshold: float) -> float:
    """Share of the predicted road pixels (valid) farther than `UNDRAWN_PX` from any labelled road."""
    from scipy import ndimage

    far = total = 0
    for t, prob in zip(tiles, probs, strict=True):
        pred = (prob >= threshold) & t.valid
        distance = ndimage.distance_transform_edt(~t.mask) if t.mask.any() else np.full(t.shape, np.inf)
        far += int((pred & (distance > UNDRAWN_PX)).sum())
        total += int(pred.sum())
    return far / total if total else 0.0


def write_tiles(tiles: list[Tile], folder: Path) -> Path:
    """A dataset folder (images/ with an internal no-data mask, masks/) of in-memory tiles."""
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for t in tiles:
        h, w = t.shape
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
            with rasterio.open(folder / "images" / f"{t.name}.tif", "w", driver="GTiff", width=w, height=h,
                               count=t.image.shape[0], dtype="uint8") as dst:
                dst.write(t.image)
                dst.write_mask(t.valid.astype(np.uint8) * np.uint8(255))
        with rasterio.open(folder / "masks" / f"{t.name}.tif", "w", driver="GTiff", width=w, height=h, count=1,
                           dtype="uint8") as dst:
            dst.write(t.mask.astype(np.uint8)[None] * np.uint8(255))
    return folder


def replay_sets(folder: Path, meta: Any, count: int, size: int, seed: int) -> tuple[list[Tile], list[Tile]]:
    """(training crops, validation tiles) of the start model's own data in `folder`: up to
    `REPLAY_VAL_TILES` of the validation tiles its metadata names (else the last tiles) whole,
    and `count` random `size` px crops (mostly valid) of the other tiles."""
    from .robustness import validation_stems

    tiles = load_tiles(folder, bands=meta.in_channels)
    named = set(validation_stems(meta))
    val = [t for t in tiles if t.name in named][:REPLAY_VAL_TILES] or tiles[-REPLAY_VAL_TILES:]
    rest = [t for t in tiles if t not in val] or tiles
    return random_crops(rest, count, size, seed), val


def random_crops(source: list[Tile], count: int, size: int, seed: int) -> list[Tile]:
    rng = np.random.default_rng(seed)
    crops: list[Tile] = []
    for attempt in range(count * 10):
        if len(crops) == count:
            break
        t = source[int(rng.integers(len(source)))]
        h, w = t.shape
        s = min(size, h, w)
        r, c = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        window = np.s_[r:r + s, c:c + s]
        if t.valid[window].mean() > 0.8:
            crops.append(Tile(f"replay_{t.name}_{r}_{c}_{attempt}", t.image[:, r:r + s, c:c + s].copy(),
                              t.mask[window].copy(), t.valid[window].copy(), t.gsd_m))
    return crops


def fmt(figures: dict[str, float]) -> str:
    return ", ".join(f"{k} {figures[k]:.3f}" for k in KEYS)


Say = Callable[[str], None]
