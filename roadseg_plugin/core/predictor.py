"""Backends that turn a batch of normalised tiles into road probabilities."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .checkpoint import ModelMeta


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
    """Runs a torch model on batches: inference mode; fp16 autocast and channels_last on CUDA."""

    def __init__(self, model: nn.Module, device: str | torch.device = "auto", tta: bool = False) -> None:
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.model = model.to(self.device).eval()
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.tta = tta

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.cuda):
            return torch.sigmoid(self.model(x).float())[:, 0]

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch)
        if self.cuda:
            x = x.pin_memory().to(self.device, non_blocking=True).to(memory_format=torch.channels_last)
        if not self.tta:
            return self._forward(x).cpu().numpy()
        total = torch.zeros(x.shape[0], *x.shape[-2:], device=self.device)
        for k in range(8):
            total += _dihedral(self._forward(_dihedral(x, k)), k, inverse=True)
        return (total / 8).cpu().numpy()
