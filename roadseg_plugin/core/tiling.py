"""Overlapping tile grid, blending window and the whole-array tiled predictor.

The grid and the window are shared by `predict_array` (whole images, used by validation and
evaluation) and the streaming raster engine, so both blend tiles identically.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from .errors import Cancelled

PredictBatch = Callable[[np.ndarray], np.ndarray]  # (N, C, t, t) float32 -> (N, t, t) probabilities


def tile_origins(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets covering [0, length) with tiles of `tile`; the last tile ends at `length`."""
    if length <= tile:
        return [0]
    origins = list(range(0, length - tile, stride))
    origins.append(length - tile)
    return origins


def blend_window(tile: int, overlap: int) -> np.ndarray:
    """Weights that fall smoothly to near zero over `overlap` pixels at each tile border.

    Overlapping tiles weighted this way sum to a smooth surface, so predictions near a
    tile's border (which see zero padding) barely count and no seams appear.
    """
    ramp = np.ones(tile, dtype=np.float32)
    if overlap > 0:
        edge = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
        edge = 0.5 - 0.5 * np.cos(np.pi * edge)  # raised cosine, never exactly zero
        ramp[:overlap] = edge
        ramp[-overlap:] = edge[::-1]
    return np.outer(ramp, ramp).astype(np.float32)


def iter_batches(items: list, batch_size: int) -> Iterator[list]:
    for i in range(0, len(items), batch_size):
        yield items[i:i + batch_size]


def predict_array(image: np.ndarray, predict_batch: PredictBatch, tile: int, overlap: int,
                  batch_size: int = 8, on_progress: Callable[[float], None] | None = None,
                  is_cancelled: Callable[[], bool] | None = None) -> np.ndarray:
    """Predict a whole (C, H, W) normalised image; returns (H, W) float32 probabilities.

    The image is reflection-padded by half the overlap (and up to one tile when smaller), so
    raster edges are predicted from context like any interior pixel.
    """
    _, h, w = image.shape
    margin = overlap // 2
    pad_h = max(margin, tile - h - margin)
    pad_w = max(margin, tile - w - margin)
    padded = np.pad(image, ((0, 0), (margin, pad_h), (margin, pad_w)), mode="reflect")
    ph, pw = padded.shape[1:]
    window = blend_window(tile, overlap)
    acc = np.zeros((ph, pw), dtype=np.float32)
    weight = np.zeros((ph, pw), dtype=np.float32)
    stride = tile - overlap
    origins = [(r, c) for r in tile_origins(ph, tile, stride) for c in tile_origins(pw, tile, stride)]
    done = 0
    for batch in iter_batches(origins, batch_size):
        if is_cancelled is not None and is_cancelled():
            raise Cancelled()
        tiles = np.stack([padded[:, r:r + tile, c:c + tile] for r, c in batch])
        probs = predict_batch(np.ascontiguousarray(tiles, dtype=np.float32))
        for (r, c), p in zip(batch, probs):
            acc[r:r + tile, c:c + tile] += p * window
            weight[r:r + tile, c:c + tile] += window
        done += len(batch)
        if on_progress is not None:
            on_progress(done / len(origins))
    out = acc / np.maximum(weight, 1e-6)
    return out[margin:margin + h, margin:margin + w]
