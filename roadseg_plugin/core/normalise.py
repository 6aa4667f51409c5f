"""Raw band values -> model input: the raster's radiometry, the checkpoint's scale, mean and std,
and no-data filled from the nearest valid pixel (`fill_nodata`).

Shared by the raster engine, quantisation calibration, training (crops and validation) and
evaluation, so every path feeds the model exactly the same numbers. Imports neither torch nor
rasterio.

Radiometric normalisation (`Radiometry`, stored as `meta.extra["normalisation"]`): a model can
carry the per-band 2-98 percentile range of its training rasters (`target`, in 8-bit levels).
Each raster's own 2-98 range is then mapped linearly onto it, band by band, before the mean/std:
- mode "off" (the default, and every checkpoint without the key): 8-bit values go in as they
  are; other types are stretched onto 0-255 (today's behaviour).
- mode "auto": 8-bit rasters are mapped only when their range is far from the training range
  (`distance` above `auto_distance`: dark, hazy or low-contrast imagery, colour casts, another
  sensor's rendering); other types are always mapped onto the training range instead of 0-255.
- mode "always": every raster is mapped.
A raster is what the engine reads (its statistics come from an overview or a sample) and, in
memory, one whole image (`normalise`): a training tile, an evaluation tile.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np


class ModelMeta(Protocol):
    """What this module reads of `model_meta.ModelMeta` (which imports this module, so the
    class itself is not imported here)."""

    mean: list[float]
    std: list[float]
    input_scale: float
    extra: dict[str, Any]

    @property
    def in_channels(self) -> int: ...


NORMALISATION_KEY = "normalisation"
MODES = ("off", "auto", "always")
AUTO_DISTANCE = 1.0  # in units of `tolerance`: outside what 95 % of the training rasters show on some axis
# `features` a training raster shows at most (95th percentile over the bundled model's 43 tiles)
FEATURES = ("contrast", "colour", "shift", "colour_shift")
DEFAULT_TOLERANCE = (0.49, 0.19, 0.13, 0.063)


@dataclass(frozen=True)
class Radiometry:
    """How a model wants each raster's values mapped before its mean/std (see the module notes).

    Attributes:
        mode: "off", "auto" or "always".
        target: per band (low, high) percentiles of the training rasters in 8-bit levels;
            required unless mode is "off".
        low, high: the percentiles measured on each raster (and on the training rasters).
        tolerance: per `FEATURES`, how far the training rasters themselves go (`distance`).
        auto_distance: "auto" maps 8-bit rasters whose `distance` exceeds this.
        source: what `target` was measured on (for people).
    """

    mode: str = "off"
    target: tuple[tuple[float, float], ...] = ()
    low: float = 2.0
    high: float = 98.0
    tolerance: tuple[float, ...] = DEFAULT_TOLERANCE
    auto_distance: float = AUTO_DISTANCE
    source: str = field(default="", compare=False)

    @classmethod
    def from_meta(cls, meta: ModelMeta) -> Radiometry:
        """The model's setting; "off" when its metadata has none (older checkpoints)."""
        return cls.from_dict(meta.extra.get(NORMALISATION_KEY))

    @classmethod
    def from_dict(cls, data: Any) -> Radiometry:
        """Parse `meta.extra["normalisation"]`; raises ValueError naming what is wrong."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise ValueError(f"must be a mapping, not {data!r}")
        target = data.get("target") or ()
        try:
            pairs = tuple((float(lo), float(hi)) for lo, hi in target)
            tolerance = tuple(float(v) for v in data.get("tolerance", DEFAULT_TOLERANCE))
            made = cls(mode=str(data.get("mode", "off")), target=pairs, low=float(data.get("low", 2.0)),
                       high=float(data.get("high", 98.0)), tolerance=tolerance,
                       auto_distance=float(data.get("auto_distance", AUTO_DISTANCE)),
                       source=str(data.get("source", "")))
        except (TypeError, ValueError):
            raise ValueError(f"target must be (low, high) pairs and tolerance {len(FEATURES)} numbers, not "
                             f"{target!r} and {data.get('tolerance')!r}") from None
        made.check()
        return made

    def check(self, bands: int | None = None) -> None:
        """Raises ValueError when the setting cannot be used (for a model of `bands` bands)."""
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if not 0 <= self.low < self.high <= 100:
            raise ValueError(f"percentiles {self.low:g}-{self.high:g} must satisfy 0 <= low < high <= 100")
        if not (math.isfinite(self.auto_distance) and self.auto_distance >= 0):
            raise ValueError(f"auto_distance {self.auto_distance!r} must be a finite number >= 0")
        if len(self.tolerance) != len(FEATURES) or not all(math.isfinite(v) and v > 0 for v in self.tolerance):
            raise ValueError(f"tolerance must be {len(FEATURES)} positive numbers ({', '.join(FEATURES)}), "
                             f"not {list(self.tolerance)!r}")
        if self.mode == "off":
            return
        if not self.target or any(not (0 <= lo < hi <= 255) for lo, hi in self.target):
            raise ValueError(f"mode {self.mode!r} needs target (low, high) levels with 0 <= low < high <= 255, "
                             f"not {list(self.target)!r}")
        if bands is not None and len(self.target) != bands:
            raise ValueError(f"target has {len(self.target)} band(s), the model takes {bands}")

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "target": [list(p) for p in self.target], "low": self.low, "high": self.high,
                "tolerance": list(self.tolerance), "auto_distance": self.auto_distance, "source": self.source}

    def with_mode(self, mode: str) -> Radiometry:
        made = replace(self, mode=mode)
        made.check()
        return made


def training_radiometry(images: Iterable[tuple[np.ndarray, np.ndarray]], mode: str = "auto", low: float = 2.0,
                        high: float = 98.0, quantile: float = 95.0, source: str = "") -> Radiometry:
    """The `Radiometry` of a training set, from (uint8 (C, H, W) image, (H, W) valid) pairs: per band
    the median over the rasters of their (low, high) percentiles (the range a typical training raster
    spans), and per feature the `quantile` of the rasters' own `features` (how far they go)."""
    limits = np.array([band_limits(image, valid, low, high) for image, valid in images])
    if limits.size == 0:
        raise ValueError("no training images to measure")
    target = tuple((float(lo), float(hi)) for lo, hi in np.median(limits, axis=0).round(2))
    spread = np.array([features(lim, target) for lim in limits])
    tolerance = tuple(float(v) for v in np.maximum(np.percentile(spread, quantile, axis=0), 0.01).round(3))
    made = Radiometry(mode, target, low, high, tolerance, AUTO_DISTANCE,
                      source or f"{len(limits)} training rasters (median {low:g}-{high:g} % range)")
    made.check(limits.shape[1])
    return made


