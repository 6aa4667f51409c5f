"""Worker side of a region run: one chunk of one raster -> its probability part.

A chunk is predicted by the engine's own `predict_raster` with the whole raster's tile grid: only
the tiles that touch the chunk are read and run, blended with the whole raster's summed weights,
so the part holds the single-process values.

The model is loaded once per worker process (`worker_backend`, keyed by model, device,
backend, TTA and thread count) with ONNX Runtime / torch limited to the worker's share of the
machine's cores, so several workers on one machine do not oversubscribe it.
"""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..params import RunSettings

_BACKENDS: dict[tuple, Any] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class ChunkTask:
    """What a worker needs to predict one chunk (picklable; paths absolute)."""

    source: str
    window: tuple[int, int, int, int]
    part: str
    settings: RunSettings
    threads: int | None = None
    normaliser: Any = None  # the client's `engine.make_normaliser` for the whole raster; None: made here


def worker_backend(settings: RunSettings, threads: int | None) -> Any:
    """This process's model for `settings`, loaded on first use (thread-safe)."""
    key = (str(settings.model), settings.device, settings.backend, settings.tta, threads)
    with _LOCK:
        if key not in _BACKENDS:
            _BACKENDS[key] = _load(settings, threads)
        return _BACKENDS[key]


def warm_up(settings: RunSettings, threads: int | None) -> str:
    """Load the model and the vectoriser's compiled kernels in this worker process (run on every
    worker when a run starts, so a model a worker cannot load fails the run before any chunk,
    and the run's speed is not the first tasks' start-up); returns what was loaded."""
    from ..skeleton_pieces import _sknw_kernels

    loaded = worker_backend(settings, threads)
    _sknw_kernels()
    return f"{loaded.name} on {loaded.device}"


def _load(settings: RunSettings, threads: int | None) -> Any:
    from ..backends import DihedralTTA, OnnxRuntimeBackend, load_backend

    loaded = load_backend(settings.model, device=settings.device, backend=settings.backend)
    torch = sys.modules.get("torch")  # only when the backend (or the device check) needed it
    if threads and torch is not None:
        torch.set_num_threads(threads)
    if threads and isinstance(loaded, OnnxRuntimeBackend) and loaded.device == "cpu":
        # the file load_backend chose (int8 or fp32 export), opened again with this worker's share
        notes = loaded.notes
        loaded = type(loaded)(loaded.path, "cpu", threads)
        loaded.notes = notes
    return DihedralTTA(loaded) if settings.tta else loaded


def segment_chunk(task: ChunkTask) -> dict[str, Any]:
    """Predict one chunk and write its part (see the module notes); returns what the client records.

    Raises:
        RasterError, CheckpointError, OutputError: bad input, model or output folder.
    """
    from ..atomic import temporary_sibling
    from ..engine import make_normaliser, predict_raster
    from ..readers import choose_bands, open_raster
    from .parts import finish_part

    start = time.perf_counter()
    settings, (r0, r1, c0, c1) = task.settings, task.window
    loaded = worker_backend(settings, task.threads)
    meta, bands, final = settings.meta, settings.band_list, Path(task.part)
    with open_raster(task.source, gsd_m=meta.gsd_m, bands=bands, extent=settings.extent,
                     native_gsd_m=settings.gsd) as reader:
        chosen = choose_bands(reader, meta.in_channels, bands)
        normaliser = task.normaliser or make_normaliser(reader, meta, chosen)[0]
        final.parent.mkdir(parents=True, exist_ok=True)
        staged = temporary_sibling(final, ".part.tif")
        try:
            tiles, notes = predict_raster(reader, settings, loaded, normaliser, chosen, staged, final, task.window)
            digest = finish_part(staged, final)
        finally:
            staged.unlink(missing_ok=True)
        warnings = list(reader.warnings) + loaded.notes + notes
    return {"part": str(final), "sha256": digest, "pixels": (r1 - r0) * (c1 - c0), "tiles": tiles,
            "seconds": time.perf_counter() - start, "backend": loaded.name, "device": loaded.device,
            "threshold": settings.threshold, "warnings": warnings}
