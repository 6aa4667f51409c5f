"""Which rasters a region run segments, and how each is cut into chunks and line groups.

Everything here runs in the client, before any work is sent to the cluster: the inputs are
expanded (files, folders, globs) and opened the way the engine opens them (resampled to the
model's GSD, cropped to the extent), so a bad raster is reported before the first chunk runs.

Chunk borders are tile-aligned on the grid the engine reads: a border lies where a model tile
of the whole-raster run starts (raster column `k * stride - overlap // 2`). A chunk then predicts
exactly the tiles of the single-process run that touch it (one tile row and column more than its
share, the ones straddling its far borders) and blends them with the whole raster's weights,
so its pixels equal the single-process ones; no halo beyond those tiles is needed.

Line groups are rectangles of the vectoriser's blocks (1024 px); each needs the parts of the
chunks under it plus the vectoriser's halo (64 px), and no more.
"""
from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass, field, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

from ..errors import ParamError, RasterError
from ..params import BLOCK_SIZE, RunSettings, VectoriseParams

DEFAULT_CHUNK = 8192
MIN_CHUNK = 256
RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".png", ".jpg", ".jpeg", ".jp2", ".img")
_GLOB_CHARS = "*?["


@dataclass(frozen=True)
class Chunk:
    """One window (rows r0:r1, columns c0:c1) of an input's grid, predicted by one task."""

    row: int
    col: int
    window: tuple[int, int, int, int]

    @property
    def name(self) -> str:
        return f"r{self.row:04d}_c{self.col:04d}"

    @property
    def pixels(self) -> int:
        r0, r1, c0, c1 = self.window
        return (r1 - r0) * (c1 - c0)


@dataclass(frozen=True)
class Group:
    """Vectoriser blocks (rows r0:r1, columns c0:c1) whose skeleton pieces one task collects.

    `chunks`: indices (into the input's chunks) of the parts under the group and its halo.
    """

    row: int
    col: int
    core: tuple[int, int, int, int]
    chunks: tuple[int, ...]

    @property
    def name(self) -> str:
        return f"lines_r{self.row:04d}_c{self.col:04d}"


@dataclass
class InputPlan:
    """One input raster: its grid as the engine reads it, its chunks and line groups."""

    source: str
    key: str
    width: int
    height: int
    crs: Any
    transform: Any
    dtype: str
    normaliser: Any  # engine.InputNormaliser for this raster (picklable)
    chunks: list[Chunk] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def part(self, name: str, suffix: str = ".tif") -> str:
        """A part's path relative to the output folder."""
        return f"parts/{self.key}/{name}{suffix}"


def expand_inputs(items: list[str | os.PathLike]) -> list[str]:
    """Files, folders (their rasters, not recursive) and globs -> raster names, absolute, sorted
    per item and without duplicates. Names that are no file (GDAL dataset names, missing files)
    pass through for the raster check to judge.

    Raises:
        RasterError: a folder without rasters, or a glob that matches no file.
    """
    found: list[str] = []
    for item in items:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            files = sorted(str(p.resolve()) for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES)
            if not files:
                raise RasterError(path, "the folder holds no raster files (" + ", ".join(RASTER_SUFFIXES) + ")",
                                  "pass a folder of rasters, the rasters themselves or a glob such as 'tiles/*.tif'")
            found += files
        elif path.exists():
            found.append(str(path.resolve()))
        elif any(c in text for c in _GLOB_CHARS):
            files = sorted(str(Path(p).resolve()) for p in glob.glob(text, recursive=True) if os.path.isfile(p))
            if not files:
                raise RasterError(text, "no file matches this pattern",
                                  "check the pattern (quote it so that the shell leaves it to RoadSeg)")
            found += files
        else:
            found.append(text)
    if not found:
        raise RasterError("", "no input raster given", "pass rasters, a folder or a glob")
    return list(dict.fromkeys(found))


def input_key(source: str) -> str:
    """A folder-safe name unique to the input: its stem and a hash of its full name."""
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(source).stem)[:40] or "raster"
    return f"{stem}-{hashlib.sha1(source.encode('utf-8', 'replace')).hexdigest()[:8]}"


def chunk_borders(length: int, tile: int, overlap: int, chunk: int) -> list[int]:
    """Chunk borders along one axis: tile starts about `chunk` px apart, then the raster's end.

    The chunk is rounded to a whole number of tile strides (tile - overlap); a last chunk under
    a quarter of that joins the one before (a sliver would cost a whole extra tile row).
    """
    stride, margin = tile - overlap, overlap // 2
    step = max(1, round(chunk / stride)) * stride
    borders = [0]
    while len(borders) * step - margin < length:
        borders.append(len(borders) * step - margin)
    if len(borders) > 1 and length - borders[-1] < step // 4:
        borders.pop()
    return [*borders, length]


