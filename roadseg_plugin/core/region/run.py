"""`segment_region`: check, plan, run the chunks on Dask, stitch the lines, write the outputs.

Every check runs before the cluster is asked for anything (inputs, model, options, output
folder, manifest), then the scheduler is reached (`Client(address, timeout=...)`) or a
`LocalCluster` of worker processes is started. One task per chunk writes its probability part;
once every part a line group reads is recorded, the group's task collects its skeleton pieces
(`stitch`); once an input is complete, the client builds its VRT and a task its lines. Task results
are consumed and released at once, so a worker lost later does not make the scheduler redo
finished chunks, while chunks lost with a worker are re-run by Dask (the scheduler re-schedules
them, and `RETRIES` covers errors). A part is recorded in the manifest as soon as it is
reported, so Ctrl-C (or a failure) leaves every finished part for `--resume`; the cluster this
call started is closed whatever happens.
"""
from __future__ import annotations

import glob
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Cancelled, OutputError, ParamError
from ..outputs import locked_outputs
from ..params import VECTOR_FORMATS, InferenceParams, RunSettings, VectoriseParams, read_model_info
from ..pipeline import LinesSummary
from .cluster import DEFAULT_TIMEOUT, connect, dashboard_link
from .job import Job, RegionProgress
from .manifest import Manifest, input_identity, options_identity
from .plan import DEFAULT_CHUNK, check_chunk, expand_inputs, plan_inputs

LINES_STEM = "roads"
__all__ = ["RegionProgress", "RegionResult", "segment_region"]


@dataclass
class RegionResult(LinesSummary):
    """What a region run produced and how fast (figures of this call; resumed parts not timed).

    `segment_seconds`: from the first chunk sent (the model loaded on every worker) to the last
    chunk done; `lines_seconds`: from then until every input's lines are stitched; `seconds`:
    the whole call (checks, cluster start and stop, writing).
    """

    folder: Path
    lines_path: Path
    rasters: list[Path]
    lines: Any
    chunks: int
    chunks_run: int
    pixels_run: int
    segment_seconds: float
    lines_seconds: float
    seconds: float
    reruns: int | None
    workers: int
    dashboard: str | None
    warnings: list[str] = field(default_factory=list)

    @property
    def mpx_s(self) -> float:
        return self.pixels_run / 1e6 / self.segment_seconds if self.segment_seconds > 0 else 0.0


def check_folder(folder: Path, items: list, sources: list[str], model: Path) -> None:
    """Refuse an output folder that is (or lies in) an input folder, or is an input file.

    Raises:
        OutputError: with the reason and the fix.
    """
    from ..atomic import same_file

    for item in map(os.fspath, items):
        if Path(item).is_dir():  # its rasters are inputs: nothing may be written in it or below
            root, below = Path(item), True
        elif not Path(item).exists() and glob.has_magic(item):  # a pattern: below its folder only with **
            prefix = item[:min(item.find(c) for c in "*?[" if c in item)]
            root, below = Path(os.path.dirname(prefix) or "."), "**" in item
        else:
            continue
        if same_file(folder, root) or (below and root.resolve() in folder.resolve().parents):
            raise OutputError(folder, f"is {'inside ' if below else ''}the input folder {root}: its outputs would "
                              "be read as inputs", "choose an output folder outside the inputs")
    for source in [*sources, str(model)]:
        if os.path.exists(source) and same_file(folder, Path(source)):
            raise OutputError(folder, "is one of the inputs", "choose an output folder")
    if folder.exists() and not folder.is_dir():
        raise OutputError(folder, "is a file, not a folder", "choose a folder (it is created when missing)")
    parent = folder if folder.is_dir() else folder.parent
    if not parent.is_dir():
        raise OutputError(folder, f"the folder {parent} does not exist", "create it first or choose another")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(folder, f"cannot write in {parent}", "choose a folder you can write to")


