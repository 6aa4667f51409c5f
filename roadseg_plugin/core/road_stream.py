"""Road lines of a mask read a row of blocks at a time, each line handed out once it is final.

The clean-up of `road_graph` (chains merged, spurs pruned, gaps bridged) decides everything from
what lies near: a spur from the few metres around its junction, a bridge from the ends and lines
within the gap. So the mask is cleaned in horizontal bands, each from the skeleton pieces of
its rows plus `context_rows` above and below it, and a band keeps only the line segments it
owns (by the row of their midpoint, as blocks own pieces). Within a band the result equals the
whole mask's; a line crossing into the next band is cut at a vertex both bands see alike and
joined again by that vertex and its two neighbours (a "seam"). Pieces are forgotten once no
band needs them, so memory follows the raster's width, not its area.

Short pieces of network (`min_length`) are judged on whole connected components: a component
is kept, and its finished lines handed out, as soon as its lines add up to `min_length`; one
that stays shorter is dropped once nothing below can reach it any more.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import networkx as nx
import numpy as np

from .params import BLOCK_SIZE, GAP_M, HALO_PX, MIN_LENGTH_M, SPUR_LENGTH_M
from .road_graph import (
    _LOOKBACK_M,
    AUTO_BLOCK_PIXELS,
    _array_reader,
    _as_mask,
    _check,
    _oriented,
    _pieces_graph,
    _samples,
    _seg_lengths,
    clean,
)
from .skeleton_pieces import MARGIN_PX, Pieces, Reader, block_rows, runs, segment_rows

Key = tuple  # (row, col) of a node, or (row, col) x 3 of a seam: the vertex where a line was cut and its neighbours


@dataclass
class Line:
    """One finished road line in pixel coordinates (see `skeleton_pieces.Pieces` for the samples)."""

    pts: np.ndarray  # (k, 2) int row, col vertices
    width: np.ndarray  # (k - 1,) float32 width px per segment, NaN where not sampled (a bridge)
    prob: np.ndarray  # (k - 1,) float32 probability per segment
    length: float  # metres, with the clean-up's scale
    ends: tuple[Key, Key] = ((), ())

    def reversed(self) -> Line:
        return Line(self.pts[::-1], self.width[::-1], self.prob[::-1], self.length, self.ends[::-1])


def context_rows(scale: tuple[float, float], spur_length: float, gap: float) -> int:
    """Rows of skeleton around a band that decide its clean-up: four spur passes (two before and
    after the gaps are bridged), a gap bridged (and the bridges its ends compete for), the
    look-back of an end's direction, close junctions made one, node margins."""
    step = max(min(scale), 1e-9)
    reach = 4 * (spur_length + gap) + (2 * _LOOKBACK_M if gap > 0 else 0)
    return math.ceil(reach / step) + 2 * MARGIN_PX


def _reach_rows(scale: tuple[float, float], gap: float) -> int:
    """How far above a band's first row a segment it owns can end (a bridge is the longest)."""
    return math.ceil(gap / max(min(scale), 1e-9)) + MARGIN_PX


def _is_seam(key: Key) -> bool:
    return len(key) == 6


def _key_row(key: Key) -> int:
    return key[2] if len(key) == 6 else key[0]


