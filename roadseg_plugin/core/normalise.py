"""Raw band values -> model input: the checkpoint's scale, mean and std, and no-data zeroing.

Shared by the raster engine, quantisation calibration, training validation and evaluation,
so every path feeds the model exactly the same numbers. Imports neither torch nor rasterio.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .checkpoint import ModelMeta


def normalise(image: np.ndarray, meta: ModelMeta) -> np.ndarray:
    """(C, H, W) raw band values -> float32 model input, per-band mean/std of the checkpoint."""
    x = image.astype(np.float32) * np.float32(meta.input_scale)
    mean = np.asarray(meta.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(meta.std, dtype=np.float32)[:, None, None]
    return (x - mean) / std


class InputNormaliser:
    """Raw band values -> model input, with invalid pixels set to 0 (the training mean).

    uint8 values go through the checkpoint's scale, mean and std via a lookup table. Other
    types are first stretched per band from `stretch[c] = (low, high)` to 0..255.

    Args:
        meta: the model's metadata (input_scale, mean, std).
        dtype: numpy dtype name of the raw values.
        stretch: (C, 2) per-band value limits, required unless dtype is uint8.
    """

    def __init__(self, meta: ModelMeta, dtype: str, stretch: np.ndarray | None = None) -> None:
        if stretch is None and dtype != "uint8":
            raise ValueError(f"{dtype} values need per-band stretch limits")
        self.meta, self.stretch = meta, stretch
        self.lut = None
        if stretch is None:
            levels = np.arange(256, dtype=np.float32)[None, :, None]
            self.lut = normalise(np.repeat(levels, meta.in_channels, axis=0), meta)[:, :, 0]

    def __call__(self, raw: np.ndarray, valid: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(C, h, w) raw values and (h, w) valid mask -> (C, h, w) float32 (into `out` if given)."""
        if out is None:
            out = np.empty(raw.shape, dtype=np.float32)
        if self.lut is not None:
            for c in range(raw.shape[0]):
                np.take(self.lut[c], raw[c], out=out[c])
        else:
            assert self.stretch is not None  # checked in __init__
            lo = self.stretch[:, 0, None, None]
            span = self.stretch[:, 1, None, None] - lo
            scaled = np.clip((raw.astype(np.float32) - lo) * (np.float32(255) / span), 0, 255)
            out[:] = normalise(np.nan_to_num(scaled), self.meta)
        if not valid.all():
            out[:, ~valid] = 0.0
        return out
