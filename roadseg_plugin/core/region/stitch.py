"""Road lines across chunk borders: the vectoriser's own block stitching, spread over workers.

`vectorise_raster` thins a probability raster block by block (1024 px cores, each read with a
64 px halo), keeps the skeleton pieces each core owns, stitches the pieces by pixel position
and cleans them a band of block rows at a time (`road_stream`: chains merged, spurs pruned, gaps
bridged, short pieces dropped). A region run does the same with the expensive first half on the workers:
`group_pieces` collects the pieces of a rectangle of those same blocks, reading the probability
parts under it and its halo (the neighbouring chunks' parts included), and saves them. Once an
input is complete, one more task (`stitch_lines`) puts every piece of the input back in the
single-process block order and runs the same clean-up, so the lines equal `segment`'s: no road
breaks or doubles at a chunk border, since chunk borders never enter the vectoriser at all.

The trade-off: one task reads all pieces of an input (measured: about 135 kB and 4 ms per km
of road) and holds its lines until the input is done. Inputs are stitched in parallel with each
other and with the chunks still running; a single input of many Gpx makes one long,
memory-hungry task (see docs/SCALE.md).
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
    ids: list[int] = []
    pieces = Pieces(PROB_SCALE)
    with PartsMosaic(list(task.parts)) as mosaic:
        for r0 in range(r_lo, r_hi, block):
            for c0 in range(c_lo, c_hi, block):
                r1, c1 = min(r0 + block, h), min(c0 + block, w)
                wr0, wr1, wc0, wc1 = max(r0 - halo, 0), min(r1 + halo, h), max(c0 - halo, 0), min(c1 + halo, w)
                raw = mosaic.read(wr0, wr1, wc0, wc1)
                mask = raw != 0 if task.binary else raw > cut
                if not mask.any():
                    continue
                before = len(pieces)
                padded = np.pad(mask, radius, constant_values=True)
                _add_core(pieces, skeletonize_components(mask), (r0 - wr0, r1 - wr0, c0 - wc0, c1 - wc0), (wr0, wc0),
                          padded, None if task.binary else raw, radius)
                ids += [(r0 // block) * n_cols + c0 // block] * (len(pieces) - before)
    buf = io.BytesIO()
    np.savez(buf, block=np.asarray(ids, np.int64), sizes=np.asarray([len(p) for p in pieces.pts], np.int64),
             pts=(np.concatenate(pieces.pts) if len(pieces) else np.zeros((0, 2))).astype(np.int32),
             width=np.concatenate(pieces.width) if len(pieces) else np.zeros(0, np.float32),
             prob=np.concatenate(pieces.prob) if len(pieces) else np.zeros(0, np.float32))
    digest = write_atomic(Path(task.out), buf.getvalue())
    return {"part": task.out, "sha256": digest, "pieces": len(pieces), "seconds": time.perf_counter() - start}


def load_pieces(files: Sequence[str | Path], n_cols: int) -> dict[int, Any]:
    """The pieces of `files` by row of blocks, each row in `block_rows` order: by block, then as found."""
    from ..skeleton_pieces import Pieces

    ids, sizes, pts, width, prob = [], [], [], [], []
    for path in files:
        with np.load(path) as data:
            ids.append(data["block"])
            sizes.append(data["sizes"])
            pts.append(data["pts"])
            width.append(data["width"])
            prob.append(data["prob"])
    rows: dict[int, Any] = {}
    if not ids or not sum(len(i) for i in ids):
        return rows
    block, size = np.concatenate(ids), np.concatenate(sizes)
    flat = np.split(np.concatenate(pts).astype(np.int32), np.cumsum(size)[:-1])
    segments = np.cumsum(size - 1)[:-1]
    flat_width = np.split(np.concatenate(width), segments)
    flat_prob = np.split(np.concatenate(prob), segments)
    for i in np.argsort(block, kind="stable"):  # a block lies in one group: its own order is kept
        row = rows.setdefault(int(block[i]) // n_cols, Pieces(PROB_SCALE))
        row.pts.append(flat[i])
        row.width.append(flat_width[i])
        row.prob.append(flat_prob[i])
    return rows


def stitch_lines(files: Sequence[str | Path], prob_raster: str | Path, vectorise: Any, binary: bool) -> Any:
    """The road lines of one input from its pieces files, as `vectorise_raster(prob_raster)` gives them.

    `prob_raster` (the input's VRT) gives the grid, transform and CRS exactly as the
    single-process probability GeoTIFF would. The pieces go through `road_stream.LineStream`
    a row of blocks at a time, as `vectorise_raster` feeds it.
    """
    import rasterio

    from ..params import BLOCK_SIZE
    from ..road_stream import LineStream
    from ..skeleton_pieces import Pieces
    from ..vectorise import _frame, _scale, georeferencing

    with rasterio.open(prob_raster) as src:
        shape = src.shape
        transform, crs, crs_text = georeferencing(src)
    block = vectorise.block_size or BLOCK_SIZE
    stream = LineStream(shape, _scale(transform, crs, shape), min_length=vectorise.min_length,
                        spur_length=vectorise.spur_length, gap=vectorise.gap)
    rows = load_pieces(files, -(-shape[1] // block))
    lines = []
    for row in range(-(-shape[0] // block)):
        lines += stream.push(min((row + 1) * block, shape[0]), rows.pop(row, Pieces(PROB_SCALE)))
    return _frame(lines, transform, crs_text, shape, vectorise.tolerance, vectorise.smooth, not binary)
