"""APLS: Average Path Length Similarity of road masks (Van Etten et al. 2018, SpaceNet 3).

Both masks become cleaned centreline graphs (`road_stream.road_graph`, pixel units, no gap
bridging so the mask is judged as it is). Control nodes are injected along every edge at
`node_spacing_px`. For the ground truth -> proposal direction each truth control node is
snapped onto the nearest point of the proposal graph (inserted there as a node) when it
lies within `max_snap_px`. For pairs of truth control nodes joined by a path of length
L >= `min_path_px`, the proposal path L' between their snapped copies scores
min(1, |L - L'| / L); a node that could not be snapped, or no proposal path, scores 1.
A direction's score is 1 - mean; the proposal -> truth direction is computed the same
way with the roles swapped, and APLS is their harmonic mean (as SpaceNet's reference
`apls.py`), 0 when either direction is 0. Both masks empty: 1.0; exactly one empty: 0.0.
Big graphs use at most `max_nodes` control nodes as path ends, sampled with `seed`.
"""
from __future__ import annotations

import numpy as np
import shapely
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra
from scipy.spatial import cKDTree

from .params import MIN_LENGTH_M, SPUR_LENGTH_M
from .road_stream import road_graph

NODE_SPACING_PX = 50.0  # SpaceNet injects control points every 50 m; masks here are ~1 m/px
MAX_SNAP_PX = 4.0  # SpaceNet's max_snap_dist (4 m)
MIN_PATH_PX = 10.0  # SpaceNet's min_path_length: shorter paths are not scored
MAX_NODES = 500  # SpaceNet's max_nodes: path ends per direction at most
_EPS = 1e-6  # weight of zero-length links (csgraph drops explicit zeros)
_SAME_PX = 1e-3  # path lengths closer than this are equal (rounding, _EPS links)


class _Net:
    """A graph as arrays: node positions (row, col) and polyline edges with arc lengths."""

    def __init__(self, mask: np.ndarray) -> None:
        graph = road_graph(mask, min_length=MIN_LENGTH_M, spur_length=SPUR_LENGTH_M, gap=0.0)
        ids = {n: i for i, n in enumerate(graph.nodes)}
        self.pos = np.array([graph.nodes[n]["rc"] for n in graph.nodes], dtype=np.float64).reshape(-1, 2)
        self.ends: list[tuple[int, int]] = []
        self.pts: list[np.ndarray] = []
        self.cum: list[np.ndarray] = []
        for u, v, d in graph.edges(data=True):
            start, stop = (u, v) if d["start"] == u else (v, u)
            pts = d["pts"].astype(np.float64)
            self.ends.append((ids[start], ids[stop]))
            self.pts.append(pts)
            self.cum.append(np.concatenate(([0.0], np.cumsum(np.hypot(*np.diff(pts, axis=0).T)))))

    @property
    def empty(self) -> bool:
        return not self.pts

    def at(self, e: int, s: np.ndarray) -> np.ndarray:
        """Positions at arc lengths `s` along edge `e`."""
        return np.column_stack([np.interp(s, self.cum[e], self.pts[e][:, k]) for k in (0, 1)])

    def split(self, inserts: dict[int, list[tuple[float, int]]], n_nodes: int):
        """Sparse adjacency with edges cut at (arc length, node id) inserts."""
        rows, cols, w = [], [], []
        for e, (u, v) in enumerate(self.ends):
            cuts = sorted(inserts.get(e, []))
            chain = [u, *(n for _, n in cuts), v]
            s = np.array([0.0, *(a for a, _ in cuts), self.cum[e][-1]])
            rows += chain[:-1]
            cols += chain[1:]
            w += np.maximum(np.diff(s), _EPS).tolist()
        keep: dict[tuple[int, int], float] = {}  # parallel edges: the shortest counts
        for a, b, x in zip(rows, cols, w, strict=True):
            key = (min(a, b), max(a, b))
            keep[key] = min(x, keep.get(key, np.inf))
        if not keep:
            return coo_matrix((n_nodes, n_nodes)).tocsr()
        heads, tails = zip(*keep.keys(), strict=True)
        return coo_matrix((list(keep.values()), (heads, tails)), shape=(n_nodes, n_nodes)).tocsr()

    def control_points(self, spacing: float) -> tuple[np.ndarray, object]:
        """Positions of nodes + injected control points, and the graph through them."""
        inserts: dict[int, list[tuple[float, int]]] = {}
        extra = []
        n = len(self.pos)
        for e, cum in enumerate(self.cum):
            s = np.arange(spacing, cum[-1] - 1e-9, spacing)
            inserts[e] = [(float(a), n + i) for i, a in enumerate(s)]
            extra.append(self.at(e, s))
            n += s.size
        pos = np.concatenate([self.pos, *extra]) if extra else self.pos
        return pos, self.split(inserts, len(pos))

    def snap(self, points: np.ndarray, max_dist: float) -> tuple[np.ndarray, object]:
        """Insert `points` where they are within `max_dist` of this graph.

        Returns the node id of each point in the new graph (-1: not snapped) and the graph.
        """
        samples, owner = [], []
        for e, cum in enumerate(self.cum):
            s = np.append(np.arange(0.0, cum[-1], 0.5), cum[-1])
            samples.append(self.at(e, s))
            owner.append(np.full(s.size, e))
        dist, idx = cKDTree(np.concatenate(samples)).query(points, distance_upper_bound=max_dist)
        hit = np.flatnonzero(np.isfinite(dist))
        edge = np.concatenate(owner)[idx[hit]]
        lines = shapely.linestrings(np.concatenate(self.pts),
                                    indices=np.repeat(np.arange(len(self.pts)), [len(p) for p in self.pts]))
        arc = shapely.line_locate_point(lines[edge], shapely.points(points[hit]).reshape(-1))  # exact projection
        ids = np.full(len(points), -1)
        ids[hit] = len(self.pos) + np.arange(hit.size)
        inserts: dict[int, list[tuple[float, int]]] = {}
        for e, a, n in zip(edge.tolist(), arc.tolist(), ids[hit].tolist(), strict=True):
            inserts.setdefault(e, []).append((a, n))
        return ids, self.split(inserts, len(self.pos) + hit.size)