def plan_chunks(height: int, width: int, tile: int, overlap: int, chunk: int) -> list[Chunk]:
    rows, cols = chunk_borders(height, tile, overlap, chunk), chunk_borders(width, tile, overlap, chunk)
    return [Chunk(i, j, (r0, r1, c0, c1)) for i, (r0, r1) in enumerate(pairwise(rows))
            for j, (c0, c1) in enumerate(pairwise(cols))]


def plan_groups(height: int, width: int, chunks: list[Chunk], block: int, halo: int, chunk: int) -> list[Group]:
    """Rectangles of about `chunk` px made of whole vectoriser blocks, with the chunks they read."""
    step = max(1, round(chunk / block)) * block
    groups = []
    for i, r0 in enumerate(range(0, height, step)):
        for j, c0 in enumerate(range(0, width, step)):
            r1, c1 = min(r0 + step, height), min(c0 + step, width)
            need = (r0 - halo, r1 + halo, c0 - halo, c1 + halo)
            under = tuple(k for k, ch in enumerate(chunks) if ch.window[0] < need[1] and ch.window[1] > need[0]
                          and ch.window[2] < need[3] and ch.window[3] > need[2])
            groups.append(Group(i, j, (r0, r1, c0, c1), under))
    return groups


def check_chunk(chunk: int) -> int:
    if isinstance(chunk, bool) or int(chunk) != chunk or chunk < MIN_CHUNK:
        raise ParamError("chunk", chunk, f"must be a whole number of pixels, at least {MIN_CHUNK}",
                         f"e.g. {DEFAULT_CHUNK}")
    return int(chunk)


def inspect_input(source: str, settings: RunSettings) -> InputPlan:
    """Open `source` as the engine will and describe its grid (no chunks yet).

    The engine's value normalisation (`engine.make_normaliser`: stretches from statistics of the
    whole raster) is made here, once, and handed to every chunk, so chunks normalise exactly
    as the single-process run does without each reading the whole raster again.

    Raises:
        RasterError: unreadable, unsupported bands, or outside the extent.
    """
    from ..engine import make_normaliser
    from ..readers import choose_bands, open_raster

    meta, bands = settings.meta, settings.band_list
    with open_raster(source, gsd_m=meta.gsd_m, bands=bands, extent=settings.extent,
                     native_gsd_m=settings.gsd) as reader:
        chosen = choose_bands(reader, meta.in_channels, bands)
        normaliser, notes = make_normaliser(reader, meta, chosen)
        return InputPlan(source, input_key(source), reader.width, reader.height, reader.crs, reader.transform,
                         reader.dtype, normaliser, warnings=list(reader.warnings) + list(notes))


def plan_inputs(sources: list[str], settings: RunSettings, vectorise: VectoriseParams, chunk: int,
                skip_bad: bool = False) -> tuple[list[InputPlan], list[str]]:
    """Check every input and plan its chunks and line groups.

    Returns:
        (the plans, notes about inputs left out: unreadable ones with `skip_bad`, ones outside
        the extent).

    Raises:
        RasterError: unreadable inputs (all of them listed) unless `skip_bad`, or none left.
    """
    block = vectorise.block_size or BLOCK_SIZE
    plans, bad, notes = [], [], []
    for source in sources:
        try:
            plan = inspect_input(source, settings)
        except RasterError as exc:
            if settings.extent is not None and _readable(source, settings):
                notes.append(f"{source}: outside the extent; left out")
                continue
            bad.append((source, exc))
            continue
        plan.chunks = plan_chunks(plan.height, plan.width, settings.tile, settings.overlap, chunk)
        plan.groups = plan_groups(plan.height, plan.width, plan.chunks, block, vectorise.halo, chunk)
        plans.append(plan)
    if bad and not skip_bad:
        listed = "; ".join(f"{s} ({e.problem})" for s, e in bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5
                                                                         else "")
        raise RasterError(bad[0][0] if len(bad) == 1 else "",
                          f"{len(bad)} of {len(sources)} inputs cannot be used: {listed}"
                          if len(bad) > 1 else bad[0][1].problem,
                          "fix or remove them, or pass --skip-bad to segment the others" if len(plans)
                          else bad[0][1].fix)
    notes += [f"{s}: skipped ({e.problem})" for s, e in bad]
    if not plans:
        raise RasterError("", "no input raster is left to segment", "; ".join(notes) or "check the inputs")
    keys = [p.key for p in plans]
    if len(set(keys)) != len(keys):  # two names with the same stem and hash: practically never
        raise RasterError("", "two inputs map to the same part folder", "rename one of them")
    return plans, notes


def _readable(source: str, settings: RunSettings) -> bool:
    """Whether `source` opens without the extent (so the extent was what failed)."""
    try:
        inspect_input(source, replace(settings, extent=None))
    except RasterError:
        return False
    return True
