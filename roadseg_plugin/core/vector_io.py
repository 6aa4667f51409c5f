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


def _check_written(path: Path, driver: str, features: int, geometries: int) -> None:
    """The file just written holds every feature, and a GeoPackage its R-tree spatial index."""
    import pyogrio

    found = pyogrio.read_info(path, force_feature_count=True)["features"]
    if 0 <= found != features:  # -1: the driver cannot tell
        raise IncompleteLayerError(f"{found} of {features} features were written")
    if driver == "GPKG":
        _check_gpkg_index(path, geometries)


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


class LineWriter:
    """A line layer written batch by batch into `folder` (a staging folder), checked at the end.

    GeoPackages and Shapefiles are appended to in place; GeoJSON and FlatGeobuf (whose GDAL
    drivers cannot append without holding the file) are gathered in a GeoPackage beside them and
    converted in one streaming pass (`pyogrio.open_arrow` -> `write_arrow`) at `finish`. Memory
    is one batch, whatever the number of lines. Errors name `target`, the file the user asked for.
    """

    def __init__(self, target: Path, folder: Path, driver: str | None = None) -> None:
        self.target, self.folder = Path(target), Path(folder)
        self.driver = driver_for(self.target, driver)
        self.staged = self.folder / self.target.name
        direct = self.driver in ("GPKG", "ESRI Shapefile")
        self.path = self.staged if direct else self.folder / "lines.gpkg"
        self.features = self.geometries = 0
        self.crs = None
        self._started = False

    def _failed(self, exc: BaseException) -> OutputError:
        said = _said(exc, self.folder, self.target.parent).replace(str(self.target.parent / self.path.name),
                                                                     str(self.target))
        return OutputError(self.target, f"writing the {self.driver} layer failed ({said})",
                           "check free disk space and that the file is not open elsewhere")

    def append(self, gdf) -> None:
        """Add the lines of one batch (an empty batch only sets the layer's fields and CRS)."""
        _check_fields(gdf, self.target)
        self.crs = gdf.crs if self.crs is None else self.crs
        if not len(gdf) and self._started:
            return
        driver = self.driver if self.path == self.staged else "GPKG"
        try:
            gdf.to_file(self.path, driver=driver, engine="pyogrio", append=self._started, geometry_type="LineString")
        except Exception as exc:  # noqa: BLE001 - pyogrio/GDAL raise many kinds of errors
            raise self._failed(exc) from exc
        self._started = True
        self.features += len(gdf)
        self.geometries += int((gdf.geometry.notna() & ~gdf.geometry.is_empty).sum())

    def finish(self, empty=None) -> list[Path]:
        """Convert (GeoJSON, FlatGeobuf) and check the layer; the files written, main file last.

        `empty`: the (empty) frame whose fields and CRS a layer without lines gets.
        """
        import pyogrio

        if not self._started and empty is not None:
            self.append(empty)
        try:
            if self.path != self.staged:
                with pyogrio.open_arrow(self.path, use_pyarrow=False) as (meta, reader):
                    pyogrio.write_arrow(reader, self.staged, driver=self.driver, geometry_type="LineString",
                                        geometry_name=meta["geometry_name"] or "geometry", crs=meta["crs"],
                                        layer=self.target.stem)
                self.path.unlink()
            _check_written(self.staged, self.driver, self.features, self.geometries)
        except Exception as exc:  # noqa: BLE001 - pyogrio/GDAL raise many kinds of errors
            raise self._failed(exc) from exc
        if self.features == 0:
            log.warning("%s: no roads found; wrote an empty layer", self.target)
        return sorted(self.folder.iterdir(), key=lambda f: f.name == self.target.name)


def check_target(target: Path) -> None:
    """Refuse a line file whose folder is missing or whose name is taken by a folder."""
    folder = target.parent
    if not folder.is_dir():
        raise OutputError(target, f"the folder {folder} does not exist",
                          "create it first or choose an existing folder")
    if target.is_dir():
        raise OutputError(target, "a folder with this name is in the way", "choose another file name")


def placed_files(staged: list[Path], target: Path) -> list[tuple[Path, Path]]:
    """(staged file, where it goes) for the files of a finished layer."""
    return [(f, target.parent / f.name) for f in staged]


def remove_stale_sidecars(staged: list[Path], target: Path) -> None:
    """After a Shapefile moved into place: drop sidecars of the old one that would describe the new."""
    if target.suffix.lower() != ".shp":
        return
    written = {f.name for f in staged}
    for ext in _SHP_STALE:
        old = target.with_suffix(ext)
        if old.name not in written and old.exists():
            old.unlink()


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
    from .commit import replace_together

    target = Path(path)
    driver_for(target, driver)
    check_target(target)
    _check_fields(gdf, target)
    try:
        tmp = temporary_folder(target)
    except OSError as exc:
        raise OutputError(target, f"cannot write in the folder {target.parent} ({exc.strerror or exc})",
                          "choose a folder you can write to, or fix its permissions") from exc
    try:
        writer = LineWriter(target, tmp, driver)
        writer.append(gdf)
        staged = writer.finish()
        try:
            replace_together(placed_files(staged, target))
        except OSError as exc:
            raise OutputError(target, f"cannot move the finished file into place ({exc.strerror or exc})",
                              "check that the file is not open elsewhere and the folder is writable") from exc
        remove_stale_sidecars(staged, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if len(gdf):
        log.info("%s: wrote %d road lines", target, len(gdf))
    return target