def segment_region(inputs: list[str | os.PathLike], out_dir: str | os.PathLike,
                   params: InferenceParams | None = None, vectorise: VectoriseParams | None = None, *,
                   scheduler: str | None = None, workers: int | None = None, chunk: int = DEFAULT_CHUNK,
                   resume: bool = False, skip_bad: bool = False, timeout: float = DEFAULT_TIMEOUT,
                   model_threads: int | None = None, on_progress: Callable[[RegionProgress], None] | None = None,
                   on_message: Callable[[str], None] | None = None,
                   is_cancelled: Callable[[], bool] | None = None) -> RegionResult:
    """Segment roads over many rasters on a Dask cluster; see the package notes.

    Args:
        inputs: rasters, VRTs, folders of rasters or globs (CRS and GSD may differ).
        out_dir: the output folder: `roads.gpkg` (or the format asked for; field `source`
            names the input), one `<input>.vrt` probability mosaic per input, `parts/` and
            `region.json`. Created when missing.
        params, vectorise: the options of `segment`.
        scheduler: a Dask scheduler address (tcp://host:8786); None starts a local cluster.
        workers: local worker processes (default: one per physical core).
        chunk: chunk side in pixels of the model's grid (rounded to whole tile strides).
        resume: continue the run in `out_dir`, skipping its finished parts.
        skip_bad: leave unreadable inputs out instead of refusing to start.
        timeout: seconds to reach the scheduler.
        model_threads: ONNX Runtime / torch threads per task (default: the machine's physical cores
            over the tasks its workers run at once).
        on_progress, on_message, is_cancelled: progress, notes for the user, cancel flag.

    Raises:
        RoadSegError: bad input, option, model, output folder or scheduler, before any work;
            a chunk that fails on every try.
        Cancelled, KeyboardInterrupt: finished parts are kept for `resume`.
    """
    start = time.perf_counter()
    params, vectorise = params or InferenceParams(), vectorise or VectoriseParams()
    say = on_message or (lambda text: None)
    chunk = check_chunk(chunk)
    if scheduler and workers:
        raise ParamError("workers", workers, "is for a local cluster; a scheduler's workers are started with it",
                         "give either --scheduler or --workers")
    if workers is not None and (isinstance(workers, bool) or int(workers) != workers or workers < 1):
        raise ParamError("workers", workers, "must be a whole number, at least 1")
    settings = params.resolve(read_model_info(params.model_path))  # the run's values, settled once
    folder = Path(os.path.abspath(out_dir))
    sources = expand_inputs(inputs)
    check_folder(folder, list(inputs), sources, settings.model)
    identity = options_identity(params, vectorise, chunk)  # the options as given: what --resume compares
    with locked_outputs(folder):  # a second run into this folder is refused, not raced
        return _run(start, inputs, folder, sources, settings, vectorise.for_run(settings), identity, scheduler,
                    workers, chunk, resume, skip_bad, timeout, model_threads, on_progress, say, is_cancelled)


