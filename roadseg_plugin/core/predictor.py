"""Backends that turn a batch of normalised tiles into road probabilities."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .checkpoint import ModelMeta
from .errors import CheckpointError, OutputError


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` is CUDA when present, else CPU; asking for CUDA without one is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available; use --device cpu")
    return torch.device(device)


def normalise(image: np.ndarray, meta: ModelMeta) -> np.ndarray:
    """(C, H, W) raw band values -> float32 model input, per-band mean/std of the checkpoint."""
    x = image.astype(np.float32) * np.float32(meta.input_scale)
    mean = np.asarray(meta.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(meta.std, dtype=np.float32)[:, None, None]
    return (x - mean) / std


def _dihedral(x: torch.Tensor, k: int, inverse: bool = False) -> torch.Tensor:
    """The 8 flips/rotations of the square; `inverse` undoes transform k."""
    if not inverse:
        x = torch.rot90(x, k % 4, dims=(-2, -1))
        return torch.flip(x, dims=(-1,)) if k >= 4 else x
    if k >= 4:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, -(k % 4), dims=(-2, -1))


class TorchPredictor:
    """Runs a torch model on batches in inference mode, channels_last; fp16 autocast on CUDA."""

    def __init__(self, model: nn.Module, device: str | torch.device = "auto", tta: bool = False) -> None:
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.model = model.to(self.device).eval().to(memory_format=torch.channels_last)
        self.cuda = self.device.type == "cuda"
        self.tta = tta

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.cuda):
            return torch.sigmoid(self.model(x).float())[:, 0]

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch)
        if self.cuda:
            x = x.pin_memory().to(self.device, non_blocking=True)
        x = x.to(memory_format=torch.channels_last)
        if not self.tta:
            return self._forward(x).cpu().numpy()
        total = torch.zeros(x.shape[0], *x.shape[-2:], device=self.device)
        for k in range(8):
            total += _dihedral(self._forward(_dihedral(x, k)), k, inverse=True)
        return (total / 8).cpu().numpy()


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


class InputNormaliser:
    """Raw band values -> model input, with invalid pixels set to 0 (the training mean).

    uint8 values go through the checkpoint's scale, mean and std via a lookup table. Other
    types are first stretched per band from `stretch[c] = (low, high)` to 0..255.

    Args:
        meta: the model's metadata (input_scale, mean, std).
        dtype: numpy dtype name of the raw values.
        stretch: (C, 2) per-band value limits, required unless dtype is uint8.
    """

    def __init__(self, meta: ModelMeta, dtype: str, stretch: np.ndarray | None = None) -> None:
        if stretch is None and dtype != "uint8":
            raise ValueError(f"{dtype} values need per-band stretch limits")
        self.meta, self.stretch = meta, stretch
        self.lut = None
        if stretch is None:
            levels = np.arange(256, dtype=np.float32)[None, :, None]
            self.lut = normalise(np.repeat(levels, meta.in_channels, axis=0), meta)[:, :, 0]

    def __call__(self, raw: np.ndarray, valid: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(C, h, w) raw values and (h, w) valid mask -> (C, h, w) float32 (into `out` if given)."""
        if out is None:
            out = np.empty(raw.shape, dtype=np.float32)
        if self.lut is not None:
            for c in range(raw.shape[0]):
                np.take(self.lut[c], raw[c], out=out[c])
        else:
            lo = self.stretch[:, 0, None, None]
            span = self.stretch[:, 1, None, None] - lo
            scaled = np.clip((raw.astype(np.float32) - lo) * (np.float32(255) / span), 0, 255)
            out[:] = normalise(np.nan_to_num(scaled), self.meta)
        if not valid.all():
            out[:, ~valid] = 0.0
        return out


@dataclass
class Backend:
    """A ready-to-run model: the batch function, its metadata, where it runs, and notes
    for the user (e.g. why the preferred backend was not used)."""

    predict: Callable[[np.ndarray], np.ndarray]
    meta: ModelMeta
    name: str
    device: str
    notes: list[str] = field(default_factory=list)


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


