"""The engine against the ONNX Runtime ceiling, per CPU backend, in one run (`python -m bench`).

For each overlap (the model's, and 15 % of the tile as Deepness uses) and each CPU backend
("onnxruntime" fp32, "onnxruntime-int8", and "auto", which picks one of them), `reps`
repetitions, interleaved: the forward passes alone on a real batch of tiles at the engine's
batch size (the ceiling, in raster Mpx/s: the raster's pixels per tile of its grid), then
`segment_raster` on the whole raster with that backend (end to end: model loading, reading,
radiometry, normalising, blending, writing and the file check included). Each repetition's
ratio e2e / ceiling compares two measurements taken seconds apart, so a change of machine
load weighs on both; the medians of the ratios are reported with their spread. On a machine
shared with other work the wall-clock ratio stays noisy, so the same ratio is also given in
process CPU time (`cpu_e2e_over_ceiling`: Mpx per CPU second end to end over the forward
passes'), which other processes barely change: it is the share of the engine's CPU work that
is forward passes.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from roadseg_plugin.core.backends import Backend, load_backend
from roadseg_plugin.core.engine import segment_raster

from . import measure

CPU_BACKENDS = ("onnxruntime", "onnxruntime-int8", "auto")
DEEPNESS_OVERLAP = 0.15  # Deepness's default overlap, as a share of the tile


def overlaps(tile: int, model_overlap: int) -> list[int]:
    return sorted({model_overlap, int(DEEPNESS_OVERLAP * tile)})


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}


def _forward_passes(backend: Backend, batch: np.ndarray, px_per_tile: float,
                    seconds: float = 2.0) -> tuple[float, float]:
    """Forward passes alone on `batch` (after one warm-up): raster Mpx per wall second and per
    process CPU second."""
    backend.predict(batch)
    runs, start, start_cpu = 0, time.perf_counter(), time.process_time()
    while runs < 3 or time.perf_counter() - start < seconds:
        backend.predict(batch)
        runs += 1
    mpx = runs * len(batch) * px_per_tile / 1e6
    return mpx / (time.perf_counter() - start), mpx / (time.process_time() - start_cpu)


def run(src: Path, work: Path, model: Path | None, reps: int) -> dict:
    """Ceilings, end-to-end speeds and their ratios per overlap and backend (see the module notes)."""
    chosen = load_backend(model, "cpu")  # auto's choice, measured when the benchmark loaded the model first
    figures: dict = {"auto_picks": chosen.name}
    backends = {name: load_backend(model, "cpu", name) for name in CPU_BACKENDS if name != "auto"}
    backends["auto"] = chosen
    for overlap in overlaps(chosen.meta.tile, chosen.meta.overlap):
        _, batch, px_per_tile = measure.read_speed(src, chosen, overlap)
        speeds: dict[str, dict[str, list[float]]] = {
            name: {"ceiling": [], "e2e": [], "ceiling_cpu": [], "e2e_cpu": []} for name in CPU_BACKENDS}
        for _ in range(reps):
            for name in CPU_BACKENDS:
                wall, cpu = _forward_passes(backends[name], batch, px_per_tile)
                speeds[name]["ceiling"].append(wall)
                speeds[name]["ceiling_cpu"].append(cpu)
                start, start_cpu = time.perf_counter(), time.process_time()
                result = segment_raster(src, work / "mask.tif", model, device="cpu", backend=name, overlap=overlap)
                mpx = result.width * result.height / 1e6
                speeds[name]["e2e"].append(mpx / (time.perf_counter() - start))
                speeds[name]["e2e_cpu"].append(mpx / (time.process_time() - start_cpu))
        fastest = [max(speeds["onnxruntime"]["e2e"][i], speeds["onnxruntime-int8"]["e2e"][i]) for i in range(reps)]
        fastest_cpu = [max(speeds["onnxruntime"]["e2e_cpu"][i], speeds["onnxruntime-int8"]["e2e_cpu"][i])
                       for i in range(reps)]
        for name in CPU_BACKENDS:
            ratios = [e / c for e, c in zip(speeds[name]["e2e"], speeds[name]["ceiling"], strict=True)]
            cpu_ratios = [e / c for e, c in zip(speeds[name]["e2e_cpu"], speeds[name]["ceiling_cpu"], strict=True)]
            figures[f"overlap_{overlap}px"] = figures.get(f"overlap_{overlap}px", {})
            figures[f"overlap_{overlap}px"][name] = {
                "ceiling_mpx_s": _spread(speeds[name]["ceiling"]), "e2e_mpx_s": _spread(speeds[name]["e2e"]),
                "e2e_over_ceiling": _spread(ratios), "cpu_e2e_over_ceiling": _spread(cpu_ratios),
                "over_fastest_backend": _spread([e / f for e, f in zip(speeds[name]["e2e"], fastest, strict=True)]),
                "cpu_over_fastest_backend": _spread([e / f for e, f in zip(speeds[name]["e2e_cpu"], fastest_cpu,
                                                                           strict=True)])}
    return figures
