"""Road lines across chunk borders: the vectoriser's own block stitching, spread over workers.

`vectorise_raster` thins a probability raster block by block (1024 px cores, each read with a
64 px halo), keeps the skeleton pieces each core owns, stitches all pieces by pixel position
into one graph and cleans that graph once (chains merged, spurs pruned, gaps bridged, short
pieces dropped). A region run does the same with the expensive first half on the workers:
`group_pieces` collects the pieces of a rectangle of those same blocks, reading the probability
parts under it and its halo (the neighbouring chunks' parts included), and saves them. Once an
input is complete, one more task (`stitch_lines`) puts every piece of the input back in the
single-process block order and runs the same clean-up, so the lines equal `segment`'s: no road
breaks or doubles at a chunk border, since chunk borders never enter the vectoriser at all.

The trade-off: the clean-up is global per input, so one task holds the skeleton of a whole
input (measured: about 135 kB and 4 ms per km of road) and cleans it in one process. Inputs
are stitched in parallel with each other and with the chunks still running; a single input of
many Gpx makes one long, memory-hungry task (see docs/SCALE.md).
"""
from __future__ import annotations

import io
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PROB_SCALE = 1 / 255  # parts are uint8 probability x 255


@dataclass(frozen=True)
class GroupTask:
    """One rectangle of vectoriser blocks of one input (picklable; paths absolute)."""

    core: tuple[int, int, int, int]
    shape: tuple[int, int]
    block: int
    halo: int
    parts: tuple[tuple[tuple[int, int, int, int], str], ...]
    out: str
    binary: bool
    threshold: float


def group_pieces(task: GroupTask, *ready: Any) -> dict[str, Any]:
    """Skeleton pieces of the blocks of `task.core`, saved to `task.out` (.npz, atomically).

    `ready`: the results of the chunk tasks whose parts are read (passed so that Dask runs this
    task after them; unused).
    """
    from ..skeleton_pieces import MARGIN_PX, Pieces, _add_core, skeletonize_components
    from .parts import PartsMosaic, write_atomic

    start = time.perf_counter()
    (r_lo, r_hi, c_lo, c_hi), (h, w), block, halo = task.core, task.shape, task.block, task.halo
    radius = max(halo - MARGIN_PX, 1)
    cut = task.threshold * 255.0  # as vectorise_raster reads a uint8 probability band
    n_cols = -(-w // block)
    ids, pts, samples = [], [], []
    with PartsMosaic(list(task.parts)) as mosaic:
        for r0 in range(r_lo, r_hi, block):
            for c0 in range(c_lo, c_hi, block):
                r1, c1 = min(r0 + block, h), min(c0 + block, w)
                wr0, wr1, wc0, wc1 = max(r0 - halo, 0), min(r1 + halo, h), max(c0 - halo, 0), min(c1 + halo, w)
                raw = mosaic.read(wr0, wr1, wc0, wc1)
                mask = raw != 0 if task.binary else raw > cut
                if not mask.any():
                    continue
                pieces = Pieces(PROB_SCALE)
                padded = np.pad(mask, radius, constant_values=True)
                _add_core(pieces, skeletonize_components(mask), (r0 - wr0, r1 - wr0, c0 - wc0, c1 - wc0), (wr0, wc0),
                          padded, None if task.binary else raw, radius)
                if pieces.pts:
                    ids += [(r0 // block) * n_cols + c0 // block] * len(pieces.pts)
                    pts += pieces.pts
                    samples += pieces.samples
    buf = io.BytesIO()
    np.savez(buf, block=np.asarray(ids, np.int64), sizes=np.asarray([len(p) for p in pts], np.int64),
             pts=(np.concatenate(pts) if pts else np.zeros((0, 2))).astype(np.int32),
             samples=np.concatenate(samples) if samples else np.zeros((0, 2)))
    digest = write_atomic(Path(task.out), buf.getvalue())
    return {"part": task.out, "sha256": digest, "pieces": len(pts), "seconds": time.perf_counter() - start}


def load_pieces(files: Sequence[str | Path]) -> Any:
    """The pieces of `files` in `collect_pieces` order: by block (row-major), then as found."""
    from ..skeleton_pieces import Pieces

    ids, sizes, pts, samples = [], [], [], []
    for path in files:
        with np.load(path) as data:
            ids.append(data["block"])
            sizes.append(data["sizes"])
            pts.append(data["pts"].astype(np.int64))
            samples.append(data["samples"].astype(np.float64))
    pieces = Pieces(PROB_SCALE)
    if not ids or not sum(len(i) for i in ids):
        return pieces
    block, size = np.concatenate(ids), np.concatenate(sizes)
    flat = np.split(np.concatenate(pts), np.cumsum(size)[:-1])
    order = np.argsort(block, kind="stable")  # a block lies in one group: its own order is kept
    pieces.pts = [flat[i] for i in order]
    per_piece = np.split(np.concatenate(samples), np.cumsum(size - 1)[:-1])  # a piece of k points: k - 1 segments
    pieces.samples = [per_piece[i] for i in order]
    return pieces


def stitch_lines(files: Sequence[str | Path], prob_raster: str | Path, vectorise: Any, binary: bool) -> Any:
    """The road lines of one input from its pieces files, as `vectorise_raster(prob_raster)` gives them.

    `prob_raster` (the input's VRT) gives the grid, transform and CRS exactly as the
    single-process probability GeoTIFF would.
    """
    import rasterio

    # road_graph._graph after its collect_pieces, and vectorise_raster's grid
    from ..road_graph import _pieces_graph, clean
    from ..vectorise import _frame, _scale, georeferencing

    with rasterio.open(prob_raster) as src:
        shape = src.shape
        transform, crs, crs_text = georeferencing(src)
    scale = _scale(transform, crs, shape)
    graph = clean(_pieces_graph(load_pieces(files), shape[1], scale), scale, min_length=vectorise.min_length,
                  spur_length=vectorise.spur_length, gap=vectorise.gap)
    return _frame(graph, transform, crs_text, shape, vectorise.tolerance, vectorise.smooth, not binary)
