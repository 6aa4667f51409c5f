"""Mask blocks -> skeleton pieces: the first half of `road_graph`.

Each block of the mask is read with a halo, thinned, and turned into path pieces with
`sknw`; a block keeps only the pieces whose pixels lie in its core, so pieces from all blocks
join into the whole mask's skeleton (`road_stream` stitches and cleans them, a row of blocks at
a time). Widths and probabilities are kept per segment for the line attributes.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from functools import lru_cache

import numpy as np
import sknw
from scipy import ndimage
from skimage.morphology import skeletonize

from .errors import Cancelled

log = logging.getLogger(__name__)

MARGIN_PX = 16  # context (px) around each sknw window so nodes near its core are classified right
_MAX_NODE_PX = 65000  # sknw labels nodes in uint16 (from 10): at most this many node pixels per call
_MAX_TRACE_PX = 131000  # ... and traces a path into a 131072-pixel buffer
_MAX_SKEL_PX = 60000  # plain sknw.build_sknw (no node count up front): at most this many pixels
_MAX_SIDE = 16384  # ... and returns int16 coordinates

Reader = Callable[[int, int, int, int], "tuple[np.ndarray, np.ndarray | None]"]


@lru_cache(maxsize=4)
def _offsets(radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r = np.arange(-radius, radius + 1)
    dr, dc = (g.ravel() for g in np.meshgrid(r, r, indexing="ij"))
    dist = np.hypot(dr, dc)
    keep = (dist > 0) & (dist <= radius)
    order = np.argsort(dist[keep], kind="stable")
    return dr[keep][order], dc[keep][order], dist[keep][order]


def _half_widths(padded: np.ndarray, rr: np.ndarray, cc: np.ndarray, radius: int) -> np.ndarray:
    """Euclidean distance to the nearest background pixel (as scipy's EDT), capped at `radius`.

    `padded` is the mask padded by `radius` with True (outside is not background); rr, cc
    index the unpadded mask. Searches offsets in order of distance for the few skeleton
    pixels only, which is far cheaper than a distance transform of the whole block.
    """
    dr, dc, dist = _offsets(radius)
    step = padded.shape[1]
    padded = padded.ravel()
    flat = dr * step + dc
    base = (rr + radius) * step + cc + radius
    out = np.full(rr.shape, float(radius))
    todo = np.arange(rr.size)
    start, size = 0, 24
    while todo.size and start < dist.size:
        sl = slice(start, start + size)
        bg = ~padded[base[todo, None] + flat[None, sl]]
        hit = bg.any(axis=1)
        out[todo[hit]] = dist[sl][bg[hit].argmax(axis=1)]
        todo = todo[~hit]
        start, size = start + size, size * 2
    return out


@lru_cache(maxsize=1)
def _sknw_kernels() -> tuple | None:
    """sknw's own numba kernels (`mark`, `parse_struc`) compiled with `cache=True`.

    sknw compiles them afresh in every process (~2-5 s, longer than vectorising a 4096^2
    mask); with the on-disk cache later processes load them in a fraction of a second.
    Returns None (use plain `sknw.build_sknw`) when numba cannot cache here.
    """
    try:
        import numba
        from sknw import sknw as impl

        kernels = tuple(numba.njit(cache=True)(f.py_func) for f in (impl.mark, impl.parse_struc))
        _sknw_paths(np.eye(4, dtype=bool), kernels)  # compile or load now, fail here if at all
        return kernels
    except Exception as exc:  # noqa: BLE001 - any numba/cache problem: fall back, still correct
        log.debug("numba cache unavailable (%s); using sknw.build_sknw", exc)
        return None


def _sknw_paths(ske: np.ndarray, kernels: tuple | None) -> list[np.ndarray] | None:
    """Edge pixel paths of `sknw.build_sknw(ske, multi=True, iso=False, ring=True, full=True)`.

    Each path runs from its start node's centre through the edge pixels to its end node's
    centre. Returns None when the window is too big for sknw's fixed buffers (uint16 node
    labels, 131072-pixel trace buffer): split it and try again.
    """
    if kernels is None:
        if np.count_nonzero(ske) > _MAX_SKEL_PX:
            return None
        graph = sknw.build_sknw(ske, multi=True, iso=False, ring=True, full=True)
        return [d["pts"] for _, _, d in graph.edges(data=True)]
    from sknw import sknw as impl

    mark, parse = kernels
    buf = np.pad(ske, 1).astype(np.uint16)
    nbs = impl.neighbors(buf.shape)
    acc = np.cumprod((1,) + buf.shape[::-1][:-1])[::-1]
    mark(buf, nbs)  # 1: edge pixel, 2: node pixel
    if np.count_nonzero(buf) > _MAX_TRACE_PX or np.count_nonzero(buf == 2) > _MAX_NODE_PX:
        return None
    nodes, edges = parse(buf, nbs, acc, False, True)
    if not edges:
        return []
    sizes = np.array([len(n) for n in nodes])
    centres = np.round(np.add.reduceat(np.concatenate(nodes).astype(np.float64), np.cumsum(sizes) - sizes)
                       / sizes[:, None]).astype(np.int16)  # as sknw's build_graph(full=True)
    paths = []
    for first, last, pts in edges:
        pts[[0, -1]] = centres[[first, last]]
        paths.append(pts)
    return paths


def runs(own: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, stops) of the runs of True in a boolean array: own[start:stop] all True."""
    edges = np.diff(np.concatenate(([0], own.view(np.int8), [0])))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def segment_rows(pts: np.ndarray) -> np.ndarray:
    """The row that owns each segment of a path: the row of its rounded midpoint."""
    return (pts[:-1, 0] + pts[1:, 0] + 1) // 2


