"""Does no-data next to roads cost roads? A tile alone against the same tile with a no-data
collar or hole, both through the real engine.

Orthophoto mosaics have no-data collars and holes; the engine feeds each no-data pixel to the
model as the nearest valid one (`normalise.fill_nodata`), and training puts such areas into its crops
(`datasets.nodata_shape`). `compare` writes the tile alone, and the tile inside a white (no-data)
border of `border` px or with a white square hole, as georeferenced GeoTIFFs, segments each with
`segment_raster`, and scores both against the label on the tile's own pixels (the hole left out
of both), so the two IoUs differ only by what the no-data did.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import rasterio

from roadseg_plugin.core.engine import segment_raster
from roadseg_plugin.core.metrics import PixelCounts, pixel_counts

from .datasets import Tile
from .robustness import ORIGIN, Case, label_on_grid, write_case

KINDS = ("border", "hole")


def with_nodata(tile: Tile, kind: str, border: int = 64) -> tuple[Tile, tuple[int, int], np.ndarray]:
    """(the tile with no-data, the offset of the tile's pixels in it, where the tile's own pixels
    are no-data now): a white `border` px collar all round, or a white square hole of a third of
    the tile's side in its middle."""
    if kind == "border":
        c, h, w = tile.image.shape
        image = np.full((c, h + 2 * border, w + 2 * border), 255, np.uint8)
        image[:, border:border + h, border:border + w] = tile.image
        valid = np.zeros(image.shape[1:], bool)
        valid[border:border + h, border:border + w] = tile.valid
        mask = np.zeros(image.shape[1:], bool)
        mask[border:border + h, border:border + w] = tile.mask
        return Tile(tile.name, image, mask, valid, tile.gsd_m), (border, border), np.zeros(tile.shape, bool)
    if kind == "hole":
        h, w = tile.shape
        side = min(h, w) // 3
        hole = np.zeros((h, w), bool)
        hole[(h - side) // 2:(h + side) // 2, (w - side) // 2:(w + side) // 2] = True
        image = tile.image.copy()
        image[:, hole] = 255
        return Tile(tile.name, image, tile.mask, tile.valid & ~hole, tile.gsd_m), (0, 0), hole
    raise ValueError(f"unknown no-data kind {kind!r}; valid: {', '.join(KINDS)}")


def _probabilities(tile: Tile, gsd_m: float, origin: tuple[float, float], model: str | Path | None,
                   work: Path) -> tuple[np.ndarray, rasterio.Affine, tuple[int, int]]:
    src = write_case(work / f"{tile.name}_{origin[0]:.0f}.tif", Case(tile.image, gsd_m, tile.valid), origin)
    result = segment_raster(src, work / "prob.tif", model, device="cpu")
    with rasterio.open(result.path) as out:
        return out.read(1).astype(np.float32) / 255, out.transform, (out.height, out.width)


def compare(tile: Tile, gsd_m: float, kind: str, model: str | Path | None = None,
            border: int = 64) -> tuple[PixelCounts, PixelCounts]:
    """(counts alone, counts with no-data) of `model` on `tile`, on the tile's own pixels less
    any hole, at the model's threshold, through the engine (see the module notes)."""
    from roadseg_plugin.core.params import read_model_info

    threshold = read_model_info(model).threshold
    padded, (dr, dc), hole = with_nodata(tile, kind, border)
    counts = []
    with tempfile.TemporaryDirectory(prefix="roadseg_nodata_") as tmp:
        for case, origin in ((tile, ORIGIN), (padded, (ORIGIN[0] - dc * gsd_m, ORIGIN[1] + dr * gsd_m))):
            prob, transform, shape = _probabilities(case, gsd_m, origin, model, Path(tmp))
            # the tile's own label and valid pixels (less the hole), placed at ORIGIN in both runs,
            # on this run's output grid: pixels of the border fall outside and count in neither
            truth, valid = label_on_grid(tile.mask, tile.valid & ~hole, gsd_m, shape, transform)
            counts.append(pixel_counts(prob >= threshold, truth, valid))
    return counts[0], counts[1]


def road_crop(tile: Tile, size: int = 512) -> Tile:
    """The `size` px window of `tile` (on a half-size grid) with the most labelled road among
    the fully valid ones (else the most valid): a crop worth segmenting."""
    h, w = tile.shape
    if h <= size and w <= size:
        return tile
    best, where = (-1.0, -1.0), (0, 0)
    for r in range(0, max(1, h - size + 1), size // 2):
        for c in range(0, max(1, w - size + 1), size // 2):
            valid = tile.valid[r:r + size, c:c + size]
            key = (float(valid.mean() >= 0.999), float((tile.mask[r:r + size, c:c + size] & valid).sum()))
            if key > best:
                best, where = key, (r, c)
    r, c = where
    return Tile(tile.name, tile.image[:, r:r + size, c:c + size], tile.mask[r:r + size, c:c + size],
                tile.valid[r:r + size, c:c + size], tile.gsd_m, tile.source)
