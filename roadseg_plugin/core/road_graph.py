"""Skeleton pieces -> cleaned skeleton graph in pixel coordinates: the clean-up rules.

`skeleton_pieces` thins the mask block by block (with a halo, so block skeletons equal the
whole-mask skeleton) and keeps the path pieces each block owns; `_pieces_graph` stitches pieces
by pixel position into one sparse graph and `clean` cleans it: chains through degree-2 nodes
merged, spurs pruned, gaps between aligned line ends bridged, chains merged again. Every rule
looks only a bounded distance around what it decides, which lets `road_stream` run them band by
band; it also drops short components, and `road_stream.road_graph` gives apls the whole graph.

Clean-up lengths are in metres, converted with `scale` (metres per pixel along rows,
columns). Each edge keeps per-segment samples along its skeleton pixels: widths 2 * d - 1 px (d:
distance to the nearest background pixel, as scipy's EDT) and probabilities, from which
`vectorise` derives its `width_m` and `mean_prob` attributes.
"""
from __future__ import annotations

import math
from itertools import pairwise

import networkx as nx
import numpy as np
from scipy.spatial import cKDTree

from .errors import RasterError
from .skeleton_pieces import MARGIN_PX, Pieces, Reader

GAP_ANGLE_DEG = 40.0  # an end's direction and the bridge may differ by at most this
AUTO_BLOCK_PIXELS = 4096 * 4096  # in-memory masks larger than this are processed in blocks

_SPUR_PASSES = 3
_LOOKBACK_M = 10.0  # how far back along a line its end direction is measured


