"""The individual measurements behind `python -m bench`. Speeds are in input-raster Mpx/s."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from roadseg_plugin.core.backends import Backend, load_backend, onnxruntime_available
from roadseg_plugin.core.engine import iter_tile_batches, make_normaliser, segment_raster
from roadseg_plugin.core.params import InferenceParams
from roadseg_plugin.core.readers import choose_bands, open_raster
from roadseg_plugin.core.tiling import TileGrid

ROOT = Path(__file__).resolve().parent.parent


def read_speed(src: Path, backend: Backend, overlap: int | None = None) -> tuple[float, np.ndarray, float]:
    """Read and normalise every tile of `src` as the engine does, without the model.

    Returns:
        (Mpx/s, the first batch of tiles, raster pixels per tile at `overlap`, default the model's).
    """
    meta = backend.meta
    settings = InferenceParams(overlap=overlap).resolve(meta)  # the engine's tiling and batch
    with open_raster(src, gsd_m=meta.gsd_m) as reader:
        bands = choose_bands(reader, meta.in_channels)
        normaliser, _ = make_normaliser(reader, meta, bands)
        grid = TileGrid(reader.height, reader.width, settings.tile, settings.overlap)
        start, first = time.perf_counter(), None
        for batch in iter_tile_batches(reader, grid, bands, normaliser, settings.batch_for(backend.device)):
            first = batch.tiles if first is None else first
        seconds = time.perf_counter() - start
        pixels = reader.width * reader.height
    return pixels / seconds / 1e6, first, pixels / grid.n_tiles


def model_speed(backend: Backend, batch: np.ndarray, px_per_tile: float, min_seconds: float = 3.0) -> float:
    """Forward passes only, on a batch already in memory (after one warm-up pass)."""
    backend.predict(batch)
    runs, start = 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - start < min_seconds:
        backend.predict(batch)
        runs += 1
    return runs * len(batch) * px_per_tile / (time.perf_counter() - start) / 1e6


def backend_speeds(model: Path | None, device: str, batch: np.ndarray, px_per_tile: float) -> dict[str, float | None]:
    """Model speed of each backend on `device`; None where the backend is not available there."""
    speeds: dict[str, float | None] = {}
    for name in ("torch", "onnxruntime"):
        if name == "onnxruntime" and not onnxruntime_available():
            speeds[name] = None
            continue
        try:
            speeds[name] = model_speed(load_backend(model, device, name), batch, px_per_tile)
        except ValueError:  # e.g. onnxruntime without CUDA support on a GPU machine
            speeds[name] = None
    return speeds


def end_to_end(src: Path, dst: Path, model: Path | None, device: str) -> tuple[float, float]:
    """segment_raster on `src`, output written: (Mpx/s, seconds)."""
    start = time.perf_counter()
    result = segment_raster(src, dst, model, device=device)
    seconds = time.perf_counter() - start
    return result.width * result.height / seconds / 1e6, seconds


def vectorise_seconds(mask: Path, threshold: float) -> float:
    """vectorise_raster on the engine's output, after a warm-up on a tiny mask: sknw's numba
    functions compile once per process (about 0.7 s here), like the model's warm-up pass."""
    from roadseg_plugin.core.vectorise import vectorise_mask, vectorise_raster

    tiny = np.zeros((32, 32), bool)
    tiny[14:18, 2:30] = True
    vectorise_mask(tiny)
    start = time.perf_counter()
    vectorise_raster(mask, threshold=threshold)
    return time.perf_counter() - start


def peak_rss_mb(src: Path, dst: Path, model: Path, device: str) -> float:
    """Peak resident memory of segment_raster in a fresh Python process."""
    out = subprocess.run([sys.executable, "-m", "bench.rss", str(src), str(dst), str(model), device],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])
