"""How a model holds up on imagery unlike its training tiles: held-out tiles under the shifts a
real raster brings, and out-of-domain sets, all through the real engine.

Every case is written as a georeferenced GeoTIFF (EPSG:26986, the tile's pixel size, an internal
mask for its no-data) and segmented by `engine.segment_raster`, so resampling to the model's
GSD, band choice (`bands`), value stretches and radiometric normalisation are the ones a user
gets. The probability raster (on the model's grid) is compared with the label resampled onto
that grid (average, road where at least half a model pixel is road): IoU, relaxed F1 (3 px)
and APLS per tile, pixel metrics micro-averaged and APLS averaged over tiles, as `evaluate`.

Shifts (`SHIFTS`) of the held-out tiles: gamma 0.5 / 2, dark (x0.4), low contrast, warm and
blue casts, hue +30 degrees, haze, blur, noise, JPEG q30, 16-bit values at 11 and 12 bits,
0.3 m and 2 m pixels (the engine resamples to 1 m), a BGR file read with bands 3,2,1 and the
same file read in its stored order. Out-of-domain sets (`--ood NAME=DIR:GSD`) are segmented
as they are at their true pixel size. Pure-black pixels (all bands 0) count as no-data, like
white ones (Shanghai's no-data wedges are black).
"""
from __future__ import annotations

import logging
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import Resampling, reproject
from scipy import ndimage

from roadseg_plugin.core.apls import apls
from roadseg_plugin.core.engine import segment_raster
from roadseg_plugin.core.metrics import PixelCounts, pixel_counts
from roadseg_plugin.core.params import model_file, read_model_info

from .augment import jpeg_array
from .datasets import Tile, load_tiles

log = logging.getLogger(__name__)
CRS = "EPSG:26986"  # Massachusetts State Plane, metres
ORIGIN = (200_000.0, 900_000.0)
HAZE = np.array([200.0, 205.0, 215.0])


