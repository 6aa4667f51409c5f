"""Backend "auto" on CPU: the fastest of a model's ONNX files on this CPU, measured once.

Whether the int8 model beats fp32 depends on the CPU, not on the model alone: with AVX-512
VNNI the bundled model's int8 forward passes run about 2.4x faster than fp32, with AVX2 kernels
1.7x, and an int8 file made for one CPU may not pay off on another (README, "Speed on your CPU").
So on first use `auto` runs a few forward passes of each file on one tile (interleaved, median
of `ROUNDS`) and keeps the fastest; fp32 unless int8 is faster by more than `INT8_MARGIN` (int8
is within 0.005 IoU, fp32 exact).

The result is cached per CPU (name, instruction sets, threads, ONNX Runtime version: see
`cpu.cpu_signature`) and per file contents (SHA-256 of each ONNX file), in a small JSON file in
the user cache folder (`onnx_backend.user_cache_dir`), never beside the user's models or data.
A damaged or unwritable cache only means measuring again.
"""
from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import temporary_sibling
from ..onnx_backend import checkpoint_digest, user_cache_dir
from .base import Backend, physical_cores
from .cpu import cpu_signature

CACHE_NAME = "cpu_backend_choice.json"
CACHE_VERSION = 1
MAX_ENTRIES = 64  # oldest dropped beyond this: the file stays a few kB
ROUNDS = 3
INT8_MARGIN = 0.03  # int8 must be this much faster than fp32 to be chosen


@dataclass
class Choice:
    """The backend `auto` runs on this CPU, and the speeds it was chosen on (tiles per second)."""

    name: str
    tiles_per_s: dict[str, float]
    measured_now: bool


def cache_file() -> Path:
    return user_cache_dir() / CACHE_NAME


def choice_key(files: Mapping[str, Path], threads: int) -> tuple[str, dict]:
    """(key, what it stands for): the CPU signature and the SHA-256 of each candidate file."""
    record = {"signature": cpu_signature(threads),
              "files": {name: checkpoint_digest(path)[:16] for name, path in sorted(files.items())}}
    key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:24]
    return key, record


def measure(backends: Mapping[str, Backend], batch: int = 1, rounds: int = ROUNDS) -> dict[str, float]:
    """Tiles per second of each backend on `batch` tiles of the model's tile size: one warm-up
    pass each (weights are packed on first use), then `rounds` passes each, interleaved so a
    change of machine load weighs on all alike; the median pass counts. One tile per pass keeps
    the first use short (about 2 s for the bundled model); per tile it ranks the files as the
    engine's batches of 2 do."""
    first = next(iter(backends.values()))
    tile, bands = first.meta.tile, first.meta.in_channels
    tiles = np.random.default_rng(0).standard_normal((batch, bands, tile, tile), dtype=np.float32)
    for backend in backends.values():
        backend.predict(tiles)
    seconds: dict[str, list[float]] = {name: [] for name in backends}
    for _ in range(rounds):
        for name, backend in backends.items():
            start = time.perf_counter()
            backend.predict(tiles)
            seconds[name].append(time.perf_counter() - start)
    return {name: batch / statistics.median(times) for name, times in seconds.items()}


def pick(tiles_per_s: Mapping[str, float]) -> str:
    """The fastest name; "onnxruntime" (fp32) unless another beats it by more than `INT8_MARGIN`."""
    best = max(tiles_per_s, key=lambda name: tiles_per_s[name])
    fp32 = tiles_per_s.get("onnxruntime")
    if fp32 is not None and tiles_per_s[best] <= fp32 * (1 + INT8_MARGIN):
        return "onnxruntime"
    return best


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("entries"), dict):
        return {}
    return data["entries"]


def _write_cache(path: Path, entries: dict) -> None:
    """Replace the cache file atomically; silently skipped when the folder cannot be written."""
    kept = dict(sorted(entries.items(), key=lambda kv: kv[1].get("measured_at", 0))[-MAX_ENTRIES:])
    try:
        tmp = temporary_sibling(path)
    except OSError:
        return
    try:
        tmp.write_text(json.dumps({"version": CACHE_VERSION, "entries": kept}, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def cached_choice(files: Mapping[str, Path], threads: int | None = None) -> Choice | None:
    """The choice measured earlier on this CPU for exactly these files, or None."""
    key, _ = choice_key(files, threads or physical_cores())
    entry = _read_cache(cache_file()).get(key)
    if not isinstance(entry, dict) or entry.get("chosen") not in files:
        return None
    speeds = entry.get("tiles_per_s")
    return Choice(entry["chosen"], dict(speeds) if isinstance(speeds, dict) else {}, measured_now=False)


def choose(backends: Mapping[str, Backend], files: Mapping[str, Path], threads: int | None = None) -> Choice:
    """Measure `backends` (loaded from `files`, same names), pick the fastest and cache it."""
    threads = threads or physical_cores()
    speeds = measure(backends)
    chosen = pick(speeds)
    key, record = choice_key(files, threads)
    path = cache_file()
    entries = _read_cache(path)
    entries[key] = {**record, "tiles_per_s": {k: round(v, 4) for k, v in speeds.items()}, "chosen": chosen,
                    "tile": next(iter(backends.values())).meta.tile, "measured_at": time.time()}
    _write_cache(path, entries)
    return Choice(chosen, speeds, measured_now=True)


def fastest_onnx(files: Mapping[str, Path]) -> Backend:
    """The fastest of these ONNX files (name -> file, e.g. "onnxruntime" and "onnxruntime-int8")
    on this CPU: from the cache, else measured now (only then are they all loaded)."""
    from .onnxruntime_backend import OnnxRuntimeBackend

    known = cached_choice(files)
    if known is not None:
        return OnnxRuntimeBackend(files[known.name], "cpu")
    loaded = {name: OnnxRuntimeBackend(path, "cpu") for name, path in files.items()}
    return loaded[choose(loaded, files).name]
