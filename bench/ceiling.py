"""The engine against the ONNX Runtime ceiling, per CPU backend, in one run (`python -m bench`).

For each overlap (the model's, and 15 % of the tile as Deepness uses) and each CPU backend
("onnxruntime" fp32, "onnxruntime-int8", and "auto", which picks one of them), `reps`
repetitions, interleaved: the forward passes alone on a real batch of tiles at the engine's
batch size (the ceiling, in raster Mpx/s: the raster's pixels per tile of its grid), then
`segment_raster` on the whole raster with that backend (end to end: model loading, reading,
radiometry, normalising, blending, writing and the file check included). Each repetition's
ratio e2e / ceiling compares two measurements taken seconds apart, so a change of machine
load weighs on both; the medians of the ratios are reported with their spread.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

from roadseg_plugin.core.backends import load_backend
from roadseg_plugin.core.engine import segment_raster

from . import measure

CPU_BACKENDS = ("onnxruntime", "onnxruntime-int8", "auto")
DEEPNESS_OVERLAP = 0.15  # Deepness's default overlap, as a share of the tile


def overlaps(tile: int, model_overlap: int) -> list[int]:
    return sorted({model_overlap, int(DEEPNESS_OVERLAP * tile)})


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}


def run(src: Path, work: Path, model: Path | None, reps: int) -> dict:
    """Ceilings, end-to-end speeds and their ratios per overlap and backend (see the module notes)."""
    chosen = load_backend(model, "cpu")  # auto's choice, measured when the benchmark loaded the model first
    figures: dict = {"auto_picks": chosen.name}
    backends = {name: load_backend(model, "cpu", name) for name in CPU_BACKENDS if name != "auto"}
    backends["auto"] = chosen
    for overlap in overlaps(chosen.meta.tile, chosen.meta.overlap):
        _, batch, px_per_tile = measure.read_speed(src, chosen, overlap)
        speeds: dict[str, dict[str, list[float]]] = {name: {"ceiling": [], "e2e": []} for name in CPU_BACKENDS}
        for _ in range(reps):
            for name in CPU_BACKENDS:
                speeds[name]["ceiling"].append(measure.model_speed(backends[name], batch, px_per_tile, 2.0))
                start = time.perf_counter()
                result = segment_raster(src, work / "mask.tif", model, device="cpu", backend=name, overlap=overlap)
                speeds[name]["e2e"].append(result.width * result.height / (time.perf_counter() - start) / 1e6)
        fastest = [max(speeds["onnxruntime"]["e2e"][i], speeds["onnxruntime-int8"]["e2e"][i]) for i in range(reps)]
        for name in CPU_BACKENDS:
            ratios = [e / c for e, c in zip(speeds[name]["e2e"], speeds[name]["ceiling"], strict=True)]
            figures[f"overlap_{overlap}px"] = figures.get(f"overlap_{overlap}px", {})
            figures[f"overlap_{overlap}px"][name] = {
                "ceiling_mpx_s": _spread(speeds[name]["ceiling"]), "e2e_mpx_s": _spread(speeds[name]["e2e"]),
                "e2e_over_ceiling": _spread(ratios),
                "over_fastest_backend": _spread([e / f for e, f in zip(speeds[name]["e2e"], fastest, strict=True)])}
    return figures
