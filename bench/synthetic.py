"""Synthetic inputs for the benchmarks: a road-like RGB GeoTIFF of any size, a stand-in model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

ROWS_PER_WRITE = 512


def _texture(rng: np.random.Generator, size: int = 1024) -> np.ndarray:
    """(3, size, size) uint8 fields-and-trees texture, tiled over the whole raster."""
    cells = (size // 32, size // 32)
    coarse = rng.normal(0, 18, (1, *cells)) + rng.normal(0, 5, (3, *cells))  # fields: brightness, some hue
    coarse = coarse.repeat(32, axis=1).repeat(32, axis=2)
    base = np.array([70.0, 105.0, 60.0])[:, None, None] + coarse + rng.normal(0, 10, (3, size, size))
    return np.clip(base, 0, 254).astype(np.uint8)


def _near(values: np.ndarray, lines: np.ndarray, half_width: float) -> np.ndarray:
    """Whether each value lies within `half_width` of one of the sorted `lines`."""
    i = np.clip(np.searchsorted(lines, values), 1, len(lines) - 1)
    return np.minimum(np.abs(values - lines[i - 1]), np.abs(values - lines[i])) <= half_width


def _road_mask(rows: np.ndarray, cols: np.ndarray, lines: dict[str, np.ndarray], width: int) -> np.ndarray:
    """Horizontal, vertical and diagonal roads crossing the block rows x cols."""
    mask = _near(rows, lines["rows"], width / 2)[:, None] | _near(cols, lines["cols"], width / 2)[None, :]
    mask |= _near(cols[None, :] - rows[:, None], lines["diagonals"], width * 0.7)
    return mask


def write_synthetic_raster(path: str | Path, size: int, gsd_m: float = 1.0, seed: int = 0) -> Path:
    """Write a size x size RGB GeoTIFF (UTM 31N, JPEG-compressed tiles like most orthophotos).

    It is generated and written one band of rows at a time, so any size fits in memory.
    """
    rng = np.random.default_rng(seed)
    texture = _texture(rng)
    spacing = 600
    lines = {key: np.sort(rng.uniform(0, size, max(2, size // spacing))) for key in ("rows", "cols")}
    lines["diagonals"] = np.sort(rng.uniform(-size, size, max(2, size // (4 * spacing))))
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32631",
                   transform=from_origin(500000.0, 6000000.0 + size * gsd_m, gsd_m, gsd_m), tiled=True,
                   blockxsize=512, blockysize=512, compress="jpeg", photometric="ycbcr", jpeg_quality=90,
                   bigtiff="if_safer")
    cols = np.arange(size)
    t = texture.shape[1]
    with rasterio.open(path, "w", **profile) as dst:
        for r0 in range(0, size, ROWS_PER_WRITE):
            rows = np.arange(r0, min(r0 + ROWS_PER_WRITE, size))
            block = texture[:, rows[:, None] % t, cols[None, :] % t]
            road = _road_mask(rows, cols, lines, width=7)
            block[:, road] = np.array([172, 168, 160], np.uint8)[:, None]
            dst.write(block, window=((r0, r0 + rows.size), (0, size)))
    return Path(path)


def write_standin_checkpoint(path: str | Path, tile: int = 512, overlap: int = 32) -> Path:
    """A tiny (depth-2, base-4) untrained U-Net with the bundled model's tile geometry."""
    import torch

    from roadseg_plugin.core.checkpoint import ModelMeta, save_checkpoint
    from roadseg_plugin.core.unet import build_model

    torch.manual_seed(0)
    config = {"in_channels": 3, "base_channels": 4, "depth": 2}
    save_checkpoint(path, build_model("unet", **config), ModelMeta(arch_config=config, tile=tile, overlap=overlap))
    return Path(path)
