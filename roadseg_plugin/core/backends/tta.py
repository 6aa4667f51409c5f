"""Test-time augmentation for any backend: the average over the 8 flips/rotations of a tile."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..dihedral import N_TRANSFORMS, dihedral, inverse_dihedral
from .base import Backend

if TYPE_CHECKING:
    from ..checkpoint import ModelMeta


class DihedralTTA:
    """Wraps a backend: each tile is predicted in its 8 dihedral orientations, each prediction
    turned back, and the 8 averaged (8x the work, slightly smoother, more rotation-fair roads).

    Name, device, metadata and notes are the wrapped backend's own, so reports still say
    which backend ran.

    Args:
        inner: the backend that predicts each orientation.
    """

    def __init__(self, inner: Backend) -> None:
        self.inner = inner

    @classmethod
    def load(cls, path: Path, device: str = "auto", *, inner: type[Backend]) -> DihedralTTA:
        """`inner.load(path, device)`, wrapped."""
        return cls(inner.load(path, device))

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def device(self) -> str:
        return self.inner.device

    @property
    def meta(self) -> ModelMeta:
        return self.inner.meta

    @property
    def notes(self) -> list[str]:
        return self.inner.notes

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, t, t) normalised float32 -> (N, t, t) probabilities averaged over 8 orientations."""
        total = np.zeros((batch.shape[0], *batch.shape[-2:]), dtype=np.float32)
        for k in range(N_TRANSFORMS):
            # Contiguous copy: numpy's rotations are negative-stride views, which torch refuses.
            turned = np.ascontiguousarray(dihedral(batch, k))
            total += inverse_dihedral(self.inner.predict(turned), k)
        return total / np.float32(N_TRANSFORMS)
