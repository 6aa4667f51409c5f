"""Checks of a run's outputs, before any work: never an input under any of its names, never
each other, a known format, an existing writable folder, a name and path the file system holds;
and the run's lock on them while it writes (`commit.output_lock`).

Every command (`segment`, `vectorise`, `export-onnx`, `quantize`), the region run and the
Processing algorithms check their outputs here, by the one rule of `atomic.dataset_files`.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .atomic import dataset_files, same_file
from .errors import OutputError
from .params import RASTER_OUTPUT_SUFFIXES


def check_outputs(outputs: dict[str, Path | None], inputs: Iterable[str | os.PathLike | None]) -> None:
    """Refuse outputs that would overwrite an input or each other, or cannot be written.

    Args:
        outputs: role ("lines", "probability raster", "ONNX model" ...) -> path, None skipped.
        inputs: dataset names that must survive the run (raster, model, ...). Every file a
            name reads counts (`atomic.dataset_files`: GDAL prefixes, vrt://, /vsi..., VRT
            sources, sidecars), and for a checkpoint its cached ONNX exports too; names that are
            not local files (web layers) are skipped.

    Raises:
        OutputError: one line naming the output and the fix.
    """
    from .onnx_backend import is_export_of

    names = [i for i in inputs if i is not None]
    files = [f for name in names for f in dataset_files(name)]
    models = [f for f in files if f.suffix.lower() == ".pt"]
    chosen = [(role, Path(path)) for role, path in outputs.items() if path is not None]
    for i, (role, path) in enumerate(chosen):
        check_path_length(path)
        for written in output_files(path):
            for source in files:
                if same_file(written, source):
                    raise OutputError(path, f"the {role} would overwrite the input {source}",
                                      "choose another output name; inputs are never replaced")
            for model in models:
                if is_export_of(written, model):
                    raise OutputError(path, f"the {role} would overwrite {written.name}, the ONNX model cached for "
                                      f"the model {model}", "choose another output name; inputs are never replaced")
        for other_role, other in chosen[:i]:
            if same_file(path, other):
                raise OutputError(path, f"the {role} and the {other_role} are the same file",
                                  "give each output its own name")
        folder = path.parent
        if path.is_dir():
            raise OutputError(path, "a folder with this name is in the way", "choose a file name")
        if folder.exists() and not folder.is_dir():
            raise OutputError(path, f"{folder} is a file, not a folder", "choose an output in an existing folder")
        if not folder.is_dir():
            raise OutputError(path, f"the folder {folder} does not exist", "create it first or choose another folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputError(path, f"cannot write in the folder {folder}", "choose a folder you can write to")


SHAPEFILE_SIDECARS = (".shx", ".dbf", ".prj", ".cpg")
TEMPORARY_ROOM = 160  # bytes of path a temporary folder beside an output adds (see `atomic`)
JOURNAL_ROOM = 8  # "-journal": GDAL's SQLite journal beside a GeoPackage


def output_files(path: Path) -> list[Path]:
    """The files writing `path` makes: a Shapefile's sidecars too."""
    if path.suffix.lower() == ".shp":
        return [path, *(path.with_suffix(ext) for ext in SHAPEFILE_SIDECARS)]
    return [path]


def check_path_length(path: Path) -> None:
    """Refuse an output name or path the file system cannot hold with its temporaries.

    Raises:
        OutputError: naming the length and the limit.
    """
    absolute = os.fsencode(os.path.abspath(path))
    name = os.fsencode(path.name)
    name_max, path_max = _limits(path.parent)
    shown = str(path) if len(str(path)) <= 300 else f"{str(path)[:150]}...{str(path)[-100:]}"
    if len(name) > name_max - JOURNAL_ROOM:
        raise OutputError(shown, f"the file name is {len(name)} bytes long, over the "
                          f"{name_max - JOURNAL_ROOM} this folder takes ({name_max}, less room for GDAL's journal)",
                          "choose a shorter name")
    if len(absolute) + TEMPORARY_ROOM > path_max:
        raise OutputError(shown, f"the path is {len(absolute)} bytes long, over the "
                          f"{path_max - TEMPORARY_ROOM} this system takes ({path_max}, less room for temporary "
                          "files beside it)", "choose a shorter path")


def _limits(folder: Path) -> tuple[int, int]:
    """(longest file name, longest path) in bytes for `folder` (or the nearest folder that exists)."""
    probe = os.path.abspath(folder)
    while len(os.fsencode(probe)) > 4000 or not os.path.isdir(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    try:
        return os.pathconf(probe, "PC_NAME_MAX"), os.pathconf(probe, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):  # Windows: no pathconf
        return 255, 260 if os.name == "nt" else 4096


def check_probability_output(path: Path | None) -> None:
    if path is not None and path.suffix.lower() not in RASTER_OUTPUT_SUFFIXES:
        raise OutputError(path, f"the probability raster is a GeoTIFF and cannot be written as {path.suffix!r}",
                          "name it something.tif")


@contextmanager
def locked_outputs(*outputs: Path | None) -> Iterator[None]:
    """The run's claim on its outputs (`commit.output_lock`), refused in RoadSeg's words."""
    from .commit import OutputBusyError, output_lock

    try:
        with output_lock(*outputs):
            yield
    except OutputBusyError as exc:
        raise OutputError(exc.path, f"is being written by {exc.owner} right now",
                          "wait for that run to finish, or choose another output name") from None
