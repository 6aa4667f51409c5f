"""`python -m bench large [--size 50000] [--data DIR] [--model M] [--json PATH]`: one whole `segment`
of a large mosaic of real tiles, and what it costs in memory.

The mosaic is a VRT of `--size` x `--size` px (1 m, EPSG:26986) tiled with the Massachusetts
PNG tiles of `--data` (tiled GeoTIFF copies made in a temporary folder, repeated in a fixed
shuffled order), so the model sees real roads everywhere. Reported, each from a fresh process:

- `segment`: the whole `python -m roadseg_plugin segment` command (probability raster and line
  file written), its wall time and peak resident memory, lines included;
- `vectorise`: the `vectorise` command alone on that probability raster (lines written as they
  are found), and the reference measured in the same run: `vectorise_raster`, which holds every
  line in memory at once (what `vectorise` did before), on the same raster.

`--size` runs it smaller for a quick check; the 50,000 px figure takes hours on two cores.
`--road-grid N` measures the vectoriser alone on an N x N mask of a dense street grid (one
connected network over the whole area, the worst case for holding lines), streaming against
the in-memory reference.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "massachusetts-roads" / "train" / "images"
ORIGIN = (200000.0, 950000.0)  # top-left corner in EPSG:26986 (Massachusetts State Plane, metres)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench large", description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=50000, help="mosaic side in pixels (default 50000)")
    p.add_argument("--data", type=Path, default=DATA, help="folder of real image tiles (PNG, GeoTIFF)")
    p.add_argument("--model", type=Path, help="checkpoint (default: the bundled model)")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    p.add_argument("--no-reference", action="store_true", help="skip the in-memory vectorise reference")
    p.add_argument("--road-grid", type=int, metavar="N", help="vectorise an N x N street-grid mask instead")
    return p.parse_args(argv)


def geotiff_copies(images: list[Path], folder: Path) -> list[tuple[Path, int, int]]:
    """Tiled GeoTIFF copies of `images` (read once, fast to read in windows): (path, width, height)."""
    import warnings

    import rasterio
    from affine import Affine
    from rasterio.errors import NotGeoreferencedWarning

    copies = []
    for i, image in enumerate(images):
        with warnings.catch_warnings():  # plain PNG tiles: the VRT places them
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(image) as src:
                data = src.read(list(range(1, min(src.count, 3) + 1)))
        target = folder / f"tile{i:03d}.tif"
        with rasterio.open(target, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=3,
                           dtype="uint8", crs="EPSG:26986", transform=Affine(1, 0, ORIGIN[0], 0, -1, ORIGIN[1]),
                           tiled=True, blockxsize=256, blockysize=256) as dst:
            dst.write(data)
        copies.append((target, data.shape[2], data.shape[1]))
    return copies


def mosaic_vrt(path: Path, copies: list[tuple[Path, int, int]], size: int, seed: int = 0) -> int:
    """A size x size VRT laying the copies edge to edge (cropped at the right and bottom); the cells."""
    import numpy as np

    step = min(min(w, h) for _, w, h in copies)
    n = -(-size // step)
    order = np.random.default_rng(seed).integers(0, len(copies), n * n)
    bands = []
    for band in (1, 2, 3):
        sources = []
        for k, index in enumerate(order):
            r, c = divmod(k, n)
            w, h = min(step, size - c * step), min(step, size - r * step)
            source = copies[int(index)][0]
            sources.append(f'<SimpleSource><SourceFilename relativeToVRT="1">{source.name}</SourceFilename>'
                           f"<SourceBand>{band}</SourceBand>"
                           f'<SourceProperties RasterXSize="{copies[int(index)][1]}" '
                           f'RasterYSize="{copies[int(index)][2]}" DataType="Byte" BlockXSize="256" '
                           f'BlockYSize="256"/><SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
                           f'<DstRect xOff="{c * step}" yOff="{r * step}" xSize="{w}" ySize="{h}"/></SimpleSource>')
        interp = ("Red", "Green", "Blue")[band - 1]
        bands.append(f'<VRTRasterBand dataType="Byte" band="{band}"><ColorInterp>{interp}</ColorInterp>'
                     + "".join(sources) + "</VRTRasterBand>")
    path.write_text(f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}"><SRS>EPSG:26986</SRS>'
                    f"<GeoTransform>{ORIGIN[0]},1,0,{ORIGIN[1]},0,-1</GeoTransform>" + "".join(bands)
                    + "</VRTDataset>")
    return n * n


def measured(out: Path, *args: object) -> dict:
    """Run `python -m bench.rss ARGS...` (a fresh process) and read its figures."""
    done = subprocess.run([sys.executable, "-m", "bench.rss", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True)
    if not out.is_file():
        raise RuntimeError(f"bench.rss {args[0]} failed: {done.stderr[-2000:]}")
    figures = json.loads(out.read_text())
    if figures["rc"] != 0:
        raise RuntimeError(f"{args[0]} exited {figures['rc']}: {done.stderr[-2000:]}")
    return figures


def run(size: int, data: Path, model: Path | None, work: Path, reference: bool) -> dict:
    images = sorted(p for p in data.iterdir() if p.suffix.lower() in (".png", ".tif", ".tiff"))
    if not images:
        raise FileNotFoundError(f"{data}: no image tiles (PNG or GeoTIFF)")
    tiles = work / "tiles"
    tiles.mkdir()
    start = time.perf_counter()
    cells = mosaic_vrt(tiles / "mosaic.vrt", geotiff_copies(images, tiles), size)
    build_s = time.perf_counter() - start
    lines, prob = work / "roads.gpkg", work / "prob.tif"
    model_args = ["--model", model] if model else []
    seg = measured(work / "segment.json", "--cli", work / "segment.json", "segment", tiles / "mosaic.vrt",
                   "--out", lines, "--mask-out", prob, *model_args)
    vec = measured(work / "vectorise.json", "--cli", work / "vectorise.json", "vectorise", prob,
                   "--out", work / "again.gpkg")
    import pyogrio

    info = pyogrio.read_info(lines, force_feature_count=True)
    figures = {
        "size_px": size, "mosaic_cells": cells, "source_tiles": len(images), "mosaic_build_s": round(build_s, 1),
        "segment_s": seg["seconds"], "segment_mpx_s": round(size * size / 1e6 / seg["seconds"], 3),
        "segment_peak_rss_mb": seg["peak_rss_mb"], "lines": info["features"],
        "lines_file_mb": round(lines.stat().st_size / 1e6, 1), "prob_file_mb": round(prob.stat().st_size / 1e6, 1),
        "vectorise_s": vec["seconds"], "vectorise_peak_rss_mb": vec["peak_rss_mb"],
    }
    if reference:
        ref = measured(work / "reference.json", "--in-memory", work / "reference.json", prob)
        figures.update(reference_vectorise_s=ref["seconds"], reference_vectorise_peak_rss_mb=ref["peak_rss_mb"],
                       vectorise_over_reference_rss=round(vec["peak_rss_mb"] / ref["peak_rss_mb"], 3))
    return figures


def road_grid_mask(path: Path, size: int, step: int = 180) -> None:
    """A 0/1 GeoTIFF of streets every `step` px both ways (5 px wide, slightly wavy), written in strips."""
    import numpy as np
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    rng = np.random.default_rng(0)
    columns = np.zeros(size, bool)
    for c in range(step // 2, size - 3, step):
        columns[c - 2:c + 3] = True
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=1, dtype="uint8",
                       crs="EPSG:26986", transform=Affine(1, 0, ORIGIN[0], 0, -1, ORIGIN[1]), tiled=True,
                       blockxsize=256, blockysize=256, compress="deflate", BIGTIFF="IF_SAFER") as dst:
        for r0 in range(0, size, 1024):
            rows = np.arange(r0, min(r0 + 1024, size))
            strip = np.repeat(columns[None], len(rows), axis=0)
            street = (rows % step >= step // 2 - 2) & (rows % step <= step // 2 + 2)
            strip[street] = True
            strip &= rng.random(strip.shape) > 0.002  # a few holes: gaps to bridge, spurs to prune
            dst.write(strip.astype(np.uint8)[None], window=Window(0, r0, size, len(rows)))


def run_road_grid(size: int, work: Path) -> dict:
    mask = work / "grid.tif"
    road_grid_mask(mask, size)
    vec = measured(work / "vectorise.json", "--cli", work / "vectorise.json", "vectorise", mask,
                   "--out", work / "grid.gpkg")
    ref = measured(work / "reference.json", "--in-memory", work / "reference.json", mask)
    import pyogrio

    return {"road_grid_px": size, "lines": pyogrio.read_info(work / "grid.gpkg", force_feature_count=True)["features"],
            "vectorise_s": vec["seconds"], "vectorise_peak_rss_mb": vec["peak_rss_mb"],
            "reference_vectorise_s": ref["seconds"], "reference_vectorise_peak_rss_mb": ref["peak_rss_mb"],
            "vectorise_over_reference_rss": round(vec["peak_rss_mb"] / ref["peak_rss_mb"], 3)}


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return " ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "amx_tile") if f in flags)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.data.is_dir():
        print(f"error: {args.data}: folder of real tiles not found; pass --data DIR", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="roadseg-bench-large-"))
    try:
        if args.road_grid:
            figures = run_road_grid(args.road_grid, work)
        else:
            figures = run(args.size, args.data, args.model, work, not args.no_reference)
    except (RuntimeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures["cpu_flags"] = cpu_flags()
    for key, value in figures.items():
        print(f"{key:34s} {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