@dataclass
class Case:
    """One raster to segment: values, pixel size in metres, bands to pass the engine, valid mask."""

    data: np.ndarray
    gsd_m: float
    valid: np.ndarray
    bands: list[int] | None = None


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _gamma(g: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda im: _u8(255 * (im / 255.0) ** g)


def _gain(*gains: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda im: _u8(im * np.array(gains)[:, None, None])


def _low_contrast(im: np.ndarray) -> np.ndarray:
    mean = im.reshape(3, -1).mean(axis=1)[:, None, None]
    return _u8(mean + 0.5 * (im - mean))


def _hue(degrees: float) -> Callable[[np.ndarray], np.ndarray]:
    a = np.radians(degrees)
    yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    matrix = np.linalg.inv(yiq) @ rot @ yiq
    return lambda im: _u8(np.einsum("ij,jhw->ihw", matrix, im.astype(np.float64)))


def _bits(bits: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda im: np.rint(im * ((2**bits - 1) / 255.0)).astype(np.uint16)


def _noise(im: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _u8(im + rng.normal(0, 10, im.shape))


# name -> (description, function of (C, H, W) uint8 image and rng -> values)
VALUE_SHIFTS: dict[str, tuple[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]]] = {
    "clean": ("as stored", lambda im, rng: im),
    "gamma_0.5": ("gamma 0.5 (brighter)", lambda im, rng: _gamma(0.5)(im)),
    "gamma_2": ("gamma 2 (darker)", lambda im, rng: _gamma(2.0)(im)),
    "dark": ("values x0.4 (most below 100)", lambda im, rng: _u8(im * 0.4)),
    "low_contrast": ("contrast x0.5 around the mean", lambda im, rng: _low_contrast(im)),
    "cast_warm": ("colour cast, gains 1.2/1.0/0.75", lambda im, rng: _gain(1.2, 1.0, 0.75)(im)),
    "cast_blue": ("colour cast, gains 0.8/0.95/1.25", lambda im, rng: _gain(0.8, 0.95, 1.25)(im)),
    "hue_30": ("hue rotated 30 degrees", lambda im, rng: _hue(30)(im)),
    "haze": ("40 % haze veil", lambda im, rng: _u8(im * 0.6 + 0.4 * HAZE[:, None, None])),
    "blur": ("Gaussian blur, sigma 1.5 px", lambda im, rng: _u8(ndimage.gaussian_filter(
        im.astype(np.float32), (0, 1.5, 1.5)))),
    "noise": ("Gaussian noise, sigma 10", _noise),
    "jpeg_q30": ("JPEG quality 30", lambda im, rng: jpeg_array(im, 30)),
    "uint16_11bit": ("16-bit file, 11-bit values", lambda im, rng: _bits(11)(im)),
    "uint16_12bit": ("16-bit file, 12-bit values", lambda im, rng: _bits(12)(im)),
}
GRID_SHIFTS = {"gsd_0.3m": ("0.3 m pixels (engine resamples)", 0.3),
               "gsd_2m": ("2 m pixels (engine resamples)", 2.0)}
BAND_SHIFTS = {"bgr_bands_321": ("BGR file, bands=3,2,1", [3, 2, 1]),
               "bgr_undeclared": ("BGR file, bands not given", None)}
SHIFTS = {**{k: v[0] for k, v in VALUE_SHIFTS.items()}, **{k: v[0] for k, v in GRID_SHIFTS.items()},
          **{k: v[0] for k, v in BAND_SHIFTS.items()}}


def _transform(gsd: float, origin: tuple[float, float] = ORIGIN) -> rasterio.Affine:
    return from_origin(*origin, gsd, gsd)


def _regrid(array: np.ndarray, gsd: float, new_gsd: float, resampling: Resampling) -> np.ndarray:
    """(C, H, W) float values on the tile's grid resampled to `new_gsd` over the same extent."""
    h, w = array.shape[1:]
    shape = (array.shape[0], max(1, round(h * gsd / new_gsd)), max(1, round(w * gsd / new_gsd)))
    out = np.zeros(shape, np.float32)
    reproject(array.astype(np.float32), out, src_transform=_transform(gsd), src_crs=CRS,
              dst_transform=_transform(gsd * h / shape[1]), dst_crs=CRS, resampling=resampling)
    return out


def make_case(tile: Tile, shift: str, gsd_m: float, rng: np.random.Generator) -> Case:
    """The raster a user with this shift would have, from a held-out tile."""
    image, valid = tile.image, tile.valid
    if shift not in SHIFTS:
        raise ValueError(f"unknown shift {shift!r}; valid: {', '.join(SHIFTS)}")
    if shift in VALUE_SHIFTS:
        return Case(VALUE_SHIFTS[shift][1](image, rng), gsd_m, valid)
    if shift in GRID_SHIFTS:
        new = GRID_SHIFTS[shift][1]
        finer = new < gsd_m
        data = _regrid(image, gsd_m, new, Resampling.bilinear if finer else Resampling.average)
        ok = _regrid(valid[None].astype(np.float32), gsd_m, new, Resampling.nearest if finer else Resampling.average)
        return Case(_u8(data), new, ok[0] >= 0.5)
    return Case(np.ascontiguousarray(image[::-1]), gsd_m, valid, BAND_SHIFTS[shift][1])


def write_case(path: Path, case: Case, origin: tuple[float, float] = ORIGIN) -> Path:
    """A GeoTIFF of the case in EPSG:26986 at its pixel size (top-left corner at `origin`),
    with an internal no-data mask."""
    c, h, w = case.data.shape
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=c, dtype=case.data.dtype.name,
                           crs=CRS, transform=_transform(case.gsd_m, origin), tiled=True) as dst:
            dst.write(case.data)
            dst.write_mask(case.valid.astype(np.uint8) * np.uint8(255))
    return path


def label_on_grid(mask: np.ndarray, valid: np.ndarray, gsd_m: float, shape: tuple[int, int],
                  transform: rasterio.Affine) -> tuple[np.ndarray, np.ndarray]:
    """The tile's label and valid mask on the engine's output grid (average; at least half)."""
    src = np.stack([mask, valid]).astype(np.float32)
    out = np.zeros((2, *shape), np.float32)
    reproject(src, out, src_transform=_transform(gsd_m), src_crs=CRS, dst_transform=transform, dst_crs=CRS,
              resampling=Resampling.average)
    return out[0] >= 0.5, out[1] >= 0.5


def score_case(tile: Tile, case: Case, gsd_m: float, work: Path, model: str | Path | None, backend: str,
               threshold: float) -> tuple[PixelCounts, dict, list[str]]:
    """Segment one case with the engine and score it: (counts, row, the engine's backend and notes)."""
    src = write_case(work / f"{tile.name}.tif", case)
    try:
        result = segment_raster(src, work / "prob.tif", model, device="cpu", backend=backend, bands=case.bands)
        with rasterio.open(result.path) as out:
            prob, out_valid = out.read(1), out.dataset_mask() > 0
            shape, transform = (out.height, out.width), out.transform
    finally:
        src.unlink(missing_ok=True)
    truth, valid = label_on_grid(tile.mask, tile.valid, gsd_m, shape, transform)
    valid &= out_valid
    pred = prob.astype(np.float32) / 255 >= threshold
    counts = pixel_counts(pred, truth, valid)
    row = {"name": tile.name, **counts.metrics(), "apls": apls(truth, pred, valid)}
    return counts, row, [f"backend {result.backend}"] + [w.split(": ", 1)[-1] for w in result.warnings]


def _summary(group: str, shift: str, description: str, counts: PixelCounts, rows: list[dict], seconds: float,
             notes: list[str]) -> dict:
    metrics = counts.metrics()
    return {"set": group, "shift": shift, "description": description, **metrics,
            "apls": float(np.mean([r["apls"] for r in rows])) if rows else 0.0, "tiles": len(rows),
            "seconds": round(seconds, 1), "notes": sorted(set(notes)), "per_tile": rows}


def validation_stems(meta: Any) -> list[str]:
    """The validation tiles a model's metadata names in its `data` ("... val = a, b, c"), if any."""
    found = re.search(r"val = ([\w\-, ]+)", meta.data or "")
    return [s.strip() for s in found.group(1).split(",") if s.strip()] if found else []


def held_out_stems(model: str | Path | None) -> list[str]:
    """`validation_stems` of a model file (None: the bundled model)."""
    return validation_stems(read_model_info(model))


def select_tiles(tiles: list[Tile], only: list[str] | None, limit: int | None) -> list[Tile]:
    if only:
        missing = sorted(set(only) - {t.name for t in tiles})
        if missing:
            raise ValueError(f"tile(s) not in the data: {', '.join(missing)}")
        tiles = [t for t in tiles if t.name in set(only)]
    return tiles[:limit] if limit else tiles


def _no_black(tiles: list[Tile]) -> list[Tile]:
    for t in tiles:
        t.valid &= ~np.all(t.image == 0, axis=0)
    return tiles


def run_suite(data: str | Path, model: str | Path | None = None, backend: str = "auto",
              shifts: list[str] | None = None, only: list[str] | None = None, limit: int | None = None,
              ood: dict[str, tuple[Path, float]] | None = None, seed: int = 0,
              on_row: Callable[[dict], None] | None = None) -> dict:
    """Segment the held-out tiles of `data` under each shift, and each out-of-domain set as it is.

    Args:
        data: dataset folder (images/ + masks/) at the model's pixel size.
        model: checkpoint or .onnx (None: the bundled model).
        backend: the engine's backend ("auto": int8 ONNX on CPU when the checkpoint has one).
        shifts: names in `SHIFTS` (default all).
        only: tile stems of `data` to use (default: the model's own validation tiles when its
            metadata names them and `data` holds them all, else every tile).
        limit: at most this many tiles per set.
        ood: name -> (dataset folder, its true pixel size in metres).
        seed: seeds the noise.
        on_row: called with each finished row (for progress).

    Returns:
        {"model", "backend", "threshold", "normalisation", "rows": [per shift and set]}.
    """
    info = read_model_info(model)
    tiles = _no_black(load_tiles(data, bands=info.in_channels))
    if only is None:
        stems = held_out_stems(model)
        only = stems if stems and set(stems) <= {t.name for t in tiles} else None
    tiles = select_tiles(tiles, only, limit)
    gsd = info.gsd_m
    rows, backend_name = [], backend
    with tempfile.TemporaryDirectory(prefix="roadseg_robustness_") as tmp:
        work = Path(tmp)
        groups = [("held-out", tiles, gsd, name, SHIFTS[name]) for name in (shifts or list(SHIFTS))]
        for name, (folder, pixel) in (ood or {}).items():
            groups.append((name, select_tiles(_no_black(load_tiles(folder, bands=info.in_channels)), None, limit),
                           pixel, "clean", f"out of domain, {pixel:g} m pixels"))
        for group, group_tiles, pixel, shift, description in groups:
            t0, total, per_tile = time.perf_counter(), PixelCounts(), []
            notes: list[str] = []
            for i, tile in enumerate(group_tiles):
                rng = np.random.default_rng((seed, i, list(SHIFTS).index(shift)))
                case = make_case(tile, shift, pixel, rng)
                counts, row, warnings = score_case(tile, case, pixel, work, model, backend, info.threshold)
                total, notes = total + counts, notes + warnings
                per_tile.append(row)
            rows.append(_summary(group, shift, description, total, per_tile, time.perf_counter() - t0, notes))
            backends = {n.removeprefix("backend ") for n in notes if n.startswith("backend ")}
            backend_name = ", ".join(sorted(backends)) or backend
            if on_row:
                on_row(rows[-1])
    return {"model": str(model_file(model)), "backend": backend_name, "threshold": info.threshold,
            "normalisation": info.extra.get("normalisation", {}).get("mode", "off"), "rows": rows}


def format_table(result: dict, markdown: bool = False) -> str:
    """The suite as a table: one row per shift and set, with the IoU change against clean."""
    clean = next((r for r in result["rows"] if r["set"] == "held-out" and r["shift"] == "clean"), None)
    head = ["set", "shift", "IoU", "dIoU", "relaxed F1", "APLS", "precision", "recall", "tiles"]
    lines = []
    for r in result["rows"]:
        d = f"{r['iou'] - clean['iou']:+.3f}" if clean and r["set"] == "held-out" and r is not clean else ""
        lines.append([r["set"], f"{r['shift']} ({r['description']})" if markdown else r["shift"], f"{r['iou']:.3f}",
                      d, f"{r['relaxed_f1']:.3f}", f"{r['apls']:.3f}", f"{r['precision']:.3f}",
                      f"{r['recall']:.3f}", str(r["tiles"])])
    title = (f"model {result['model']} ({result['backend']}, threshold {result['threshold']:g}, "
             f"normalisation {result['normalisation']})")
    if markdown:
        return "\n".join([f"| {' | '.join(head)} |", "|" + " --- |" * len(head)]
                         + [f"| {' | '.join(cells)} |" for cells in lines])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([title, fmt.format(*head), *(fmt.format(*cells) for cells in lines)])


def parse_ood(values: list[str]) -> dict[str, tuple[Path, float]]:
    """`NAME=DIR:GSD` options -> {name: (folder, metres per pixel)}."""
    out = {}
    for value in values:
        name, sep, rest = value.partition("=")
        folder, colon, pixel = rest.rpartition(":")
        try:
            gsd = float(pixel)
        except ValueError:
            gsd = 0.0
        if not sep or not colon or not name or gsd <= 0:
            raise ValueError(f"--ood {value!r}: expected NAME=DIR:GSD, e.g. shanghai=../shanghai:0.76")
        out[name] = (Path(folder), gsd)
    return out