BACKENDS = ("auto", "torch", "onnxruntime", "onnxruntime-int8")


def _onnx_backend(path: Path, device: torch.device, tta: bool, onnx_path: Path | None = None) -> Backend:
    """ONNX Runtime on `onnx_path`; by default `path` itself (.onnx) or its fp32 export."""
    from .onnx_backend import OnnxPredictor, export_onnx, read_onnx_meta
    from .quantize import PRECISION_KEY

    if onnx_path is None:
        onnx_path = path if path.suffix.lower() == ".onnx" else export_onnx(path)
    predictor = OnnxPredictor(onnx_path, device=device.type, tta=tta)
    name = "onnxruntime-int8" if PRECISION_KEY in predictor.metadata else "onnxruntime"
    return Backend(predictor, read_onnx_meta(onnx_path), name, predictor.device)


def _int8_model(path: Path) -> Path:
    from .quantize import find_int8

    found = find_int8(path)
    if found is None:
        raise CheckpointError(path, "has no int8 model made from it",
                              "run `python -m roadseg_plugin quantize MODEL --calibration IMAGES_DIR`, "
                              "or use --backend onnxruntime")
    return found


def load_backend(model: str | os.PathLike | None = None, device: str = "auto", backend: str = "auto",
                 tta: bool = False) -> Backend:
    """Load a checkpoint (or exported .onnx file) onto the best backend for `device`.

    `backend="auto"` means torch on CUDA; on CPU, ONNX Runtime when installed: the int8 model
    made from this exact checkpoint when there is one (`quantize.find_int8`, shipped for the
    bundled model), else the fp32 export (made once and cached, see `onnx_backend.export_onnx`);
    torch is the fallback when ONNX Runtime is missing or the export cannot be made.

    Raises:
        CheckpointError: the model file is missing, damaged or unsuitable for the backend.
        ValueError: unknown backend or device, or CUDA asked for without a GPU.
    """
    from .checkpoint import BUNDLED_MODEL, load_model
    from .quantize import find_int8

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use {', '.join(BACKENDS)}")
    path = Path(model) if model is not None else BUNDLED_MODEL
    torch_device = resolve_device(device)
    is_onnx = path.suffix.lower() == ".onnx"
    if is_onnx and backend == "torch":
        raise CheckpointError(path, "an ONNX model runs only on the onnxruntime backend",
                              "pass --backend onnxruntime or the .pt checkpoint")
    notes = []
    if is_onnx or backend == "onnxruntime":
        return _onnx_backend(path, torch_device, tta)
    if backend == "onnxruntime-int8":
        return _onnx_backend(path, torch_device, tta, _int8_model(path))
    if backend == "auto" and torch_device.type == "cpu" and onnxruntime_available():
        try:
            return _onnx_backend(path, torch_device, tta, find_int8(path))
        except (OutputError, ImportError, RuntimeError) as exc:  # export impossible here: torch still works
            notes.append(f"ONNX Runtime not used ({str(exc).splitlines()[0][:120]}); running with torch")
    net, meta = load_model(path)
    return Backend(TorchPredictor(net, torch_device, tta=tta), meta, "torch", str(torch_device), notes)


class BatchRunner:
    """Calls the backend in chunks; on CUDA out-of-memory, halves the chunk size and retries."""

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], batch_size: int) -> None:
        self.predict, self.limit, self.notes = predict, batch_size, []

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        out, i = [], 0
        while i < len(tiles):
            try:
                out.append(self.predict(tiles[i:i + self.limit]))
                i += len(out[-1])
            except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is a RuntimeError
                if "out of memory" not in str(exc).lower() or self.limit == 1:
                    raise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self.limit //= 2
                self.notes.append(f"GPU out of memory: batch size reduced to {self.limit}")
        return np.concatenate(out)