def _seg_lengths(pts: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    step = np.diff(pts.astype(np.float64), axis=0) * scale
    return np.hypot(step[:, 0], step[:, 1])

# --------------------------------------------------------------------------- the graph


def _pieces_graph(pieces: Pieces, width: int, scale: tuple[float, float]) -> nx.MultiGraph:
    """Stitch pieces into one graph whose nodes are pixel positions shared by piece ends."""
    graph = nx.MultiGraph()
    n = len(pieces.pts)
    if not n:
        return graph
    ends = np.array([(p[0, 0], p[0, 1], p[-1, 0], p[-1, 1]) for p in pieces.pts], dtype=np.int64)
    keys = np.concatenate([ends[:, 0] * width + ends[:, 1], ends[:, 2] * width + ends[:, 3]])
    uniq, inv = np.unique(keys, return_inverse=True)
    counts = np.array([len(p) for p in pieces.pts])
    allpts = np.concatenate(pieces.pts)
    seg = _seg_lengths(allpts, scale)
    inner = np.ones(seg.size, bool)
    inner[np.cumsum(counts)[:-1] - 1] = False  # the step from one piece to the next
    lengths = np.bincount(np.repeat(np.arange(n), counts)[:-1][inner], seg[inner], minlength=n)
    graph.add_nodes_from((i, {"rc": (int(k // width), int(k % width))}) for i, k in enumerate(uniq))
    graph.add_edges_from(
        (int(inv[i]), int(inv[n + i]),
         {"pts": pieces.pts[i], "start": int(inv[i]), "len": float(lengths[i]), "w": pieces.width[i],
          "p": pieces.prob[i]})
        for i in range(n))
    return graph


def _oriented(data: dict, node: int) -> np.ndarray:
    """An edge's vertices starting at `node`."""
    return data["pts"] if data["start"] == node else data["pts"][::-1]


def _samples(data: dict, node: int) -> tuple[np.ndarray, np.ndarray]:
    """An edge's per-segment widths and probabilities, in the order of `_oriented(data, node)`."""
    return (data["w"], data["p"]) if data["start"] == node else (data["w"][::-1], data["p"][::-1])


def _join(a: int, da: dict, node: int, db: dict) -> dict:
    pts = np.concatenate([_oriented(da, node)[::-1], _oriented(db, node)[1:]])
    (wa, pa), (wb, pb) = _samples(da, node), _samples(db, node)
    return {"pts": pts, "start": a, "len": da["len"] + db["len"], "w": np.concatenate([wa[::-1], wb]),
            "p": np.concatenate([pa[::-1], pb])}


def _bridge(a: int, b: int, graph: nx.MultiGraph, length: float) -> None:
    """A straight edge between nodes `a` and `b`: one segment with no width or probability sample."""
    graph.add_edge(a, b, pts=np.array([graph.nodes[a]["rc"], graph.nodes[b]["rc"]], dtype=np.int32), start=a,
                   len=float(length), w=np.full(1, np.nan, np.float32), p=np.zeros(1, np.float32))


def _merge_chains(graph: nx.MultiGraph) -> None:
    """Join the two edges at every degree-2 node, so a road between junctions is one edge."""
    for node in [n for n, k in graph.degree() if k == 2]:
        inc = list(graph.edges(node, data=True))
        if len(inc) != 2:
            continue  # a loop closed on itself
        (_, a, da), (_, b, db) = inc
        graph.remove_node(node)
        graph.add_edge(a, b, **_join(a, da, node, db))


def _prune_spurs(graph: nx.MultiGraph, spur_m: float) -> None:
    """Remove dangling branches shorter than `spur_m`, a few passes, re-merging chains.

    At a junction left with fewer than two other edges, the longest spurs are kept so a
    road end with hairs stays as long as the road (its longest branch continues it).
    """
    for _ in range(_SPUR_PASSES):
        deg = dict(graph.degree())
        spurs: dict[int, list[tuple[float, int, int, int]]] = {}
        for u, v, k, d in graph.edges(keys=True, data=True):
            if u != v and d["len"] < spur_m and min(deg[u], deg[v]) == 1 < max(deg[u], deg[v]):
                hub = v if deg[u] == 1 else u
                spurs.setdefault(hub, []).append((d["len"], u, v, k))
        drop = []
        for hub, cands in spurs.items():
            keep = max(0, 2 - (deg[hub] - len(cands)))
            drop += [c[1:] for c in sorted(cands)[:len(cands) - keep]]
        if not drop:
            break
        graph.remove_edges_from(drop)
        graph.remove_nodes_from([n for n, k in list(graph.degree()) if k == 0])
        _merge_chains(graph)


def _end_direction(graph: nx.MultiGraph, node: int, scale: np.ndarray) -> np.ndarray:
    """Unit vector (metric row/col) pointing out of the line at a degree-1 `node`."""
    (_, _, d), = graph.edges(node, data=True)
    pts = _oriented(d, node)[: int(_LOOKBACK_M / scale.min()) * 2 + 2].astype(np.float64) * scale
    cum = np.concatenate(([0.0], np.cumsum(np.hypot(*np.diff(pts, axis=0).T))))
    back = pts[min(int(np.searchsorted(cum, _LOOKBACK_M)), len(pts) - 1)]
    vec = pts[0] - back
    norm = np.hypot(*vec)
    return vec / norm if norm > 0 else vec


def _bridge_gaps(graph: nx.MultiGraph, gap_m: float, scale: tuple[float, float]) -> None:
    """Join line ends closer than `gap_m` when both ends point along the bridge.

    Ends pair greedily, nearest first. An end left unpaired may then join the nearest vertex
    of another line ahead of it (a side road stopping short of the road it meets).
    """
    ends = [n for n, k in graph.degree() if k == 1]
    if gap_m <= 0 or not ends:
        return
    sc = np.asarray(scale, dtype=np.float64)
    pos = np.array([graph.nodes[n]["rc"] for n in ends], dtype=np.float64) * sc
    dirs = np.array([_end_direction(graph, n, sc) for n in ends])
    cos_max = math.cos(math.radians(GAP_ANGLE_DEG))
    used = np.zeros(len(ends), bool)
    pairs = cKDTree(pos).query_pairs(gap_m, output_type="ndarray")
    if len(pairs):
        vec = pos[pairs[:, 1]] - pos[pairs[:, 0]]
        dist = np.hypot(vec[:, 0], vec[:, 1])
        unit = vec / np.maximum(dist, 1e-9)[:, None]
        ok = ((np.einsum("ij,ij->i", dirs[pairs[:, 0]], unit) >= cos_max)
              & (np.einsum("ij,ij->i", dirs[pairs[:, 1]], -unit) >= cos_max))
        for (i, j), dd in sorted(zip(pairs[ok].tolist(), dist[ok], strict=True), key=lambda t: t[1]):
            if not (used[i] or used[j]):
                used[i] = used[j] = True
                _bridge(ends[i], ends[j], graph, dd)
    _bridge_to_lines(graph, [e for e, u in zip(ends, used, strict=True) if not u],
                     pos[~used], dirs[~used], gap_m, sc, cos_max)


def _bridge_to_lines(graph: nx.MultiGraph, ends: list[int], pos: np.ndarray, dirs: np.ndarray,
                     gap_m: float, sc: np.ndarray, cos_max: float) -> None:
    if not ends:
        return
    edges = list(graph.edges(keys=True, data=True))
    sizes = np.array([len(d["pts"]) for *_, d in edges])
    offsets = np.concatenate(([0], np.cumsum(sizes)))
    verts = np.concatenate([d["pts"] for *_, d in edges]).astype(np.float64) * sc
    owner = np.repeat(np.arange(len(edges)), sizes)
    index = np.arange(len(verts)) - offsets[owner]
    # near a dangling end of another line, joining it is end-to-end, already judged above
    step = np.hypot(*np.diff(verts, axis=0).T)
    step[offsets[1:-1] - 1] = 0.0  # no step from one edge to the next
    cum = np.concatenate(([0.0], np.cumsum(step)))
    from_start, to_stop = cum - cum[offsets[owner]], cum[offsets[owner + 1] - 1] - cum
    deg = dict(graph.degree())
    loose = np.array([(deg[d["start"]] == 1, deg[v if d["start"] == u else u] == 1) for u, v, _, d in edges])
    free = ~((loose[owner, 0] & (from_start < gap_m)) | (loose[owner, 1] & (to_stop < gap_m)))
    end_set = set(ends)
    own_edge = {n: i for i, (u, v, _, _) in enumerate(edges) for n in (u, v) if n in end_set}
    cell = np.floor(pos / gap_m).astype(np.int64)  # index only vertices in cells next to an end
    around = (cell[:, None, :] + np.stack(np.meshgrid([-1, 0, 1], [-1, 0, 1]), -1).reshape(1, 9, 2)).reshape(-1, 2)
    key = np.floor(verts / gap_m).astype(np.int64) @ np.array([1 << 32, 1])
    cand = np.flatnonzero(free & np.isin(key, around @ np.array([1 << 32, 1])))
    if not cand.size:
        return
    tree = cKDTree(verts[cand])
    targets: dict[int, list[tuple[int, int, float]]] = {}  # edge -> (vertex index, end, dist)
    for e, p, dvec, near in zip(ends, pos, dirs, tree.query_ball_point(pos, gap_m), strict=True):
        near = cand[np.asarray(near, dtype=np.int64)]
        near = near[owner[near] != own_edge[e]]
        if not near.size:
            continue
        vec = verts[near] - p
        dist = np.hypot(vec[:, 0], vec[:, 1])
        good = (dist > 0) & (vec @ dvec >= cos_max * dist)
        if good.any():
            best = near[good][np.argmin(dist[good])]
            targets.setdefault(int(owner[best]), []).append((int(index[best]), e, float(dist[good].min())))
    next_id = max(graph.nodes) + 1
    for ei, hits in targets.items():
        u, v, k, d = edges[ei]
        pts, start = d["pts"], d["start"]
        stop = v if start == u else u
        cuts = sorted({i for i, _, _ in hits if 0 < i < len(pts) - 1})
        at = {0: start, len(pts) - 1: stop}
        for i in cuts:
            at[i] = next_id
            graph.add_node(next_id, rc=tuple(int(x) for x in pts[i]))
            next_id += 1
        if cuts:
            graph.remove_edge(u, v, k)
            bounds = [0, *cuts, len(pts) - 1]
            for a, b in pairwise(bounds):
                part = pts[a:b + 1]
                graph.add_edge(at[a], at[b], pts=part, start=at[a], len=float(_seg_lengths(part, tuple(sc)).sum()),
                               w=d["w"][a:b], p=d["p"][a:b])
        for i, e, dist in hits:
            target = at[i] if i in at else None
            if target is not None and target != e:
                _bridge(e, target, graph, dist)


def _check(min_length: float, spur_length: float, gap: float, tolerance: float,
           block_size: int | None, halo: int) -> None:
    for name, value in (("min_length", min_length), ("spur_length", spur_length), ("gap", gap),
                        ("tolerance", tolerance)):
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0 metres, got {value}")
    if block_size is not None and block_size < 64:
        raise ValueError(f"block_size must be at least 64 pixels, got {block_size}")
    if halo < 2 * MARGIN_PX:
        raise ValueError(f"halo must be at least {2 * MARGIN_PX} pixels, got {halo}")


def _merge_close_junctions(graph: nx.MultiGraph, scale: tuple[float, float]) -> None:
    """Make one junction of two joined by a link shorter than the road is wide there.

    A crossing whose roads meet a few pixels apart skeletonises into two junctions and a stub
    of 2-5 m between them, which no spur pruning removes (both its ends are junctions). The
    link goes; its far junction's other lines end at the near one, moved to the link's middle.
    """
    sc = np.asarray(scale, dtype=np.float64)
    for u, v, key, d in list(graph.edges(keys=True, data=True)):
        if u == v or not graph.has_edge(u, v, key) or not np.isfinite(d["w"]).any():
            continue
        width_m = float(np.nanmean(d["w"])) * float(sc.mean())
        if graph.degree(u) < 3 or graph.degree(v) < 3 or d["len"] >= width_m:
            continue
        middle = tuple(int(x) for x in d["pts"][len(d["pts"]) // 2])
        graph.remove_edge(u, v, key)
        for node in (u, v):  # every other line at either junction now ends at the middle
            for _, other, k, e in list(graph.edges(node, keys=True, data=True)):
                pts = _oriented(e, node).copy()
                pts[0] = middle
                far = node if other == node else other
                target = u if far in (u, v) else far
                graph.remove_edge(node, other, k)
                w, p = _samples(e, node)
                graph.add_edge(u, target, pts=pts, start=u, len=float(_seg_lengths(pts, scale).sum()), w=w, p=p)
        graph.nodes[u]["rc"] = middle
        if v != u and graph.degree(v) == 0:
            graph.remove_node(v)


def clean(graph: nx.MultiGraph, spur_length: float, gap: float, scale: tuple[float, float]) -> None:
    """The clean-up of a stitched skeleton graph, in place: chains merged, spurs pruned, gaps
    bridged, spurs pruned again (a line cut where a side road now joins it can leave a stub of a
    few metres beyond the joint), junctions closer than the road's width made one, chains merged
    again. Short components are dropped by `road_stream`, which sees them whole."""
    _merge_chains(graph)
    _prune_spurs(graph, spur_length)
    _bridge_gaps(graph, gap, scale)
    _merge_chains(graph)
    _prune_spurs(graph, spur_length)
    _merge_close_junctions(graph, scale)
    _merge_chains(graph)


def _array_reader(mask: np.ndarray, prob: np.ndarray | None) -> tuple[Reader, float]:
    if prob is not None:
        prob = np.asarray(prob)
        if prob.shape != mask.shape:
            raise RasterError("prob", f"probability shape {prob.shape} differs from mask shape {mask.shape}",
                              "pass the probability array the mask was thresholded from")

    def read(r0: int, r1: int, c0: int, c1: int) -> tuple[np.ndarray, np.ndarray | None]:
        return mask[r0:r1, c0:c1], None if prob is None else prob[r0:r1, c0:c1]

    return read, (1 / 255 if prob is not None and prob.dtype == np.uint8 else 1.0)


def _as_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise RasterError("mask", f"expected a 2-D road mask, got shape {mask.shape}",
                          "pass a single band (H, W) array")
    return mask if mask.dtype == bool else mask != 0
