"""The backends that run a model, and `load_backend`, which picks one.

Each backend is one module implementing the `base.Backend` protocol; `BACKENDS` maps the
names users pass (`--backend`, the dialog, Processing: listed in `params.BACKENDS`) to their
loaders. Test-time augmentation wraps whichever backend was loaded (`tta.DihedralTTA`).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..checkpoint import BUNDLED_MODEL
from ..errors import OutputError
from ..onnx_backend import find_int8
from ..params import BACKENDS as BACKEND_NAMES
from .base import Backend, BatchRunner, onnxruntime_available, physical_cores
from .onnxruntime_backend import OnnxRuntimeBackend
from .onnxruntime_int8 import OnnxRuntimeInt8Backend
from .torch_backend import TorchBackend, resolve_device
from .tta import DihedralTTA

__all__ = ["BACKENDS", "Backend", "BatchRunner", "DihedralTTA", "OnnxRuntimeBackend", "OnnxRuntimeInt8Backend",
           "TorchBackend", "load_backend", "onnxruntime_available", "physical_cores", "resolve_device"]

BACKENDS: dict[str, Callable[[Path, str], Backend]] = {
    "torch": TorchBackend.load,
    "onnxruntime": OnnxRuntimeBackend.load,
    "onnxruntime-int8": OnnxRuntimeInt8Backend.load,
}


def load_backend(model: str | os.PathLike | None = None, device: str = "auto", backend: str = "auto",
                 tta: bool = False) -> Backend:
    """Load a checkpoint (or exported .onnx file) onto the best backend for `device`.

    `backend="auto"` means torch on CUDA; on CPU, ONNX Runtime when installed: the int8 model
    made from this exact checkpoint when there is one (`onnx_backend.find_int8`, shipped for the
    bundled model), else the fp32 export (made once and cached, see `onnx_backend.export_onnx`);
    torch is the fallback, with a note, when ONNX Runtime is missing or the export cannot be
    made. An .onnx file runs only on ONNX Runtime.

    Args:
        model: a .pt checkpoint or .onnx file; None means the bundled model.
        device: "auto" (CUDA when present), "cpu", "cuda" or "cuda:N".
        backend: "auto" or a name in `BACKENDS`.
        tta: average each tile over its 8 flips/rotations (8x slower).

    Raises:
        CheckpointError: the model file is missing, damaged or unsuitable for the backend.
        ValueError: unknown backend or device, or CUDA asked for without a GPU.
    """
    if backend not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {backend!r}; use {', '.join(BACKEND_NAMES)}")
    path = Path(model) if model is not None else BUNDLED_MODEL
    resolved = resolve_device(device)  # an unavailable device fails before any file is read
    where = str(resolved)
    if backend != "auto":
        loaded = BACKENDS[backend](path, where)
    elif path.suffix.lower() == ".onnx":
        loaded = OnnxRuntimeBackend.load(path, where)
    elif resolved.type == "cpu" and onnxruntime_available():
        loaded = _onnxruntime_else_torch(path)
    else:
        loaded = TorchBackend.load(path, where)
    return DihedralTTA(loaded) if tta else loaded


def _onnxruntime_else_torch(path: Path) -> Backend:
    """The int8 model of this checkpoint, else its fp32 export; torch when no export can be made."""
    try:
        int8 = find_int8(path)  # hashes the checkpoint: looked up once per load
        return OnnxRuntimeInt8Backend(int8, "cpu") if int8 is not None else OnnxRuntimeBackend.load(path, "cpu")
    except (OutputError, ImportError, RuntimeError) as exc:  # export impossible here: torch still works
        note = f"ONNX Runtime not used ({str(exc).splitlines()[0][:120]}); running with torch"
    loaded = TorchBackend.load(path, "cpu")
    loaded.notes.append(note)
    return loaded
