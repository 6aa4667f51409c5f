"""Pixel metrics over valid pixels, exact and relaxed (Mnih 2013), micro-averaged via counts."""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from scipy import ndimage

RELAX_PX = 3


def _within(mask: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within `radius` (Euclidean) of any True pixel of `mask`."""
    if not mask.any():
        return np.zeros_like(mask, dtype=bool)
    return ndimage.distance_transform_edt(~mask) <= radius


@dataclass
class PixelCounts:
    """Sufficient statistics; add them over tiles and derive micro-averaged metrics."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    relaxed_tp_pred: int = 0  # predicted road pixels with a true road pixel within RELAX_PX
    pred: int = 0
    relaxed_tp_true: int = 0  # true road pixels with a predicted road pixel within RELAX_PX
    true: int = 0

    def __add__(self, other: PixelCounts) -> PixelCounts:
        return PixelCounts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def metrics(self) -> dict[str, float]:
        def ratio(a: int, b: int) -> float:
            return float(a) / b if b else 0.0

        def f1(p: float, r: float) -> float:
            return 2 * p * r / (p + r) if p + r else 0.0

        precision, recall = ratio(self.tp, self.tp + self.fp), ratio(self.tp, self.tp + self.fn)
        rp, rr = ratio(self.relaxed_tp_pred, self.pred), ratio(self.relaxed_tp_true, self.true)
        return {
            "iou": ratio(self.tp, self.tp + self.fp + self.fn),
            "precision": precision,
            "recall": recall,
            "f1": f1(precision, recall),
            "relaxed_precision": rp,
            "relaxed_recall": rr,
            "relaxed_f1": f1(rp, rr),
        }


def pixel_counts(pred: np.ndarray, true: np.ndarray, valid: np.ndarray | None = None,
                 relax_px: int = RELAX_PX) -> PixelCounts:
    """Counts for boolean (H, W) prediction and truth; pixels where `valid` is False are ignored.

    Relaxed matching looks for partners anywhere in the image (a road just inside a no-data
    area still supports a valid neighbour), but only valid pixels are counted.
    """
    pred, true = pred.astype(bool), true.astype(bool)
    valid = np.ones_like(pred) if valid is None else valid.astype(bool)
    p, t = pred & valid, true & valid
    return PixelCounts(
        tp=int(np.count_nonzero(p & t)),
        fp=int(np.count_nonzero(p & ~t)),
        fn=int(np.count_nonzero(~p & t)),
        relaxed_tp_pred=int(np.count_nonzero(p & _within(true, relax_px))),
        pred=int(np.count_nonzero(p)),
        relaxed_tp_true=int(np.count_nonzero(t & _within(pred, relax_px))),
        true=int(np.count_nonzero(t)),
    )


THRESHOLD_BINS = 100  # candidate thresholds 0.01 .. 0.99


def threshold_histograms(prob: np.ndarray, true: np.ndarray,
                         bins: int = THRESHOLD_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Histograms of the probabilities of road and of background pixels (1-D arrays of valid
    pixels): summable over tiles and processes before `threshold_from_histograms` picks."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.histogram(prob[true], bins=edges)[0], np.histogram(prob[~true], bins=edges)[0]


def threshold_from_histograms(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising pixel F1 over summed `threshold_histograms` (never 0)."""
    edges = np.linspace(0.0, 1.0, len(pos) + 1)
    tp = np.cumsum(pos[::-1])[::-1]  # predicted positive at threshold edges[i]
    fp = np.cumsum(neg[::-1])[::-1]
    fn = pos.sum() - tp
    f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    best = int(np.argmax(f1[1:]) + 1)
    return float(edges[best]), float(f1[best])


def best_threshold(prob: np.ndarray, true: np.ndarray, bins: int = THRESHOLD_BINS) -> tuple[float, float]:
    """(threshold, F1) maximising pixel F1 of `prob` against `true` (1-D arrays of valid pixels),
    in one pass whatever the number of candidate thresholds."""
    return threshold_from_histograms(*threshold_histograms(prob, true, bins))