def data_valid(image: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """`valid` (all True when None) less the engine's own no-data rules: all-white 8-bit
    pixels and non-finite values (see `readers.read_rows`)."""
    ok = np.ones(image.shape[1:], bool) if valid is None else valid.astype(bool)
    if image.dtype == np.uint8:
        ok = ok & ~np.all(image == 255, axis=0)
    elif image.dtype.kind == "f":
        ok = ok & np.all(np.isfinite(image), axis=0)
    return ok


def band_limits(image: np.ndarray, valid: np.ndarray | None = None, low: float = 2.0,
                high: float = 98.0) -> np.ndarray:
    """(C, 2) float32 per-band percentiles of the valid pixels (as `readers.band_stretch`);
    a band with no spread gets high = low + 1."""
    ok = data_valid(image, valid)
    limits = np.zeros((image.shape[0], 2), dtype=np.float32)
    for i, band in enumerate(image):
        lo, hi = percentiles(band[ok], low, high)
        limits[i] = (lo, hi if hi > lo else lo + 1.0)
    return limits


def percentiles(values: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """`np.percentile(values, [low, high])` (linear interpolation) of a 1-D array; (0, 1) when empty.

    8- and 16-bit integers are counted (one `bincount`) instead of sorted: the same values,
    several times faster on the millions of pixels of a raster's overview.
    """
    if values.size == 0:
        return 0.0, 1.0
    if values.dtype.kind not in "ui" or values.dtype.itemsize > 2:
        lo, hi = np.percentile(values.astype(np.float64), [low, high])
        return float(lo), float(hi)
    offset = int(values.min()) if values.dtype.kind == "i" else 0
    counts = np.bincount((values.astype(np.int64) - offset) if offset else values)
    below = np.cumsum(counts)  # below[v]: how many values are <= v
    found = []
    for q in (low, high):
        position = q / 100 * (values.size - 1)
        first = int(np.floor(position))
        a, b = np.searchsorted(below, [first, min(first + 1, values.size - 1)], side="right")
        found.append(float(a) + (float(b) - float(a)) * (position - first) + offset)
    return found[0], found[1]


def features(limits: np.ndarray, target: Iterable[tuple[float, float]]) -> np.ndarray:
    """How a raster's per-band (low, high) range differs from the training range, on four axes
    (`FEATURES`), from per-band s = log(span / training span) and m = mid-range shift / training span:
    contrast |mean s|, colour balance max |s - mean s|, brightness mean |m|, colour cast max |m - mean m|."""
    t = np.asarray(list(target), dtype=np.float64)
    lim = np.asarray(limits, dtype=np.float64)
    t_span = t[:, 1] - t[:, 0]
    s = np.log(np.maximum(lim[:, 1] - lim[:, 0], 1e-6) / t_span)
    m = (lim.mean(axis=1) - t.mean(axis=1)) / t_span
    return np.array([abs(s.mean()), np.abs(s - s.mean()).max(), np.abs(m).mean(), np.abs(m - m.mean()).max()])


def distance(limits: np.ndarray, target: Iterable[tuple[float, float]],
             tolerance: Iterable[float] = DEFAULT_TOLERANCE) -> float:
    """The largest of a raster's `features` in units of the training rasters' `tolerance`: above 1 it
    is outside what 95 % of them show on some axis. Measured (bundled model): 6 of its 43 training
    tiles and 2 of the 8 held-out ones exceed 1; dark, hazy, low-contrast and colour-cast versions
    of the held-out tiles 1.3-2.7 (median), Shanghai 2.4."""
    return float(np.max(features(limits, target) / np.asarray(list(tolerance), dtype=np.float64)))


@dataclass
class Stretch:
    """Per band, raw values `source` (low, high) map linearly onto `target` (low, high), clipped
    to 0-255; None members mean 8-bit values go in as they are."""

    source: np.ndarray | None = None
    target: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    distance: float | None = None  # how far the raster's ranges lie from the training range (8-bit, "auto")


def choose_stretch(meta: ModelMeta, dtype: str, limits: np.ndarray | None, name: str = "raster") -> Stretch:
    """What to do with a raster of `dtype` whose per-band percentiles are `limits` (measured at the
    model's `Radiometry.low`/`high`; needed unless 8-bit with mode "off"), with a note for the user."""
    radiometry = Radiometry.from_meta(meta)
    if dtype == "uint8" and radiometry.mode == "off":
        return Stretch()
    if limits is None:
        raise ValueError(f"{dtype} values need per-band limits")
    limits = np.asarray(limits, dtype=np.float32)
    shown = ", ".join(f"{lo:g}-{hi:g}" for lo, hi in limits)
    pct = f"{radiometry.low:g}-{radiometry.high:g} percentile"
    if radiometry.mode == "off":
        return Stretch(limits, np.array([[0.0, 255.0]] * len(limits), np.float32),
                       [f"{name}: {dtype} values stretched per band ({pct}: {shown}) to the model's 0-255 input range"])
    target = np.asarray(radiometry.target, dtype=np.float32)
    goal = ", ".join(f"{lo:g}-{hi:g}" for lo, hi in target)
    if dtype != "uint8":
        return Stretch(limits, target, [f"{name}: {dtype} values stretched per band ({pct}: {shown}) onto the "
                                        f"model's training range ({goal})"])
    far = distance(limits, target, radiometry.tolerance)
    if radiometry.mode == "auto" and far <= radiometry.auto_distance:
        return Stretch(distance=far)
    why = (f"far from the model's training imagery (distance {far:.2f} > {radiometry.auto_distance:g})"
           if radiometry.mode == "auto" else "normalisation 'always'")
    return Stretch(limits, target, [f"{name}: band ranges ({pct}: {shown}) {why}; mapped per band onto the "
                                    f"training range ({goal})"], far)


def stretch_values(raw: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(C, ...) raw values mapped per band from `source` to `target` ranges, clipped to 0-255 (float32)."""
    lo = source[:, 0].reshape((-1,) + (1,) * (raw.ndim - 1))
    span = (source[:, 1] - source[:, 0]).reshape(lo.shape)
    t_lo = target[:, 0].reshape(lo.shape)
    t_span = (target[:, 1] - target[:, 0]).reshape(lo.shape)
    scaled = (raw.astype(np.float32) - lo) * (t_span / span) + t_lo
    return np.clip(np.nan_to_num(scaled), 0, 255)


def stretch_lut(stretch: Stretch, bands: int) -> np.ndarray | None:
    """(C, 256) uint8 lookup table of `stretch` for 8-bit values (rounded, as training tiles
    are stored), or None for values that go in as they are."""
    if stretch.source is None or stretch.target is None:
        return None
    levels = np.repeat(np.arange(256, dtype=np.float32)[None], bands, axis=0)
    return np.rint(stretch_values(levels, stretch.source, stretch.target)).astype(np.uint8)


def image_stretch(image: np.ndarray, meta: ModelMeta, valid: np.ndarray | None = None) -> Stretch:
    """The model's `Stretch` for one whole in-memory image (its own statistics)."""
    radiometry = Radiometry.from_meta(meta)
    if image.dtype == np.uint8 and radiometry.mode == "off":
        return Stretch()
    return choose_stretch(meta, image.dtype.name, band_limits(image, valid, radiometry.low, radiometry.high),
                          "image")


def remap_image(image: np.ndarray, meta: ModelMeta, valid: np.ndarray | None = None,
                stretch: Stretch | None = None) -> np.ndarray:
    """An 8-bit image as the model's radiometric normalisation maps it (itself when nothing
    applies): what training crops are cut from. `stretch` defaults to the image's own."""
    stretch = image_stretch(image, meta, valid) if stretch is None else stretch
    lut = stretch_lut(stretch, image.shape[0])
    if lut is None:
        return image
    return np.stack([lut[c][image[c]] for c in range(image.shape[0])])


def standardise(image: np.ndarray, meta: ModelMeta) -> np.ndarray:
    """(C, H, W) 8-bit-scale values -> float32 model input: the checkpoint's scale, mean and std."""
    x = image.astype(np.float32) * np.float32(meta.input_scale)
    mean = np.asarray(meta.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(meta.std, dtype=np.float32)[:, None, None]
    return (x - mean) / std


def normalise(image: np.ndarray, meta: ModelMeta, valid: np.ndarray | None = None) -> np.ndarray:
    """One whole (C, H, W) raw image -> float32 model input: the model's radiometric normalisation
    from the image's own statistics (nothing for 8-bit images unless the model asks for it), then
    the checkpoint's mean/std. Pixels are not zeroed: see `InputNormaliser` for that."""
    if image.dtype != np.uint8 and Radiometry.from_meta(meta).mode == "off":
        return standardise(image, meta)  # as before normalisation existed: raw values x input_scale
    stretch = image_stretch(image, meta, valid)
    if stretch.source is None or stretch.target is None:
        return standardise(image, meta)
    if image.dtype == np.uint8:
        return standardise(remap_image(image, meta, valid, stretch), meta)
    return standardise(stretch_values(image, stretch.source, stretch.target), meta)


class InputNormaliser:
    """Raw band values -> model input, invalid pixels filled from the nearest valid one (`fill_nodata`).

    8-bit values go through a lookup table: the raster's `Stretch` when one applies, then the
    checkpoint's scale, mean and std. Other types are stretched per band from `stretch[c] =
    (low, high)` onto `target[c]` (default: the model's training range when it has one, else
    0-255) and then standardised.

    Args:
        meta: the model's metadata (input_scale, mean, std, normalisation).
        dtype: numpy dtype name of the raw values.
        stretch: (C, 2) per-band value limits, required unless dtype is uint8.
        target: (C, 2) levels the limits map onto (see above).
    """

    def __init__(self, meta: ModelMeta, dtype: str, stretch: np.ndarray | None = None,
                 target: np.ndarray | None = None) -> None:
        if stretch is None and dtype != "uint8":
            raise ValueError(f"{dtype} values need per-band stretch limits")
        if stretch is not None and target is None:
            target = choose_stretch(meta, "float32", stretch).target  # the model's range for stretched values
        self.meta = meta
        self.distance: float | None = None  # set by the engine: how far the raster lies from the training range
        self.stretch = None if stretch is None else np.asarray(stretch, np.float32)
        self.target = None if target is None else np.asarray(target, np.float32)
        self.lut = None
        if dtype == "uint8":
            levels = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], meta.in_channels, axis=0)
            if self.stretch is not None and self.target is not None:
                levels = np.rint(stretch_values(levels, self.stretch, self.target)).astype(np.uint8)
            self.lut = standardise(levels, meta)[:, :, 0]
        self.scale = np.float32(meta.input_scale)  # as `standardise` computes
        self.mean = np.asarray(meta.mean, dtype=np.float32)
        self.std = np.asarray(meta.std, dtype=np.float32)

    def __call__(self, raw: np.ndarray, valid: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(C, h, w) raw values and (h, w) valid mask -> (C, h, w) float32 (into `out` if given)."""
        if out is None:
            out = np.empty(raw.shape, dtype=np.float32)
        if self.lut is not None and self.stretch is None:
            # The table's own float32 operations, done on the pixels: the same values bit for bit,
            # 3x faster than the table look-up (0.3 against 0.9 ms per 512 px RGB tile).
            for c in range(raw.shape[0]):
                np.multiply(raw[c], self.scale, out=out[c], dtype=np.float32)
                out[c] -= self.mean[c]
                out[c] /= self.std[c]
        elif self.lut is not None:
            for c in range(raw.shape[0]):  # "wrap": no bounds check (8-bit values index 256 entries); 2x faster
                np.take(self.lut[c], raw[c], out=out[c], mode="wrap")
        else:
            assert self.stretch is not None and self.target is not None  # checked in __init__
            out[:] = standardise(stretch_values(raw, self.stretch, self.target), self.meta)
        return fill_nodata(out, valid)


def fill_nodata(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """`x` ((C, h, w) model input, in place) with each invalid pixel given the values of the
    nearest valid one; all 0 (the training mean) when none is valid.

    A flat fill next to a no-data collar or hole is an edge the model never meets in imagery and
    halved the roads beside it (web-map tiles with a 64 px collar: IoU 0.49 -> 0.37); carrying the
    image on, as the engine's reflection does at a raster's edge, keeps them (0.49 -> 0.50). The
    engine, training crops and evaluation all fill this way, so the model sees one convention.
    """
    if valid.all():
        return x
    if not valid.any():
        x[:] = 0.0
        return x
    from scipy import ndimage  # not at import: the module stays light for QGIS's start

    rows, cols = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    x[:] = x[:, rows, cols]
    return x
