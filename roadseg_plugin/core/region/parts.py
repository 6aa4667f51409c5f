"""The files of a region run: probability parts (COGs), reading across them, the VRT over them.

Every part is written under a temporary name beside its destination (`atomic.temporary_sibling`,
named after it and the writing process, so a killed worker's leftovers are recognised and
removed by a later run on that machine) and renamed into place once complete: a part that
exists is whole, and a chunk run twice (a worker lost mid-run) replaces its part, never adds one.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np

from ..atomic import temporary_sibling
from ..errors import OutputError
from ..onnx_backend import checkpoint_digest as sha256  # one file hash for models and parts

COG_OPTIONS = {"compress": "DEFLATE", "predictor": "YES", "blocksize": "256", "bigtiff": "IF_SAFER"}


def _has_cog() -> bool:
    import rasterio

    with rasterio.Env() as env:
        return "COG" in env.drivers()


def finish_part(staged: Path, final: Path) -> str:
    """Turn the engine-style GeoTIFF `staged` into `final` (a COG when GDAL has the driver,
    else the tiled GeoTIFF as is) atomically; returns the part's sha256."""
    import rasterio.shutil
    from rasterio.errors import RasterioError

    out = staged
    if _has_cog():
        out = temporary_sibling(final, ".cog.tif")
        try:
            rasterio.shutil.copy(staged, out, driver="COG", **COG_OPTIONS)
        except RasterioError as exc:
            out.unlink(missing_ok=True)
            raise OutputError(final, f"cannot write the part ({str(exc).splitlines()[0][:100]})",
                              "check the free disk space in the output folder") from None
        staged.unlink(missing_ok=True)
    digest = sha256(out)
    os.replace(out, final)
    return digest


def write_atomic(final: Path, data: bytes) -> str:
    """Write `data` to `final` through a temporary sibling; returns its sha256."""
    tmp = temporary_sibling(final)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return hashlib.sha256(data).hexdigest()


class PartsMosaic:
    """Reads windows of an input's probability grid from the parts that cover them.

    Args:
        parts: (window (r0, r1, c0, c1) on the input's grid, part file) pairs.
    """

    def __init__(self, parts: list[tuple[tuple[int, int, int, int], str]]) -> None:
        import rasterio

        self.parts = [(window, rasterio.open(path)) for window, path in parts]

    def read(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """uint8 values of grid rows r0:r1, columns c0:c1 (0 where no part covers them)."""
        from rasterio.windows import Window

        out = np.zeros((r1 - r0, c1 - c0), np.uint8)
        for (pr0, pr1, pc0, pc1), src in self.parts:
            y0, y1, x0, x1 = max(r0, pr0), min(r1, pr1), max(c0, pc0), min(c1, pc1)
            if y1 > y0 and x1 > x0:
                out[y0 - r0:y1 - r0, x0 - c0:x1 - c0] = src.read(1, window=Window(x0 - pc0, y0 - pr0, x1 - x0, y1 - y0))
        return out

    def close(self) -> None:
        for _, src in self.parts:
            src.close()

    def __enter__(self) -> PartsMosaic:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def build_vrt(vrt: Path, parts: list[tuple[tuple[int, int, int, int], str]], width: int, height: int,
              crs: Any, transform: Any, tags: dict[str, str]) -> Path:
    """A VRT mosaic of one input's parts (they share its grid), with the engine's tags, written atomically.

    `parts` holds absolute paths; the VRT names them relative to its folder (so the output
    folder can be moved or mounted elsewhere). `osgeo.gdal.BuildVRT` makes it when the
    bindings are importable and the grid is georeferenced north-up; else the XML is written here
    (the same layout: one source per part, the parts' masks as the VRT's mask).
    """
    import affine

    tmp = temporary_sibling(vrt, ".vrt")
    try:
        north_up = transform is not None and transform.b == transform.d == 0 and transform.e < 0
        georeferenced = transform is not None and transform != affine.Affine.identity()
        if not (north_up and georeferenced and _build_with_gdal(tmp, parts, tags)):
            relative = [(window, os.path.relpath(path, vrt.parent)) for window, path in parts]
            tmp.write_text(vrt_xml(relative, width, height, crs, transform if georeferenced else None, tags))
        os.replace(tmp, vrt)
    finally:
        tmp.unlink(missing_ok=True)
    return vrt


def _build_with_gdal(tmp: Path, parts: list, tags: dict[str, str]) -> bool:
    """BuildVRT (it names sources under the VRT's folder relative to it); False when unavailable."""
    try:
        from osgeo import gdal
    except ImportError:
        return False
    gdal.PushErrorHandler("CPLQuietErrorHandler")  # a failure returns None: the XML is written instead
    try:
        ds = gdal.BuildVRT(str(tmp), [path for _, path in parts])
        if ds is None:
            return False
        ds.SetMetadata(tags)
        ds.GetRasterBand(1).SetDescription(tags.get("ROADSEG_VALUES", ""))
        ds = None  # written on close
    finally:
        gdal.PopErrorHandler()
    return True


def vrt_xml(parts: list[tuple[tuple[int, int, int, int], str]], width: int, height: int, crs: Any,
            transform: Any, tags: dict[str, str]) -> str:
    """The XML of `build_vrt` without GDAL's bindings (`transform` None: pixel coordinates)."""
    head = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">']
    if crs is not None:
        head.append(f'  <SRS dataAxisToSRSAxisMapping="1,2">{escape(crs.to_wkt())}</SRS>')
    if transform is not None:
        t = transform
        head.append(f"  <GeoTransform>{t.c!r}, {t.a!r}, {t.b!r}, {t.f!r}, {t.d!r}, {t.e!r}</GeoTransform>")
    head.append("  <Metadata>" + "".join(f'<MDI key="{escape(k)}">{escape(v)}</MDI>' for k, v in tags.items())
                + "</Metadata>")

    def sources(band: str) -> list[str]:
        out = []
        for (r0, r1, c0, c1), path in parts:
            w, h = c1 - c0, r1 - r0
            out.append(f'      <SimpleSource><SourceFilename relativeToVRT="1">{escape(path)}</SourceFilename>'
                       f"<SourceBand>{band}</SourceBand>"
                       f'<SourceProperties RasterXSize="{w}" RasterYSize="{h}" DataType="Byte" '
                       f'BlockXSize="256" BlockYSize="256"/><SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
                       f'<DstRect xOff="{c0}" yOff="{r0}" xSize="{w}" ySize="{h}"/></SimpleSource>')
        return out

    body = ['  <VRTRasterBand dataType="Byte" band="1">',
            f"    <Description>{escape(tags.get('ROADSEG_VALUES', ''))}</Description>", *sources("1"),
            "  </VRTRasterBand>", '  <MaskBand><VRTRasterBand dataType="Byte">', *sources("mask,1"),
            "  </VRTRasterBand></MaskBand>", "</VRTDataset>"]
    return "\n".join(head + body) + "\n"
