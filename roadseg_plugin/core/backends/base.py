"""What every backend shares: the `Backend` protocol, the CPU thread count and batching.

A backend turns a batch of normalised tiles into road probabilities. The engine, evaluation
and the benchmarks only see this protocol, so adding a backend is one new module plus one
line in the registry (`backends/__init__.py`). Nothing here imports torch or onnxruntime.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from ..checkpoint import ModelMeta

PredictBatch = Callable[[np.ndarray], np.ndarray]  # (N, C, t, t) float32 -> (N, t, t) probabilities


@runtime_checkable
class Backend(Protocol):
    """A model ready to run.

    Attributes:
        name: the registry name ("torch", "onnxruntime", "onnxruntime-int8").
        device: where it runs ("cpu", "cuda", "cuda:1").
        meta: the model's metadata (tile, overlap, normalisation, threshold).
        notes: things the user should know, e.g. why the preferred backend was not used.
    """

    name: str
    device: str
    meta: ModelMeta
    notes: list[str]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, t, t) normalised float32 tiles -> (N, t, t) float32 probabilities in [0, 1]."""
        ...

    @classmethod
    def load(cls, path: Path, device: str = "auto") -> Backend:
        """Load the model file `path` onto `device`.

        Raises:
            CheckpointError: the file is missing, damaged or unsuitable for this backend.
            ValueError: the device is unknown or not available to this backend.
        """
        ...


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def physical_cores() -> int:
    """Physical CPU cores (hyper-threads not counted); falls back to the logical count."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            cores, physical = set(), "0"
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "physical id":
                    physical = value.strip()
                elif key.strip() == "core id":
                    cores.add((physical, value.strip()))
        if cores:
            return len(cores)
    except OSError:
        pass
    return os.cpu_count() or 1


class BatchRunner:
    """Calls the backend in chunks; on CUDA out-of-memory, halves the chunk size and retries.

    Args:
        predict: a backend's `predict`.
        batch_size: the largest chunk tried first.
    """

    def __init__(self, predict: PredictBatch, batch_size: int) -> None:
        self.predict, self.limit = predict, batch_size
        self.notes: list[str] = []

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        out, i = [], 0
        while i < len(tiles):
            try:
                out.append(self.predict(tiles[i:i + self.limit]))
                i += len(out[-1])
            except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is a RuntimeError
                if "out of memory" not in str(exc).lower() or self.limit == 1:
                    raise
                _release_cuda_cache()
                self.limit //= 2
                self.notes.append(f"GPU out of memory: batch size reduced to {self.limit}")
        return np.concatenate(out)


def _release_cuda_cache() -> None:
    # Only torch can have filled a CUDA cache; if it was never imported there is none to free.
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
