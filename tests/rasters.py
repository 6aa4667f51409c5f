"""The tests' one raster writer: every GeoTIFF, PNG, JPEG or GeoPackage raster a test makes is
written here (`tests/test_raster_writer.py` fails on a `rasterio.open(..., "w")` anywhere else).

`write_raster(path, data, ...)` writes a whole array; `raster_writer(path, ...)` opens a file
for writing windows (large mosaics). The georeferencing is `transform`, or `origin` (the
top-left corner) and `gsd` (square pixels, north up); neither: an image without one.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

DRIVERS = {".tif": "GTiff", ".tiff": "GTiff", ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".gpkg": "GPKG"}
UTM19_ORIGIN = (330000.0, 4690000.0)  # a 1 m grid in EPSG:32619 (Massachusetts)


@contextmanager
def raster_writer(path: str | os.PathLike, *, width: int, height: int, count: int, dtype: Any = "uint8",
                  driver: str | None = None, crs: Any = None, transform: Any = None, gsd: float | None = None,
                  origin: tuple[float, float] | None = None, **creation: Any) -> Iterator[Any]:
    """An open rasterio dataset to write into (the driver from the suffix unless given; parent
    folders made)."""
    import rasterio
    from affine import Affine

    path = Path(path)
    driver = driver or DRIVERS[path.suffix.lower()]
    if transform is None and (gsd is not None or origin is not None):
        x0, y0 = origin if origin is not None else (0.0, 0.0)
        step = 1.0 if gsd is None else gsd
        transform = Affine(step, 0, x0, 0, -step, y0)
    profile: dict[str, Any] = dict(driver=driver, width=width, height=height, count=count, dtype=np.dtype(dtype).name)
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile, **creation) as dst:
        yield dst


def write_raster(path: str | os.PathLike, data: np.ndarray, *, valid: np.ndarray | None = None,
                 tags: dict[str, str] | None = None, colorinterp: Sequence[Any] | None = None,
                 gcps: tuple[list, Any] | None = None, rpcs: Any = None, **options: Any) -> Path:
    """Write `data` ((bands, rows, cols), or (rows, cols) for one band) to `path`; returns it.

    `options` go to `raster_writer` (georeferencing, driver, nodata, creation options). A
    `src.profile` may be passed as options: its size, band count and type must be the data's.
    `valid`: the dataset mask (non-zero: valid); `tags`: dataset tags; `colorinterp`: one per
    band; `gcps`: (ground control points, their CRS); `rpcs`: rational polynomial coefficients.
    """
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    shape = {"count": data.shape[0], "height": data.shape[1], "width": data.shape[2]}
    for key, value in shape.items():  # a copied profile must describe this data
        given = options.pop(key, value)
        assert given == value, f"{key}: the options say {given}, the data has {value}"
    given_dtype = options.pop("dtype", data.dtype)
    assert np.dtype(given_dtype) == data.dtype, f"dtype: the options say {given_dtype}, the data is {data.dtype}"
    with raster_writer(path, **shape, dtype=data.dtype, **options) as dst:
        dst.write(data)
        if valid is not None:
            dst.write_mask(np.where(np.asarray(valid) > 0, 255, 0).astype(np.uint8))
        if tags:
            dst.update_tags(**tags)
        if colorinterp is not None:
            dst.colorinterp = list(colorinterp)
        if gcps is not None:
            dst.gcps = gcps
        if rpcs is not None:
            dst.rpcs = rpcs
    return Path(path)


def write_mask_png(path: str | os.PathLike, mask: np.ndarray) -> Path:
    """A road mask as an 8-bit PNG: 255 road, 0 background (the training data's form)."""
    return write_raster(path, (np.asarray(mask) > 0).astype(np.uint8) * 255)


def write_road_geotiff(path: str | os.PathLike, size: int = 96, seed: int = 0, crs: str = "EPSG:32619",
                       origin: tuple[float, float] = UTM19_ORIGIN, gsd: float = 1.0) -> tuple[Path, np.ndarray]:
    """A small georeferenced RGB GeoTIFF of drawn roads; (path, road mask)."""
    from tests.conftest import draw_roads, road_image

    rng = np.random.default_rng(seed)
    mask = draw_roads(size, rng)
    return write_raster(path, road_image(mask, rng), crs=crs, origin=origin, gsd=gsd), mask


def copy_window(source: str | os.PathLike, path: str | os.PathLike, window: Any = None,
                bands: Sequence[int] | None = None, **options: Any) -> Path:
    """`window` (all of it when None) of `source` written to `path` with `options` (e.g. a CRS
    and a transform the source lacks)."""
    import rasterio

    with rasterio.open(source) as src:
        data = src.read(list(bands) if bands else None, window=window)
    return write_raster(path, data, **options)
