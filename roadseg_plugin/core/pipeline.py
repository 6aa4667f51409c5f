"""raster -> probability -> lines -> file: the one chain every entry point runs.

The CLI, the Segment roads task and the Processing algorithms only translate their inputs into
`InferenceParams` / `VectoriseParams`, call `extract_roads` (or `vectorise_file`), and translate
progress, cancellation and errors back (tqdm / QgsTask / QgsProcessingFeedback; exit 2 /
message bar / QgsProcessingException). `extract_roads` settles the run's values once
(`InferenceParams.resolve`: the model's wherever an option is unset) and hands them to the engine,
and their threshold to the vectoriser (`VectoriseParams.for_run`).

Nothing is lost: every output is checked before the model loads (known format, existing and
writable folder, never one of the inputs: the raster, the model, each other), the probability
raster is written in a temporary folder beside its destination (named after it and the process,
see `atomic`; those a killed run left are removed first), checked once written (a full disk or a
file size limit must not pass for a finished raster), and all outputs of one run are moved into
place together at the end; a failure or cancel leaves the previous files as they were. Errors
about the temporary files name the output they stand for.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .advice import unfamiliar_imagery
from .atomic import remove_stale_temporaries, same_file, temporary_folder
from .errors import Cancelled, OutputError, RoadSegError
from .outputs import check_outputs, check_probability_output, locked_outputs
from .params import MASK_THRESHOLD, InferenceParams, RunSettings, VectoriseParams, check_threshold, read_model_info
from .vector_io import driver_for

if TYPE_CHECKING:
    import geopandas as gpd

    from .engine import SegmentResult

Progress = Callable[[float], None]
Source = Any  # a raster path / GDAL dataset name, or a `readers.RasterReader`

# Share of the progress bar per stage: segmentation dominates the run time.
SEGMENT_SHARE = 0.88
VECTORISE_SHARE = 0.10


class LinesSummary:
    """Count and length of a result's `lines` (a GeoDataFrame with `length_m`)."""

    lines: gpd.GeoDataFrame

    @property
    def n_lines(self) -> int:
        return len(self.lines)

    @property
    def length_km(self) -> float:
        return float(self.lines["length_m"].sum()) / 1000 if len(self.lines) else 0.0


@dataclass
class RoadsResult(LinesSummary):
    """What one run produced.

    Attributes:
        lines_path: the file the lines were written to (None when not asked to write).
        prob_path: the probability raster kept (None unless `prob_out` was given).
        segment: the engine's report (grid, backend, device, threshold, seconds); None for
            `vectorise_file`.
        threshold: the road threshold used.
        warnings: what the user should know (resampling, value stretch, no georeferencing...).
        count, total_m: number and length (metres) of the lines.
        held: the lines themselves when they were not written to a file (else read on demand
            through `lines`: a file's lines are written as they are found, never all held).
    """

    lines_path: Path | None
    prob_path: Path | None
    segment: SegmentResult | None
    threshold: float
    warnings: list[str] = field(default_factory=list)
    count: int = 0
    total_m: float = 0.0
    held: Any = None

    @property
    def lines(self) -> gpd.GeoDataFrame:
        """The road lines (fields id, length_m, width_m, mean_prob) in the raster's CRS."""
        if self.held is None and self.lines_path is not None:
            import geopandas as gpd

            return gpd.read_file(self.lines_path)
        return self.held

    @property
    def n_lines(self) -> int:
        return self.count

    @property
    def length_km(self) -> float:
        return self.total_m / 1000


def _stage(on_progress: Progress | None, lo: float, hi: float) -> Progress | None:
    if on_progress is None:
        return None
    return lambda fraction: on_progress(lo + (hi - lo) * min(max(float(fraction), 0.0), 1.0))


def _check_cancel(is_cancelled: Callable[[], bool] | None) -> None:
    if is_cancelled is not None and is_cancelled():
        raise Cancelled()


# ----------------------------------------------------------------------- staging

def clear_stale_temporaries(*outputs: Path | None) -> None:
    """Remove the temporaries that killed runs left beside these outputs (see `atomic`)."""
    for path in outputs:
        if path is not None:
            remove_stale_temporaries(path)


@contextmanager
def staging_folder(output: Path | None) -> Iterator[Path]:
    """A temporary folder beside `output` named after it (the system's temporary folder when the
    run keeps no file); removed with everything in it on leaving."""
    if output is not None and os.access(output.parent, os.W_OK):
        tmp = temporary_folder(output)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="roadseg-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def _named_output(tmp: Path, output: Path | None, role: str | None) -> Iterator[None]:
    """Errors about files in the staging folder `tmp` name `output`, the file they stand for.

    `role` None: the probability raster is only an intermediate of the road lines `output`.
    """
    try:
        yield
    except RoadSegError as exc:
        if output is None or not exc.path.startswith(str(tmp)):
            raise
        what = role or "the probability raster made for these lines"
        problem = exc.problem.replace(exc.path, str(output)).replace(str(tmp), str(output.parent))
        raise OutputError(output, f"{what}: {problem}",
                          exc.fix or "check the free disk space; earlier outputs are unchanged") from None