def _seam(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> Key:
    forward = (int(a[0]), int(a[1]), int(b[0]), int(b[1]), int(c[0]), int(c[1]))
    return min(forward, forward[4:] + forward[2:4] + forward[:2])


def _node(p: np.ndarray) -> Key:
    return int(p[0]), int(p[1])


class _Component:
    """Lines joined by shared nodes or seams; `length` so far, `open` seams still waiting."""

    __slots__ = ("keys", "length", "open", "max_row", "lines")

    def __init__(self, key: Key, row: int) -> None:
        self.keys = {key}
        self.length = 0.0
        self.open = 0
        self.max_row = row
        self.lines: list[Line] = []


class _Stitcher:
    """Joins band parts at their seams into lines and tracks the components they form."""

    def __init__(self, min_length: float, reach: int) -> None:
        self.min_length, self.reach = min_length, reach
        self.component: dict[Key, _Component] = {}
        self.waiting: dict[Key, Line] = {}  # seam -> the part that ends there, until its other side comes

    def _of(self, key: Key, row: int) -> _Component:
        found = self.component.get(key)
        if found is None:
            found = self.component[key] = _Component(key, row)
        return found

    def _merge(self, a: _Component, b: _Component) -> _Component:
        if a is b:
            return a
        if len(a.keys) < len(b.keys):
            a, b = b, a
        for key in b.keys:
            self.component[key] = a
        a.keys |= b.keys
        a.length += b.length
        a.open += b.open
        a.max_row = max(a.max_row, b.max_row)
        a.lines += b.lines
        return a

    def add(self, part: Line) -> None:
        first, last = part.ends
        rows = _key_row(first), _key_row(last)
        comp = self._merge(self._of(first, rows[0]), self._of(last, rows[1]))
        comp.length += part.length
        comp.max_row = max(comp.max_row, *rows)
        for key in dict.fromkeys(part.ends):
            if not _is_seam(key):
                continue
            other = self.waiting.pop(key, None)
            if other is None:
                self.waiting[key] = part
                comp.open += 1
                continue
            comp.open -= 1
            comp.keys.discard(key)
            del self.component[key]
            if other is part:  # closed on itself (never for a whole mask's skeleton): a ring
                part = Line(part.pts, part.width, part.prob, part.length, (key, key))
                break
            part = self._join(part, other, key)
        if not (_is_seam(part.ends[0]) or _is_seam(part.ends[1])) or part.ends[0] == part.ends[1]:
            comp.lines.append(part)

    def _join(self, first: Line, second: Line, key: Key) -> Line:
        a = first if first.ends[1] == key else first.reversed()
        b = second if second.ends[0] == key else second.reversed()
        joined = Line(np.concatenate([a.pts, b.pts[1:]]), np.concatenate([a.width, b.width]),
                      np.concatenate([a.prob, b.prob]), a.length + b.length, (a.ends[0], b.ends[1]))
        for end in joined.ends:
            if self.waiting.get(end) is first or self.waiting.get(end) is second:
                self.waiting[end] = joined
        return joined

    def settle(self, band_end: int, final: bool) -> list[Line]:
        """Lines that are final once every row above `band_end` is cleaned; forgets what no
        later band can reach."""
        out: list[Line] = []
        limit = band_end - self.reach
        for comp in {id(c): c for c in self.component.values()}.values():
            kept = comp.length >= self.min_length
            if kept:
                out += comp.lines
                comp.lines = []
            elif not final and not (comp.open == 0 and comp.max_row < limit):
                continue  # may still grow: wait
            gone = comp.keys if final or not kept else {k for k in comp.keys if _key_row(k) < limit}
            for key in gone:
                del self.component[key]
            comp.keys = comp.keys - gone if gone is not comp.keys else set()
        if final and self.waiting:  # never for bands of one mask: keep such parts rather than lose roads
            out += list({id(p): p for p in self.waiting.values()}.values())
            self.waiting.clear()
        return out


class LineStream:
    """Cleaned road lines of a mask fed one row of blocks at a time (see the module notes).

    Args:
        shape: (rows, columns) of the mask.
        scale: metres per pixel step along rows, columns.
        min_length, spur_length, gap: clean-up lengths in metres (see `road_graph`).
    """

    def __init__(self, shape: tuple[int, int], scale: tuple[float, float], *, min_length: float,
                 spur_length: float, gap: float) -> None:
        self.height, self.width = shape
        self.scale, self.spur_length, self.gap = scale, spur_length, gap
        self.context = context_rows(scale, spur_length, gap)
        self.raw = Pieces()
        self.band_start = 0
        self.stitcher = _Stitcher(min_length, _reach_rows(scale, gap))

    def push(self, rows_done: int, pieces: Pieces) -> list[Line]:
        """Add the pieces of the rows up to `rows_done`; returns the lines that became final."""
        self.raw.extend(pieces)
        final = rows_done >= self.height
        band_end = self.height if final else rows_done - self.context
        if band_end <= self.band_start:
            return []
        window = self.raw.rows_from(self.band_start - self.context)
        graph = _pieces_graph(window, self.width, self.scale)
        clean(graph, self.spur_length, self.gap, self.scale)
        for *_, data in graph.edges(data=True):
            self._parts(data, self.band_start, band_end)
        self.band_start = band_end
        self.raw = window.rows_from(band_end - self.context)
        return self.stitcher.settle(band_end, final)

    def _parts(self, data: dict, top: int, bottom: int) -> None:
        """The runs of an edge's segments that rows [top, bottom) own, to the stitcher."""
        pts = _oriented(data, data["start"])
        width, prob = _samples(data, data["start"])
        low, high = int(pts[:, 0].min()), int(pts[:, 0].max())
        if high < top - 1 or low > bottom:  # no segment's midpoint row can be in the band
            return
        if low >= top and high < bottom:  # the whole edge: the common case, no seam
            self.stitcher.add(Line(pts, width, prob, float(data["len"]), (_node(pts[0]), _node(pts[-1]))))
            return
        rows = segment_rows(pts)
        last = len(pts) - 1
        for s, e in zip(*runs((rows >= top) & (rows < bottom)), strict=True):
            ends = (_node(pts[0]) if s == 0 else _seam(pts[s - 1], pts[s], pts[s + 1]),
                    _node(pts[-1]) if e == last else _seam(pts[e - 1], pts[e], pts[e + 1]))
            part = pts[s:e + 1]
            self.stitcher.add(Line(part, width[s:e], prob[s:e], float(_seg_lengths(part, self.scale).sum()), ends))


def iter_lines(read: Reader, shape: tuple[int, int], scale: tuple[float, float], prob_scale: float, *,
               min_length: float, spur_length: float, gap: float, block_size: int | None, halo: int,
               on_progress: Callable[[float], None] | None = None,
               is_cancelled: Callable[[], bool] | None = None) -> Iterator[list[Line]]:
    """The cleaned road lines of a mask, a batch per row of blocks (see the module notes).

    `read(r0, r1, c0, c1)` gives the (mask, probability or None) of a window; `block_size` None
    means one block for masks up to `road_graph.AUTO_BLOCK_PIXELS`, else blocks of BLOCK_SIZE.
    """
    h, w = shape
    block = block_size or (max(h, w, 1) if h * w <= AUTO_BLOCK_PIXELS else BLOCK_SIZE)
    stream = LineStream(shape, scale, min_length=min_length, spur_length=spur_length, gap=gap)
    if h == 0 or w == 0:
        return
    for rows_done, pieces in block_rows(read, shape, block, halo, prob_scale, on_progress, is_cancelled):
        lines = stream.push(rows_done, pieces)
        if lines:
            yield lines


def road_graph(mask: np.ndarray, prob: np.ndarray | None = None, *, scale: tuple[float, float] = (1.0, 1.0),
               min_length: float = MIN_LENGTH_M, spur_length: float = SPUR_LENGTH_M, gap: float = GAP_M,
               block_size: int | None = None, halo: int = HALO_PX) -> nx.MultiGraph:
    """The cleaned road graph of a boolean mask, in pixel coordinates.

    Nodes carry `rc` (row, col); each edge carries `pts` ((k, 2) int row/col vertices from
    the node `start`), `len` (metres, with `scale` = metres per pixel along rows, columns),
    and per-segment samples `w` (width px, NaN where not sampled) and `p` (probability).
    """
    mask = _as_mask(mask)
    _check(min_length, spur_length, gap, 0.0, block_size, halo)
    read, prob_scale = _array_reader(mask, prob)
    shape = (int(mask.shape[0]), int(mask.shape[1]))
    graph = nx.MultiGraph()
    ids: dict[tuple[int, int], int] = {}
    for batch in iter_lines(read, shape, scale, prob_scale, min_length=min_length, spur_length=spur_length,
                            gap=gap, block_size=block_size, halo=halo):
        for line in batch:
            a, b = (ids.setdefault(_node(p), len(ids)) for p in (line.pts[0], line.pts[-1]))
            for node, p in ((a, line.pts[0]), (b, line.pts[-1])):
                graph.add_node(node, rc=_node(p))
            graph.add_edge(a, b, pts=line.pts, start=a, len=line.length, w=line.width, p=line.prob)
    return graph