class Pieces:
    """Polyline pieces in global pixel coordinates, with a width and probability per segment.

    `width[i][k]` is the road width (2 * d - 1 px, d the distance to the nearest background
    pixel, as scipy's EDT) at the first vertex of segment k of piece i, NaN for a segment with
    no sample (a bridged gap); `prob[i][k]` the probability there (0 without probabilities).
    Keeping them per segment lets a line be cut anywhere and its parts keep exact sums.
    """

    def __init__(self, prob_scale: float = 1.0) -> None:
        self.prob_scale = prob_scale  # 1/255 for uint8 probabilities
        self.pts: list[np.ndarray] = []
        self.width: list[np.ndarray] = []
        self.prob: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.pts)

    def extend(self, other: Pieces) -> None:
        self.pts += other.pts
        self.width += other.width
        self.prob += other.prob

    def add(self, paths: list[np.ndarray], at: tuple[int, int], origin: tuple[int, int],
            core: tuple[int, int, int, int], padded: np.ndarray, prob: np.ndarray | None, radius: int) -> None:
        """Keep the parts of sknw `paths` (window at `at` in the block) that `core` owns.

        `padded` (the block mask padded by `radius`) and `prob` cover the whole block, whose
        global top-left is `origin`. A segment between consecutive path vertices belongs to
        the core holding the pixel at its rounded midpoint, so every segment has exactly one
        owner, and a path leaving the core is cut at a vertex where the neighbouring core's
        piece also ends.
        """
        if not paths:
            return
        local = np.concatenate(paths).astype(np.int64) + at  # block-local
        eid = np.repeat(np.arange(len(paths)), [len(p) for p in paths])
        verts = local + origin
        mid = (verts[:-1] + verts[1:] + 1) // 2
        r0, r1, c0, c1 = core
        own = ((eid[:-1] == eid[1:]) & (mid[:, 0] >= r0) & (mid[:, 0] < r1)
               & (mid[:, 1] >= c0) & (mid[:, 1] < c1))
        if not own.any():
            return
        starts, stops = runs(own)
        first = np.flatnonzero(own)  # each owned segment samples its first vertex
        rr, cc = local[first, 0], local[first, 1]
        width = np.maximum(2.0 * _half_widths(padded, rr, cc, radius) - 1.0, 1.0).astype(np.float32)
        p = (np.zeros(first.size) if prob is None else prob[rr, cc] * self.prob_scale).astype(np.float32)
        cuts = np.cumsum(stops - starts)[:-1]
        self.pts.extend(verts[s:e + 1].astype(np.int32) for s, e in zip(starts, stops, strict=True))
        self.width.extend(np.split(width, cuts))
        self.prob.extend(np.split(p, cuts))

    def rows_from(self, top: int) -> Pieces:
        """The same pieces without the segments owned by rows above `top` (cut where they cross)."""
        kept = Pieces(self.prob_scale)
        if not self.pts:
            return kept
        # rows owned by each piece's segments, lowest and highest, for all pieces at once
        sizes = np.fromiter((len(p) for p in self.pts), np.int64, len(self.pts))
        flat = np.concatenate(self.pts)[:, 0].astype(np.int64)
        rows = (flat[:-1] + flat[1:] + 1) // 2
        ends = np.cumsum(sizes)
        starts = ends - sizes  # each piece's first segment
        between = ends[:-1] - 1  # the step from one piece to the next: no segment
        low, high = rows.copy(), rows.copy()
        low[between], high[between] = np.iinfo(np.int64).max, np.iinfo(np.int64).min
        low, high = np.minimum.reduceat(low, starts), np.maximum.reduceat(high, starts)
        for i, (pts, width, prob) in enumerate(zip(self.pts, self.width, self.prob, strict=True)):
            if low[i] >= top:
                kept.pts.append(pts)
                kept.width.append(width)
                kept.prob.append(prob)
            elif high[i] >= top:
                for s, e in zip(*runs(segment_rows(pts) >= top), strict=True):
                    kept.pts.append(pts[s:e + 1])
                    kept.width.append(width[s:e])
                    kept.prob.append(prob[s:e])
        return kept