def _lengths(graph, nodes: np.ndarray, chunk: int = 64) -> np.ndarray:
    """Shortest path lengths between all `nodes` (memory: chunk x graph size at a time)."""
    return np.concatenate([dijkstra(graph, directed=False, indices=nodes[i:i + chunk])[:, nodes]
                           for i in range(0, len(nodes), chunk)]).reshape(len(nodes), len(nodes))


def _direction(a: _Net, b: _Net, spacing: float, max_snap: float, min_path: float,
               max_nodes: int, seed: int) -> float | None:
    """1 - mean path-length difference for control-node pairs of `a` mapped onto `b`."""
    pos, graph_a = a.control_points(spacing)
    sample = np.arange(len(pos))
    if len(pos) > max_nodes:
        sample = np.sort(np.random.default_rng(seed).choice(len(pos), max_nodes, replace=False))
    ids, graph_b = b.snap(pos[sample], max_snap)
    la = _lengths(graph_a, sample)
    lb = np.full_like(la, np.inf)
    hit = ids >= 0
    if hit.any():
        lb[np.ix_(hit, hit)] = _lengths(graph_b, ids[hit])
    scored = np.isfinite(la) & (la >= min_path)
    np.fill_diagonal(scored, False)
    if not scored.any():
        return None
    gap = np.abs(la[scored] - lb[scored])
    diff = np.where(gap < _SAME_PX, 0.0, np.minimum(1.0, gap / la[scored]))  # no path: inf -> 1
    return float(1.0 - diff.mean())


def apls_scores(true_mask: np.ndarray, pred_mask: np.ndarray, valid: np.ndarray | None = None, *,
                node_spacing_px: float = NODE_SPACING_PX, max_snap_px: float = MAX_SNAP_PX,
                min_path_px: float = MIN_PATH_PX, max_nodes: int = MAX_NODES,
                seed: int = 0) -> tuple[float, float, float]:
    """(APLS, truth -> proposal score, proposal -> truth score) for two boolean masks.

    Pixels where `valid` is False are removed from both masks first, so roads in no-data
    areas count for neither side. A direction with no scorable pair takes the other's value.
    """
    true_mask, pred_mask = np.asarray(true_mask) != 0, np.asarray(pred_mask) != 0
    if true_mask.shape != pred_mask.shape:
        raise ValueError(f"mask shapes differ: {true_mask.shape} vs {pred_mask.shape}")
    if valid is not None:
        true_mask, pred_mask = true_mask & valid, pred_mask & valid
    truth, prop = _Net(true_mask), _Net(pred_mask)
    if truth.empty or prop.empty:
        both = float(truth.empty and prop.empty)
        return both, both, both
    args = (node_spacing_px, max_snap_px, min_path_px, max_nodes, seed)
    fwd, back = _direction(truth, prop, *args), _direction(prop, truth, *args)
    if fwd is None and back is None:
        return 1.0, 1.0, 1.0
    fwd_score: float = back if fwd is None else fwd  # type: ignore[assignment]  # not both None here
    back_score: float = fwd_score if back is None else back
    total = 0.0 if fwd_score <= 0 or back_score <= 0 else 2.0 / (1.0 / fwd_score + 1.0 / back_score)
    return total, fwd_score, back_score


def apls(true_mask: np.ndarray, pred_mask: np.ndarray, valid: np.ndarray | None = None, *,
         node_spacing_px: float = NODE_SPACING_PX, max_snap_px: float = MAX_SNAP_PX,
         min_path_px: float = MIN_PATH_PX, max_nodes: int = MAX_NODES, seed: int = 0) -> float:
    """APLS in [0, 1] of a predicted road mask against the true one (see module docstring)."""
    return apls_scores(true_mask, pred_mask, valid, node_spacing_px=node_spacing_px,
                       max_snap_px=max_snap_px, min_path_px=min_path_px, max_nodes=max_nodes,
                       seed=seed)[0]
