"""`python -m bench [--size N] [--device auto] [--json PATH] [--model M]`: engine benchmarks.
(`python -m bench region ...`: region runs on Dask workers, see bench/region.py; `python -m bench
large [--size N]`: a whole `segment` of a 50,000 px mosaic of real tiles, see bench/large.py.)

Builds a synthetic N x N georeferenced RGB GeoTIFF and reports, in input-raster Mpx/s:
reading + normalising alone, the model alone (the backend the engine picks, plus torch and fp32
ONNX Runtime for comparison), and segment_raster end to end;
then the vectoriser's time relative to inference, and the peak memory of segment_raster in
fresh processes on N/4 and N rasters with a tiny stand-in model (so it measures the engine).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, help="raster side in pixels (default 4096 on CPU, 32768 on CUDA)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    p.add_argument("--model", type=Path, help="checkpoint (default: the bundled model)")
    return p.parse_args(argv)


def run(size: int, device: str, model: Path | None, work: Path) -> dict:
    from roadseg_plugin.core.backends import load_backend

    from . import measure
    from .synthetic import write_standin_checkpoint, write_synthetic_raster

    backend = load_backend(model, device)  # also exports/caches the ONNX file once
    big = write_synthetic_raster(work / "large.tif", size, gsd_m=backend.meta.gsd_m)
    read_mpx_s, batch, px_per_tile = measure.read_speed(big, backend)
    speeds = measure.backend_speeds(model, device, batch, px_per_tile)  # torch and fp32 ONNX Runtime
    picked = measure.model_speed(backend, batch, px_per_tile)
    e2e_mpx_s, infer_s = measure.end_to_end(big, work / "mask.tif", model, device)
    # Measured again after the end-to-end run and averaged, so a change in machine load
    # during the run weighs on both sides of e2e_over_ceiling alike.
    model_mpx_s = (picked + measure.model_speed(backend, batch, px_per_tile)) / 2
    vectorise_s = measure.vectorise_seconds(work / "mask.tif", backend.meta.threshold)
    standin = write_standin_checkpoint(work / "standin.pt", backend.meta.tile, backend.meta.overlap)
    load_backend(standin, device)  # export before the measured processes start
    small = write_synthetic_raster(work / "small.tif", size // 4, gsd_m=backend.meta.gsd_m)
    return {
        "device": backend.device,
        "raster_px": size * size,
        "read_mpx_s": round(read_mpx_s, 3),
        "backend": backend.name,
        "model_mpx_s": round(model_mpx_s, 3),
        "torch_mpx_s": None if speeds["torch"] is None else round(speeds["torch"], 3),
        "onnxruntime_mpx_s": None if speeds["onnxruntime"] is None else round(speeds["onnxruntime"], 3),
        "e2e_mpx_s": round(e2e_mpx_s, 3),
        "e2e_over_ceiling": round(e2e_mpx_s / min(read_mpx_s, model_mpx_s), 3),
        "infer_s": round(infer_s, 2),
        "vectorise_s": round(vectorise_s, 2),
        "vectorise_over_infer": round(vectorise_s / infer_s, 3),
        "rss_small_mb": round(measure.peak_rss_mb(small, work / "small_mask.tif", standin, device), 1),
        "rss_large_mb": round(measure.peak_rss_mb(big, work / "large_mask.tif", standin, device), 1),
    }


def main(argv: list[str] | None = None) -> int:
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
        try:
            figures = run(size, str(device), args.model, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    except (RoadSegError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for key, value in figures.items():
        print(f"{key:22s} {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
