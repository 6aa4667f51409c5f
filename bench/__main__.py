"""`python -m bench [--size N] [--reps R] [--device auto] [--json PATH] [--model M]`: engine benchmarks.
(`python -m bench region ...`: region runs on Dask workers, see bench/region.py;
`python -m bench train`: CPU training crops/s, see bench/train.py; `python -m bench large [--size N]`:
a whole `segment` of a 50,000 px mosaic of real tiles, see bench/large.py.)

Builds a synthetic N x N georeferenced RGB GeoTIFF and reports, in input-raster Mpx/s:
the CPU and its instruction sets (AVX2, AVX-512, VNNI, AMX: they decide which backend is
fastest); reading + normalising alone; on CPU, per overlap (the model's and Deepness's 15 %)
and per CPU backend (fp32 and int8 ONNX Runtime, and "auto"), the ONNX Runtime forward-pass
ceiling and segment_raster end to end, interleaved, with e2e / ceiling and auto / fastest as
medians of per-repetition ratios (see bench/ceiling.py); on CUDA the model alone and end to end;
then the vectoriser's time relative to inference, and the peak memory of segment_raster in
fresh processes on N/4 and N rasters with a tiny stand-in model (so it measures the engine).
The user cache is a temporary folder, so "auto" measures its choice in this run.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, help="raster side in pixels (default 4096 on CPU, 32768 on CUDA)")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions of each CPU measurement (3)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    p.add_argument("--model", type=Path, help="checkpoint (default: the bundled model)")
    return p.parse_args(argv)


def run(size: int, device: str, model: Path | None, work: Path, reps: int = 3) -> dict:
    from roadseg_plugin.core.backends import load_backend
    from roadseg_plugin.core.backends.cpu import describe_cpu

    from . import ceiling, measure
    from .synthetic import write_standin_checkpoint, write_synthetic_raster

    started = time.perf_counter()
    backend = load_backend(model, device)  # exports/caches the ONNX file once; on CPU auto measures its choice
    first_use_s = time.perf_counter() - started
    big = write_synthetic_raster(work / "large.tif", size, gsd_m=backend.meta.gsd_m)
    read_mpx_s, batch, px_per_tile = measure.read_speed(big, backend)
    figures: dict = {"cpu": describe_cpu(), "device": backend.device, "raster_px": size * size,
                     "read_mpx_s": round(read_mpx_s, 3), "first_load_s": round(first_use_s, 2)}
    if backend.device == "cpu":
        torch_speed = measure.backend_speeds(model, device, batch, px_per_tile)["torch"]
        figures["torch_ceiling_mpx_s"] = None if torch_speed is None else round(torch_speed, 3)
        figures.update(ceiling.run(big, work, model, reps))
        e2e_mpx_s = figures[f"overlap_{backend.meta.overlap}px"]["auto"]["e2e_mpx_s"]["median"]
        infer_s = size * size / e2e_mpx_s / 1e6
        segment_raster_default_overlap(big, work / "mask.tif", model, device)
    else:
        picked = measure.model_speed(backend, batch, px_per_tile)
        e2e_mpx_s, infer_s = measure.end_to_end(big, work / "mask.tif", model, device)
        model_mpx_s = (picked + measure.model_speed(backend, batch, px_per_tile)) / 2
        figures.update(backend=backend.name, model_mpx_s=round(model_mpx_s, 3), e2e_mpx_s=round(e2e_mpx_s, 3),
                       e2e_over_ceiling=round(e2e_mpx_s / min(read_mpx_s, model_mpx_s), 3))
    vectorise_s = measure.vectorise_seconds(work / "mask.tif", backend.meta.threshold)
    standin = write_standin_checkpoint(work / "standin.pt", backend.meta.tile, backend.meta.overlap)
    load_backend(standin, device)  # export before the measured processes start
    small = write_synthetic_raster(work / "small.tif", size // 4, gsd_m=backend.meta.gsd_m)
    figures.update({
        "infer_s": round(infer_s, 2),
        "vectorise_s": round(vectorise_s, 2),
        "vectorise_over_infer": round(vectorise_s / infer_s, 3),
        "rss_small_mb": round(measure.peak_rss_mb(small, work / "small_mask.tif", standin, device), 1),
        "rss_large_mb": round(measure.peak_rss_mb(big, work / "large_mask.tif", standin, device), 1),
    })
    return figures


def segment_raster_default_overlap(src: Path, dst: Path, model: Path | None, device: str) -> None:
    """The probability raster the vectoriser is timed on: the engine's default run."""
    from roadseg_plugin.core.engine import segment_raster

    segment_raster(src, dst, model, device=device)


def _print(figures: dict, prefix: str = "") -> None:
    for key, value in figures.items():
        if isinstance(value, dict) and not {"median", "min", "max"} >= set(value):
            _print(value, f"{prefix}{key}.")
        elif isinstance(value, dict):
            print(f"{prefix + key:52s} {value['median']} ({value['min']}-{value['max']})")
        else:
            print(f"{prefix + key:52s} {value}")


def main(argv: list[str] | None = None) -> int:
    if (sys.argv[1:] if argv is None else argv)[:1] == ["train"]:  # `python -m bench train`: see bench/train.py
        from .train import main as train_main

        return train_main((sys.argv[1:] if argv is None else argv)[1:])
    if (sys.argv[1:] if argv is None else argv)[:1] == ["region"]:  # `python -m bench region`: see bench/region.py
        from .region import main as region_main

        return region_main((sys.argv[1:] if argv is None else argv)[1:])
    if (sys.argv[1:] if argv is None else argv)[:1] == ["large"]:  # `python -m bench large`: see bench/large.py
        from .large import main as large_main

        return large_main((sys.argv[1:] if argv is None else argv)[1:])
    args = parse_args(argv)
    from roadseg_plugin.core.backends import resolve_device
    from roadseg_plugin.core.checkpoint import BUNDLED_MODEL
    from roadseg_plugin.core.errors import RoadSegError

    if args.model is None and not BUNDLED_MODEL.is_file():
        print(f"error: {BUNDLED_MODEL}: bundled model not found; pass --model CHECKPOINT", file=sys.stderr)
        return 2
    try:
        device = resolve_device(args.device)
        size = args.size or (32768 if device.type == "cuda" else 4096)
        work = Path(tempfile.mkdtemp(prefix="roadseg-bench-"))
        os.environ["XDG_CACHE_HOME"] = str(work / "user-cache")  # auto chooses afresh, in this run
        try:
            figures = run(size, str(device), args.model, work, args.reps)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    except (RoadSegError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
