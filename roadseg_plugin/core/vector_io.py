"""Atomic writers for road line layers: GeoPackage, Shapefile, GeoJSON, FlatGeobuf.

A layer is written into a temporary folder beside the target (named after it, see
`atomic.temporary_folder`) and then moved into place file by file with `os.replace`, so readers
never see a half-written file and a failure leaves nothing at the target. Before the move the
written layer is checked: it must hold every feature, and a GeoPackage its spatial index (GDAL
builds it when the file is closed and does not report a failure then, e.g. a full disk). Field
names stay within 10 characters (Shapefile DBF).
"""
from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from pathlib import Path

from .atomic import temporary_folder
from .errors import OutputError
from .params import VECTOR_EXTENSIONS, VECTOR_FORMATS

log = logging.getLogger(__name__)

_SHP_SIDECARS = (".shx", ".dbf", ".prj", ".cpg")
_SHP_STALE = (".prj", ".cpg", ".qix", ".sbn", ".sbx", ".qpj")  # would describe the old layer


def _formats_text() -> str:
    return ", ".join(f"{alias} ({drv}, {ext})" for alias, (drv, ext) in VECTOR_FORMATS.items())


def driver_for(path: str | Path, driver: str | None = None) -> str:
    """The GDAL driver for `path`: from `driver` (alias or GDAL name) or the file extension.

    Raises:
        OutputError: unknown driver or extension; the message lists the formats.
    """
    path = Path(path)
    if driver is not None:
        key = str(driver).strip().lower()
        for alias, (name, _) in VECTOR_FORMATS.items():
            if key in (alias, name.lower()):
                if alias == "shp" and path.suffix.lower() != ".shp":
                    raise OutputError(path, "a Shapefile must end in .shp", "name the output something.shp")
                return name
        raise OutputError(path, f"unknown vector format {driver!r}", f"use one of {_formats_text()}")
    suffix_alias = VECTOR_EXTENSIONS.get(path.suffix.lower())
    if suffix_alias is None:
        raise OutputError(path, f"cannot tell the vector format from the extension {path.suffix!r}",
                          f"use one of {_formats_text()}, or pass driver=")
    return VECTOR_FORMATS[suffix_alias][0]


def _check_fields(gdf, target: Path) -> None:
    too_long = [c for c in gdf.columns if c != gdf.geometry.name and len(str(c)) > 10]
    if too_long:
        raise OutputError(target, f"field names longer than 10 characters: {too_long}",
                          "rename them (Shapefile keeps only 10)")


def _said(exc: BaseException, tmp: Path, folder: Path) -> str:
    """The first line of a GDAL message, naming the target's folder instead of the temporary one."""
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    return lines[0].replace(str(tmp), str(folder))[:200]


class IncompleteLayerError(Exception):
    """The written file does not hold what was written (raised inside `write_lines` only)."""


def _check_written(path: Path, driver: str, gdf) -> None:
    """The file just written holds every feature, and a GeoPackage its R-tree spatial index."""
    import pyogrio

    features = pyogrio.read_info(path, force_feature_count=True)["features"]
    if 0 <= features != len(gdf):  # -1: the driver cannot tell
        raise IncompleteLayerError(f"{features} of {len(gdf)} features were written")
    if driver == "GPKG":
        _check_gpkg_index(path, int((gdf.geometry.notna() & ~gdf.geometry.is_empty).sum()))


def _check_gpkg_index(path: Path, geometries: int) -> None:
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        tables = connection.execute("SELECT table_name, column_name FROM gpkg_geometry_columns").fetchall()
        for table, column in tables:
            rtree = f"rtree_{table}_{column}"
            if not connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                      (rtree,)).fetchone():
                raise IncompleteLayerError("the spatial index was not written")
            indexed = connection.execute(f'SELECT count(*) FROM "{rtree}"').fetchone()[0]
            if indexed != geometries:
                raise IncompleteLayerError(f"the spatial index holds {indexed} of {geometries} lines")
        if connection.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise IncompleteLayerError("the file is damaged")
    finally:
        connection.close()


def write_lines(gdf, path: str | Path, driver: str | None = None) -> Path:
    """Write a GeoDataFrame of LineStrings atomically; returns the written file's path.

    The format comes from `driver` (`gpkg`, `shp`, `geojson`, `fgb` or a GDAL driver name)
    or else from the extension (.gpkg, .shp, .geojson/.json, .fgb). An existing file is
    replaced (a GeoPackage as a whole file, a Shapefile with all its sidecars). An empty
    frame writes a valid empty LineString layer with the same fields and CRS (GeoJSON has
    no schema: an empty one keeps only its CRS) and logs a warning. FlatGeobuf files get a
    spatial index, so their features come back in spatial order.

    Raises:
        OutputError: unknown format, missing or unwritable folder, or the write failed or was
            incomplete (a feature or a GeoPackage's spatial index missing); nothing is left at
            the target in any of these cases and a file already there is kept.
    """
    target = Path(path)
    name = driver_for(target, driver)
    folder = target.parent
    if not folder.is_dir():
        raise OutputError(target, f"the folder {folder} does not exist",
                          "create it first or choose an existing folder")
    if target.is_dir():
        raise OutputError(target, "a folder with this name is in the way", "choose another file name")
    _check_fields(gdf, target)
    try:
        tmp = temporary_folder(target)
    except OSError as exc:
        raise OutputError(target, f"cannot write in the folder {folder} ({exc.strerror or exc})",
                          "choose a folder you can write to, or fix its permissions") from exc
    try:
        staged = tmp / target.name
        try:
            gdf.to_file(staged, driver=name, engine="pyogrio", geometry_type="LineString")
            _check_written(staged, name, gdf)
        except Exception as exc:  # noqa: BLE001 - pyogrio/GDAL raise many kinds of errors
            raise OutputError(target, f"writing the {name} layer failed ({_said(exc, tmp, folder)})",
                              "check free disk space and that the file is not open elsewhere") from exc
        files = sorted(tmp.iterdir(), key=lambda f: f.name == target.name)  # main file last
        if name == "ESRI Shapefile":
            written = {f.name for f in files}
            for ext in _SHP_STALE:
                old = target.with_suffix(ext)
                if old.name not in written and old.exists():
                    old.unlink()
        try:
            for f in files:
                os.replace(f, folder / f.name)
        except OSError as exc:
            raise OutputError(target, f"cannot move the finished file into place ({exc.strerror or exc})",
                              "check that the file is not open elsewhere and the folder is writable") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if len(gdf) == 0:
        log.warning("%s: no roads found; wrote an empty layer", target)
    else:
        log.info("%s: wrote %d road lines", target, len(gdf))
    return target