# ------------------------------------------------------------------------------ the chain

def extract_roads(source: Source, lines_out: str | os.PathLike | None, params: InferenceParams,
                  vectorise_params: VectoriseParams | None = None, prob_out: str | os.PathLike | None = None,
                  on_progress: Progress | None = None,
                  is_cancelled: Callable[[], bool] | None = None) -> RoadsResult:
    """Segment roads in `source` and write them as lines (and optionally the probability raster).

    Args:
        source: a raster path or GDAL dataset name, or a `RasterReader` (QGIS layers).
        lines_out: the line file (.gpkg, .shp, .geojson, .fgb); None returns the lines only.
        params: model, device, backend, tiling, threshold... (see `InferenceParams`).
        vectorise_params: clean-up and output format (see `VectoriseParams`).
        prob_out: also keep the road probability GeoTIFF here.
        on_progress: called with the fraction done, 0..1.
        is_cancelled: polled between batches and stages; True raises `Cancelled`.

    Raises:
        RoadSegError (RasterError, CheckpointError, OutputError, ParamError): bad input, model,
            option or output, raised before any pixel is read where it can be known then;
            another run writing the same output.
        Cancelled: nothing new was written; earlier files are untouched.
    """
    from .engine import segment

    vectorise_params = vectorise_params or VectoriseParams()
    lines_path = Path(lines_out) if lines_out is not None else None
    prob_path = Path(prob_out) if prob_out is not None else None
    if lines_path is not None:
        driver_for(lines_path, vectorise_params.format)
    check_probability_output(prob_path)
    inputs = [os.fspath(source)] if isinstance(source, (str, os.PathLike)) else list(getattr(source, "files", []))
    check_outputs({"road lines": lines_path, "probability raster": prob_path}, [*inputs, params.model_path])
    settings = params.resolve(read_model_info(params.model_path))  # the run's values, settled once
    vectorise_params = vectorise_params.for_run(settings)
    if isinstance(source, (str, os.PathLike)):
        check_raster_size(source, settings, vectorise_params)
    _check_cancel(is_cancelled)
    with locked_outputs(lines_path, prob_path):
        clear_stale_temporaries(lines_path, prob_path)
        with staging_folder(prob_path or lines_path) as tmp, _line_staging(lines_path, prob_path, tmp) as lines_tmp:
            staged = tmp / "probability.tif"
            with _named_output(tmp, prob_path or lines_path, "the probability raster" if prob_path else None):
                segmented = segment(source, staged, settings, _stage(on_progress, 0.0, SEGMENT_SHARE), is_cancelled)
                _check_cancel(is_cancelled)
                lines = _vectorise(staged, vectorise_params, lines_path, lines_tmp,
                                   _stage(on_progress, SEGMENT_SHARE, SEGMENT_SHARE + VECTORISE_SHARE), is_cancelled)
            _check_cancel(is_cancelled)
            _commit(lines, lines_path, staged if prob_path is not None else None, prob_path)
    if on_progress is not None:
        on_progress(1.0)
    advice = unfamiliar_imagery(lines.total_m / 1000, _area_km2(segmented), segmented.radiometry_distance)
    warnings = ([advice] if advice else []) + list(segmented.warnings)  # first: the dialog's message bar shows one
    return RoadsResult(lines_path, prob_path, segmented, settings.threshold, warnings, lines.count,
                       lines.total_m, lines.frame)


def _area_km2(segment: SegmentResult) -> float | None:
    """The ground area the engine predicted, from its grid (None without a pixel size)."""
    return segment.width * segment.height * segment.gsd_m**2 / 1e6 if segment.gsd_m else None


def check_raster_size(source: str | os.PathLike, settings: RunSettings, vectorise_params: VectoriseParams) -> None:
    """Refuse a raster (as the model will see it: cropped, resampled) too large for this machine,
    for the engine or for the vectoriser, before anything is written.

    Raises:
        RasterError, ParamError: naming the size or the option, and the limit.
    """
    from .readers import open_raster
    from .vectorise import check_memory

    with open_raster(source, gsd_m=settings.meta.gsd_m, extent=settings.extent, native_gsd_m=settings.gsd) as reader:
        width, height, gsd_m = reader.width, reader.height, reader.gsd_m
    check_memory(width, height, gsd_m, **vectorise_params.kwargs())