def _run(start: float, inputs: list, folder: Path, sources: list[str], settings: RunSettings,
         vectorise: VectoriseParams, options: dict[str, Any], scheduler: str | None, workers: int | None, chunk: int,
         resume: bool, skip_bad: bool, timeout: float, model_threads: int | None,
         on_progress: Callable[[RegionProgress], None] | None, say: Callable[[str], None],
         is_cancelled: Callable[[], bool] | None) -> RegionResult:
    lines_path = folder / (LINES_STEM + VECTOR_FORMATS[vectorise.format or "gpkg"][1])
    plans, notes = plan_inputs(sources, settings, vectorise, chunk, skip_bad)
    identity = {"inputs": [input_identity(p.source) for p in plans], "model": {"sha256": _model_hash(settings)},
                "options": options, "model_file": str(settings.model)}
    manifest, more = Manifest.open(folder, identity, resume)
    outputs = [lines_path, *(folder / f"{p.key}.vrt" for p in plans)]
    _check_new_outputs(manifest, folder, outputs, sources, settings)
    for note in notes + more:
        say(note)
    files = [str(settings.model), *(p.source for p in plans)]
    if is_cancelled is not None and is_cancelled():
        raise Cancelled()
    with connect(scheduler, workers, timeout, files) as (client, n_workers, threads):  # the last check
        folder.mkdir(exist_ok=True)
        _clear_stale(folder, plans, [manifest.path, *outputs])
        link = dashboard_link(client)
        threads = model_threads or threads
        say(f"Dask: {n_workers} worker(s), {threads} model thread(s) each" + (f"; dashboard {link}" if link else ""))
        job = Job(client, plans, folder, settings, vectorise, manifest, threads, on_progress, is_cancelled)
        try:
            job.run(lambda: say(f"model on every worker: {', '.join(job.backends)}"))
        finally:
            manifest.save()
            _clear_stale(folder, plans, [manifest.path, *outputs])  # e.g. the part a killed worker was writing
    lines = _merge([(plans[i], job.frames[i]) for i in sorted(job.frames)], say)
    from ..vector_io import write_lines

    write_lines(lines, lines_path, driver=vectorise.format)
    manifest.complete = True
    manifest.save()
    warnings = list(dict.fromkeys(w for p in plans for w in p.warnings)) + sorted(job.warnings)
    return RegionResult(folder, lines_path, [folder / f"{p.key}.vrt" for p in plans], lines,
                        sum(len(p.chunks) for p in plans), job.chunks_run, job.pixels_run, job.segment_seconds,
                        job.finished - job.started - job.segment_seconds, time.perf_counter() - start, job.reruns,
                        n_workers, link, warnings)


def _model_hash(settings: RunSettings) -> str:
    from .parts import sha256

    return sha256(settings.model)


def _check_new_outputs(manifest: Manifest, folder: Path, outputs: list[Path], sources: list[str],
                       settings: RunSettings) -> None:
    """A new run writes no file that is already there; none of its outputs is an input."""
    from ..outputs import check_outputs

    if manifest.parts or manifest.path.exists():
        return  # resuming: these are the run's own
    for path in outputs:
        if path.exists():
            raise OutputError(path, "already exists (from another run?)", "choose an empty output folder")
    if folder.is_dir():
        check_outputs({f"output {p.name}": p for p in outputs}, [*sources, settings.model])


def _clear_stale(folder: Path, plans: list, outputs: list[Path]) -> None:
    """Temporaries that killed processes of this machine left beside the outputs and parts (see `atomic`)."""
    from ..atomic import remove_stale_temporaries

    names = re.compile(r"\.(.+?)\.\d+-[0-9a-f]{6}\.")  # .<part name>.<pid>-<host>.<random><suffix>
    for plan in plans:
        parts = folder / "parts" / plan.key
        if parts.is_dir():
            outputs += [parts / m.group(1) for f in os.scandir(parts) if (m := names.match(f.name))]
    for path in dict.fromkeys(outputs):
        remove_stale_temporaries(path)


def _merge(frames: list[tuple[Any, Any]], say: Callable[[str], None]) -> Any:
    """One frame of every input's lines (field `source`), in the first input's CRS, ids 1..n."""
    import geopandas as gpd
    import numpy as np
    import pandas as pd

    target = next((f.crs for _, f in frames if f.crs is not None), None)
    parts = []
    for plan, frame in frames:
        if frame.crs is None and target is not None:
            say(f"{plan.source}: no CRS; its lines are written in its own units")
            frame = frame.set_crs(target, allow_override=True)
        elif target is not None and frame.crs != target:
            frame = frame.to_crs(target)  # length_m stays the ground length measured in its own CRS
        parts.append(frame.assign(source=plan.source))
    lines = gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), crs=target)
    lines["id"] = np.arange(1, len(lines) + 1, dtype=np.int64)
    return lines[["id", "length_m", "width_m", "mean_prob", "source", "geometry"]]