def _add_core(pieces: Pieces, sk: np.ndarray, core: tuple[int, int, int, int], origin: tuple[int, int],
              padded: np.ndarray, prob: np.ndarray | None, radius: int) -> None:
    """Graph `core` (local to the block skeleton `sk`) with a margin; split it if sknw can't."""
    r0, r1, c0, c1 = core
    w0, w1 = max(r0 - MARGIN_PX, 0), min(r1 + MARGIN_PX, sk.shape[0])
    v0, v1 = max(c0 - MARGIN_PX, 0), min(c1 + MARGIN_PX, sk.shape[1])
    paths = None  # sknw returns int16 coordinates: keep windows well below 32768 px
    if max(w1 - w0, v1 - v0) <= _MAX_SIDE:
        paths = _sknw_paths(sk[w0:w1, v0:v1], _sknw_kernels())  # windows up to 96 px always fit
    if paths is not None:
        global_core = (origin[0] + r0, origin[0] + r1, origin[1] + c0, origin[1] + c1)
        pieces.add(paths, (w0, v0), origin, global_core, padded, prob, radius)
        return
    rm, cm = (r0 + r1) // 2, (c0 + c1) // 2
    for sub in ((r0, rm, c0, cm), (r0, rm, cm, c1), (rm, r1, c0, cm), (rm, r1, cm, c1)):
        if sub[0] < sub[1] and sub[2] < sub[3]:
            _add_core(pieces, sk, sub, origin, padded, prob, radius)


SMALL_HOLE_PX = 16  # holes of the road mask up to this area are filled before thinning


def skeletonize_components(mask: np.ndarray) -> np.ndarray:
    """`skeletonize(mask)`, one 8-connected component at a time inside its bounding box, after
    filling holes of up to SMALL_HOLE_PX pixels: thinning draws a ring around each, and a
    speckled mask left rings and stubs of 3-4 m on a real tile.

    Zhang-Suen thinning scans the whole array on every pass, though roads cover a few per cent
    of it; components never touch, so thinning each alone in its box gives the same skeleton
    for a fraction of the scanning (2.5x faster on the benchmark's mask).
    """
    holes, count = ndimage.label(~mask)  # background, 4-connected (the complement of 8-connected roads)
    if count:
        small = np.bincount(holes.ravel()) <= SMALL_HOLE_PX
        small[0] = False  # label 0: the road pixels themselves
        mask = mask | small[holes]
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if count <= 1:
        return skeletonize(mask)
    out = np.zeros(mask.shape, bool)
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        out[box] |= skeletonize(labels[box] == label)
    return out


def block_rows(read: Reader, shape: tuple[int, int], block: int, halo: int, prob_scale: float,
               on_progress: Callable[[float], None] | None,
               is_cancelled: Callable[[], bool] | None) -> Iterator[tuple[int, Pieces]]:
    """Skeletonize block by block (core + halo), one row of blocks at a time.

    Yields (rows done, the pieces the cores of that block row own): every piece of the rows
    above `rows done` has been yielded by then.
    """
    h, w = shape
    radius = max(halo - MARGIN_PX, 1)
    n_blocks = -(-h // block) * -(-w // block)
    done = 0
    for r0 in range(0, h, block):
        r1 = min(r0 + block, h)
        pieces = Pieces(prob_scale)
        for c0 in range(0, w, block):
            c1 = min(c0 + block, w)
            if is_cancelled is not None and is_cancelled():
                raise Cancelled("vectorising cancelled")
            wr0, wr1 = max(r0 - halo, 0), min(r1 + halo, h)
            wc0, wc1 = max(c0 - halo, 0), min(c1 + halo, w)
            mask, prob = read(wr0, wr1, wc0, wc1)
            if mask.any():
                padded = np.pad(mask, radius, constant_values=True)
                _add_core(pieces, skeletonize_components(mask), (r0 - wr0, r1 - wr0, c0 - wc0, c1 - wc0),
                          (wr0, wc0), padded, prob, radius)
            done += 1
            if on_progress is not None:
                on_progress(done / n_blocks)
        yield r1, pieces
