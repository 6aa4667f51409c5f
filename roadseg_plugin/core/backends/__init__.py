"""The backends that run a model, and `load_backend`, which picks one.

Each backend is one module implementing the `base.Backend` protocol; `BACKENDS` maps the
names users pass (`--backend`, the dialog, Processing: listed in `params.BACKENDS`) to their
loaders. Test-time augmentation wraps whichever backend was loaded (`tta.DihedralTTA`).

torch is optional on CPU: this package imports it only when the torch backend is used or a
device has to be resolved with it (`TorchBackend` and `resolve_device` are loaded on first
access), so CPU inference runs in ONNX Runtime where torch is not installed.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ..errors import CheckpointError, OutputError
from ..onnx_backend import export_onnx, find_int8
from ..params import BACKENDS as BACKEND_NAMES
from ..params import model_file
from .base import Backend, BatchRunner, onnxruntime_available, physical_cores
from .choice import fastest_onnx
from .onnxruntime_backend import OnnxRuntimeBackend
from .onnxruntime_int8 import OnnxRuntimeInt8Backend
from .tta import DihedralTTA

if TYPE_CHECKING:
    from .torch_backend import TorchBackend, resolve_device

__all__ = ["BACKENDS", "Backend", "BatchRunner", "DihedralTTA", "OnnxRuntimeBackend", "OnnxRuntimeInt8Backend",
           "TorchBackend", "load_backend", "onnxruntime_available", "physical_cores", "resolve_device",
           "torch_available"]

INSTALL_TRAINING = "install the Training and GPU packages (Plugins > RoadSeg > Install packages...)"


def __getattr__(name: str) -> Any:
    """`TorchBackend` and `resolve_device`, imported (with torch) on first use."""
    if name in ("TorchBackend", "resolve_device"):
        from . import torch_backend

        return getattr(torch_backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def torch_available() -> bool:
    """Whether torch is installed (without importing it)."""
    if sys.modules.get("torch") is not None:
        return True
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def _load_torch(path: Path, device: str = "auto") -> Backend:
    from .torch_backend import TorchBackend

    return TorchBackend.load(path, device)


BACKENDS: dict[str, Callable[[Path, str], Backend]] = {
    "torch": _load_torch,
    "onnxruntime": OnnxRuntimeBackend.load,
    "onnxruntime-int8": OnnxRuntimeInt8Backend.load,
}


def device_name(device: str = "auto") -> str:
    """"cpu", "cuda" or "cuda:N" for a device option; torch is imported only to look for a GPU.

    Without torch, "auto" is the CPU and asking for CUDA is an error (GPU inference runs in torch).

    Raises:
        ValueError: CUDA asked for without a GPU (or without torch), or an unknown device.
    """
    if device == "cpu":
        return "cpu"
    if torch_available():
        from .torch_backend import resolve_device

        return str(resolve_device(device))
    if device == "auto":
        return "cpu"
    if device.startswith("cuda"):
        raise ValueError(f"device 'cuda' needs PyTorch, which is not installed; use --device cpu, or "
                         f"{INSTALL_TRAINING}")
    raise ValueError(f"unknown device {device!r}; use auto, cpu or cuda")


def load_backend(model: str | os.PathLike | None = None, device: str = "auto", backend: str = "auto",
                 tta: bool = False) -> Backend:
    """Load a checkpoint (or exported .onnx file) onto the best backend for `device`.

    `backend="auto"` means torch on CUDA; on CPU, ONNX Runtime when installed: of the int8 model
    made from this exact checkpoint (`onnx_backend.find_int8`, shipped for the bundled model) and
    the fp32 export (shipped for the bundled model, else made once and cached, see
    `onnx_backend.export_onnx`), whichever runs faster on this CPU (measured on first use and
    cached, see `choice`); torch is the fallback, with a note, when ONNX Runtime is missing or
    the export cannot be made. Without torch, a checkpoint with neither
    ONNX file beside it is a CheckpointError that says what to install. An .onnx file runs only
    on ONNX Runtime.

    Args:
        model: a .pt checkpoint or .onnx file; None means the bundled model.
        device: "auto" (CUDA when present), "cpu", "cuda" or "cuda:N".
        backend: "auto" or a name in `BACKENDS`.
        tta: average each tile over its 8 flips/rotations (8x slower).

    Raises:
        CheckpointError: the model file is missing, damaged or unsuitable for the backend, or
            it needs torch (not installed) to run or be exported.
        ValueError: unknown backend or device, or CUDA asked for without a GPU.
    """
    if backend not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {backend!r}; use {', '.join(BACKEND_NAMES)}")
    path = model_file(model)
    where = device_name(device)  # an unavailable device fails before any file is read
    if backend == "torch" and not torch_available():
        raise CheckpointError(path, "the torch backend needs PyTorch, which is not installed",
                              f"use --backend auto, or {INSTALL_TRAINING}")
    if backend != "auto":
        loaded = BACKENDS[backend](path, where)
    elif path.suffix.lower() == ".onnx":
        loaded = OnnxRuntimeBackend.load(path, where)
    elif where == "cpu" and onnxruntime_available():
        loaded = _onnxruntime_else_torch(path)
    elif where == "cpu" and not torch_available():
        raise CheckpointError(path, "CPU inference without torch needs ONNX Runtime, which is not installed",
                              "install the CPU inference packages (Plugins > RoadSeg > Install packages...)")
    else:
        loaded = _load_torch(path, where)
    return cast(Backend, DihedralTTA(loaded)) if tta else loaded


def _onnxruntime_else_torch(path: Path) -> Backend:
    """The fastest of this checkpoint's ONNX files on this CPU (`choice.fastest_onnx`: its int8
    model, when one was made from it, against its fp32 export); torch when no export can be made.

    Without torch only existing ONNX files can run: the int8 model alone when no fp32 export lies
    beside it, the fp32 export alone when no int8 model does, else a CheckpointError.
    """
    try:
        int8 = find_int8(path)  # hashes the checkpoint: looked up once per load
        if int8 is None:
            # the fp32 export beside the checkpoint; made (and cached) here only when torch is
            # installed, else a CheckpointError that says what to install
            return OnnxRuntimeBackend.load(path, "cpu")
        try:
            fp32 = export_onnx(path)
        except (CheckpointError, OutputError, ImportError, RuntimeError):  # no fp32 export can be made
            # here (no torch, a read-only folder): the int8 model is all there is
            return OnnxRuntimeInt8Backend(int8, "cpu")
        return fastest_onnx({"onnxruntime": fp32, "onnxruntime-int8": int8})
    except (OutputError, ImportError, RuntimeError) as exc:  # export impossible here: torch still works
        if not torch_available():
            raise CheckpointError(path, f"ONNX Runtime cannot run it ({str(exc).splitlines()[0][:120]})",
                                  INSTALL_TRAINING) from None
        note = f"ONNX Runtime not used ({str(exc).splitlines()[0][:120]}); running with torch"
    loaded = _load_torch(path, "cpu")
    loaded.notes.append(note)
    return loaded
