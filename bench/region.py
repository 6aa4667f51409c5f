"""`python -m bench region [--size N] [--chunk C] [--json PATH]`: region runs on local Dask workers.

Writes an N x N georeferenced RGB GeoTIFF (mosaicked from the real Massachusetts tiles when they
are beside the repository, else the synthetic raster of `python -m bench`) and runs
`segment_region` on it in fresh processes (so each run's client memory is its own) with:

- 1 worker and 2 workers, model threads per worker = physical cores / workers (how a region
  run sets them): `efficiency` = Mpx/s(2) / (2 x Mpx/s(1)). On a machine with 2 cores both runs
  use the same 2 cores, so this measures how much 2 one-thread workers beat one two-thread
  worker, and is bounded by how well the model alone uses a second thread;
- 1 worker with 1 model thread: `efficiency_per_worker` = Mpx/s(2 workers x 1 thread) /
  (2 x Mpx/s(1 worker x 1 thread)), the scaling of adding workers that each bring their own
  core, which is what extrapolates to a cluster.

Mpx/s counts input-grid pixels over the chunk phase (from the first task sent to the last
chunk done: model loading included, the cluster's start not); the single-process
`segment_raster` speed on the same raster is given for reference, and the client's and the
workers' peak memory. The machine may be shared: `cpu_efficiency` compares the workers' CPU
seconds per Mpx with 1 and 2 one-thread workers (1.0: distributing costs nothing), which other
load on the machine does not change, and `load_average` says how busy it was.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TILES = ROOT.parent / "shared" / "data" / "massachusetts-roads" / "train" / "images"


def write_raster(path: Path, size: int) -> tuple[Path, str]:
    """The benchmark raster and what it is made of."""
    if TILES.is_dir() and any(TILES.glob("*.png")):
        import rasterio
        from affine import Affine
        from rasterio.windows import Window

        tiles = sorted(TILES.glob("*.png"))
        with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                           crs="EPSG:26986", transform=Affine(1, 0, 200000, 0, -1, 900000), tiled=True,
                           compress="deflate") as dst:
            k = -(-size // 1500)
            for i in range(k * k):
                r, c = divmod(i, k)
                h, w = min(1500, size - r * 1500), min(1500, size - c * 1500)
                with rasterio.open(tiles[i % len(tiles)]) as src:
                    dst.write(src.read(window=Window(0, 0, w, h)), window=Window(c * 1500, r * 1500, w, h))
        return path, "real Massachusetts tiles"
    from .synthetic import write_synthetic_raster

    return write_synthetic_raster(path, size), "synthetic"


def run_once(raster: Path, out: Path, workers: int, threads: int, chunk: int) -> dict:
    """One region run in a fresh process: its figures."""
    done = subprocess.run([sys.executable, "-m", "bench.region", "--child", str(raster), str(out), str(workers),
                           str(threads), str(chunk)], cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def child(raster: str, out: str, workers: str, threads: str, chunk: str) -> int:
    from roadseg_plugin.core.region import segment_region

    from .rss import peak_rss_mb

    seen: dict[str, float] = {}
    workers_mb: list[float] = []

    def watch(progress) -> None:  # the workers' CPU time over the chunk phase, and their peak memory
        if "cpu0" not in seen:  # first call: every chunk just sent, the model loaded everywhere
            seen["cpu0"] = sum(progress.client.run(_cpu_seconds).values())
        if progress.chunks_done == progress.chunks_total and "cpu1" not in seen:
            seen["cpu1"] = sum(progress.client.run(_cpu_seconds).values())
        if progress.chunks_done == progress.chunks_total and progress.groups_done == progress.groups_total:
            workers_mb.extend(progress.client.run(peak_rss_mb).values())

    result = segment_region([raster], out, workers=int(workers), model_threads=int(threads), chunk=int(chunk),
                            on_progress=watch)
    cpu = seen.get("cpu1", 0.0) - seen.get("cpu0", 0.0)
    print(json.dumps({"mpx_s": result.mpx_s, "segment_s": result.segment_seconds, "lines_s": result.lines_seconds,
                      "chunks": result.chunks, "lines": result.n_lines, "km": result.length_km,
                      "client_peak_mb": peak_rss_mb(), "worker_peak_mb": max(workers_mb, default=0.0),
                      "cpu_s_per_mpx": cpu / (result.pixels_run / 1e6)}))
    return 0


def _cpu_seconds() -> float:
    """User + system CPU seconds of this (worker) process, all its threads."""
    times = os.times()
    return times.user + times.system


def single_process_mpx_s(raster: Path, out: Path) -> float:
    from roadseg_plugin.core.engine import segment_raster

    start = time.perf_counter()
    result = segment_raster(raster, out)
    return result.width * result.height / 1e6 / (time.perf_counter() - start)


def run(size: int, chunk: int, work: Path) -> dict:
    import psutil

    cores = psutil.cpu_count(logical=False) or 1
    raster, kind = write_raster(work / "region.tif", size)
    one = run_once(raster, work / "w1", 1, cores, chunk)
    two = run_once(raster, work / "w2", 2, max(1, cores // 2), chunk)
    two_single = two if cores // 2 == 1 else run_once(raster, work / "w2t1", 2, 1, chunk)
    one_single = one if cores == 1 else run_once(raster, work / "w1t1", 1, 1, chunk)
    return {
        "raster": f"{size} x {size} px, {kind}",
        "chunk": chunk,
        "chunks": one["chunks"],
        "physical_cores": cores,
        "single_process_mpx_s": round(single_process_mpx_s(raster, work / "single.tif"), 3),
        f"mpx_s_1_worker_{cores}_threads": round(one["mpx_s"], 3),
        f"mpx_s_2_workers_{max(1, cores // 2)}_threads": round(two["mpx_s"], 3),
        "efficiency": round(two["mpx_s"] / (2 * one["mpx_s"]), 3),
        "mpx_s_1_worker_1_thread": round(one_single["mpx_s"], 3),
        "efficiency_per_worker": round(two_single["mpx_s"] / (2 * one_single["mpx_s"]), 3),
        "worker_cpu_s_per_mpx_1_thread": round(one_single["cpu_s_per_mpx"], 3),
        "worker_cpu_s_per_mpx_2_workers": round(two_single["cpu_s_per_mpx"], 3),
        "cpu_efficiency": round(one_single["cpu_s_per_mpx"] / two_single["cpu_s_per_mpx"], 3),
        "load_average": round(os.getloadavg()[0], 2),
        "lines_after_last_chunk_s": round(two["lines_s"], 2),
        "client_peak_mb": round(max(r["client_peak_mb"] for r in (one, two)), 1),
        "worker_peak_mb": round(max(r["worker_peak_mb"] for r in (one, two)), 1),
        "lines": two["lines"],
        "km": round(two["km"], 2),
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return child(*argv[1:])
    p = argparse.ArgumentParser(prog="python -m bench region", description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=4096, help="raster side in pixels (4096)")
    p.add_argument("--chunk", type=int, default=2048, help="chunk side in pixels (2048)")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="roadseg-bench-region-"))
    try:
        figures = run(args.size, args.chunk, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for key, value in figures.items():
        print(f"{key:32s} {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
