"""A real web map for tests and screenshots: an XYZ tile pyramid cut by `gdal2tiles.py` from a real
aerial image, served over HTTP by `python -m http.server` bound to 127.0.0.1, and the QGIS layer
that shows it, as a user adds an XYZ connection.

The image is the repository's sample crop of a Massachusetts tile (`samples/`), given the 1 m
grid it was published at, in NAD83 / UTM 19N near Boston (42.4 N), where a Web Mercator unit is
0.74 m on the ground.
"""
from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "samples" / "massachusetts_19678630_crop.png"
SAMPLE_CRS = "EPSG:26919"
SAMPLE_ORIGIN = (327000.0, 4696000.0)  # upper-left corner, metres (UTM 19N, near Boston)
ZOOMS = "15-18"  # z18: 0.6 Mercator units = 0.44 m per pixel at 42.4 N, finer than the model's 1 m


def georeferenced_sample(path: Path, size: int | None = None) -> Path:
    """The sample crop (or its top-left `size` px) as a GeoTIFF on its 1 m UTM grid."""
    import rasterio
    from rasterio.windows import Window

    from tests.rasters import copy_window

    with rasterio.open(SAMPLE) as src:
        size = size or src.width
    return copy_window(SAMPLE, path, Window(0, 0, size, size), crs=SAMPLE_CRS, origin=SAMPLE_ORIGIN, gsd=1.0,
                       photometric="RGB")


def tile_pyramid(image: Path, folder: Path, zooms: str = ZOOMS) -> Path:
    """XYZ tiles (`folder/z/x/y.png`) of a georeferenced image, made by GDAL's gdal2tiles.py."""
    done = subprocess.run(["gdal2tiles.py", "--xyz", "-z", zooms, "-w", "none", "-q", "--processes=1",
                           str(image), str(folder)], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"gdal2tiles.py failed: {done.stderr[-2000:]}")
    return folder


@contextmanager
def tile_server(folder: Path) -> Iterator[str]:
    """Serve `folder` with `python -m http.server` on 127.0.0.1 (a free port); yields the base URL."""
    proc = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "--bind", "127.0.0.1", "--directory",
                             str(folder), "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()  # "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
        found = re.search(r"Serving HTTP on 127\.0\.0\.1 port (\d+)", line)
        if not found:
            raise RuntimeError(f"http.server did not start: {line!r}")
        yield f"http://127.0.0.1:{found.group(1)}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def xyz_source(base_url: str, zmin: int = 15, zmax: int = 18) -> str:
    """The data source of a QGIS XYZ layer ("wms" provider) for tiles under `base_url`."""
    return f"type=xyz&url={base_url}/%7Bz%7D/%7Bx%7D/%7By%7D.png&zmin={zmin}&zmax={zmax}"


def sample_extent_3857(size: int) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) in EPSG:3857 of the sample's top-left `size` px, a little inside."""
    from pyproj import Transformer

    x0, y0 = SAMPLE_ORIGIN
    to_3857 = Transformer.from_crs(SAMPLE_CRS, "EPSG:3857", always_xy=True)
    xs, ys = to_3857.transform([x0 + 8, x0 + size - 8, x0 + 8, x0 + size - 8],
                               [y0 - 8, y0 - 8, y0 - size + 8, y0 - size + 8])
    return max(xs[0], xs[2]), max(ys[2], ys[3]), min(xs[1], xs[3]), min(ys[0], ys[1])