def vectorise_file(mask: str | os.PathLike, lines_out: str | os.PathLike | None,
                   vectorise_params: VectoriseParams | None = None, on_progress: Progress | None = None,
                   is_cancelled: Callable[[], bool] | None = None) -> RoadsResult:
    """Road lines of a mask or probability raster (the second half of `extract_roads`).

    The threshold is `vectorise_params.threshold`; unset, the one RoadSeg recorded in the raster, else 0.5.
    """
    vectorise_params = vectorise_params or VectoriseParams()
    lines_path = Path(lines_out) if lines_out is not None else None
    if lines_path is not None:
        driver_for(lines_path, vectorise_params.format)
    check_outputs({"road lines": lines_path}, [mask])
    with locked_outputs(lines_path):
        clear_stale_temporaries(lines_path)
        threshold = vectorise_params.threshold or stored_threshold(mask) or MASK_THRESHOLD
        vectorise_params = vectorise_params.with_changes(threshold=threshold)
        with _line_staging(lines_path, None, None) as lines_tmp:
            lines = _vectorise(Path(mask), vectorise_params, lines_path, lines_tmp, _stage(on_progress, 0.0, 0.98),
                               is_cancelled)
            _check_cancel(is_cancelled)
            _commit(lines, lines_path, None, None)
    if on_progress is not None:
        on_progress(1.0)
    return RoadsResult(lines_path, None, None, threshold, [], lines.count, lines.total_m, lines.frame)


def stored_threshold(mask: str | os.PathLike) -> float | None:
    """The threshold RoadSeg recorded in a probability raster's tags, if any (and valid)."""
    import rasterio

    try:
        with rasterio.open(mask) as src:
            value = src.tags().get("ROADSEG_THRESHOLD")
        return check_threshold(float(value)) if value else None
    except (rasterio.errors.RasterioError, ValueError):
        return None  # the vectoriser reports unreadable files; a bad tag is ignored


@contextmanager
def _line_staging(lines_path: Path | None, prob_path: Path | None, shared: Path | None) -> Iterator[Path | None]:
    """Where the lines are written before they move into place: beside them (the raster's staging
    folder when both lie in one folder)."""
    if lines_path is None:
        yield None
    elif shared is not None and prob_path is not None and same_file(lines_path.parent, prob_path.parent):
        yield shared / "lines"
    elif shared is not None and prob_path is None:
        yield shared / "lines"
    else:
        with staging_folder(lines_path) as tmp:
            yield tmp / "lines"


@dataclass
class _Lines:
    """The vectoriser's output: staged files (written to a file) or a frame (kept in memory)."""

    count: int
    total_m: float
    staged: list[Path] = field(default_factory=list)
    frame: Any = None


def _vectorise(raster: Path, params: VectoriseParams, lines_path: Path | None, folder: Path | None,
               on_progress: Progress | None, is_cancelled: Callable[[], bool] | None) -> _Lines:
    """Vectorise `raster` at `params.threshold` (settled by the caller): into a staged line file in
    `folder` batch by batch (memory does not grow with the number of lines), or into a frame when no
    file is asked for."""
    from .vector_io import LineWriter
    from .vectorise import iter_raster_frames, vectorise_raster

    options = dict(threshold=params.threshold, on_progress=on_progress, is_cancelled=is_cancelled, **params.kwargs())
    if lines_path is None or folder is None:
        frame = vectorise_raster(raster, **options)
        return _Lines(len(frame), float(frame["length_m"].sum()), frame=frame)
    folder.mkdir()
    writer = LineWriter(lines_path, folder, params.format)
    count, total, last = 0, 0.0, None
    for frame in iter_raster_frames(raster, **options):
        writer.append(frame)
        count, total, last = count + len(frame), total + float(frame["length_m"].sum()), frame
    return _Lines(count, total, writer.finish(empty=last))


def _commit(lines: _Lines, lines_path: Path | None, staged_prob: Path | None, prob_path: Path | None) -> None:
    """Move every output into place, all or none (`commit.replace_together`)."""
    from .commit import replace_together
    from .vector_io import placed_files, remove_stale_sidecars

    moves = placed_files(lines.staged, lines_path) if lines_path is not None else []
    if prob_path is not None and staged_prob is not None:
        moves.append((staged_prob, prob_path))
    try:
        replace_together(moves)
    except OSError as exc:
        where = Path(exc.filename) if exc.filename else (lines_path or prob_path)
        raise OutputError(where, f"cannot replace this file ({exc.strerror or exc}); no output was changed",
                          "check that the file is not read-only, locked or open elsewhere") from None
    if lines_path is not None:
        remove_stale_sidecars(lines.staged, lines_path)
