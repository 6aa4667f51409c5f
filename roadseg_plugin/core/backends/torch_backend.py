"""The torch backend: the checkpoint's own network, channels_last, fp16 autocast on CUDA."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..checkpoint import ModelMeta, load_model
from ..errors import CheckpointError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` is CUDA when present, else CPU; asking for CUDA without one is an error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available; use --device cpu")
    return torch.device(device)


class TorchBackend:
    """Runs a torch model on batches in inference mode.

    channels_last is the faster memory layout for convolutions on both CPU and GPU; on CUDA
    the batch goes through pinned memory (asynchronous copy) and runs under fp16 autocast,
    with the sigmoid taken in fp32.

    Args:
        model: the network (moved to `device` and put in eval mode).
        meta: its metadata.
        device: "auto", "cpu", "cuda", "cuda:N" or a torch.device.
    """

    name = "torch"

    def __init__(self, model: nn.Module, meta: ModelMeta, device: str | torch.device = "auto") -> None:
        self.torch_device = resolve_device(device)
        self.device = str(self.torch_device)
        self.model = model.to(self.torch_device).eval()
        self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch stubs lack it
        self.cuda = self.torch_device.type == "cuda"
        self.meta = meta
        self.notes: list[str] = []

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "auto") -> TorchBackend:
        """Load a .pt checkpoint.

        Raises:
            CheckpointError: missing or damaged checkpoint, or an .onnx file (torch cannot run it).
        """
        path = Path(path)
        if path.suffix.lower() == ".onnx":
            raise CheckpointError(path, "an ONNX model runs only on the onnxruntime backend",
                                  "pass --backend onnxruntime or the .pt checkpoint")
        net, meta = load_model(path)
        return cls(net, meta, device)

    @torch.inference_mode()
    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, t, t) normalised float32 -> (N, t, t) probabilities."""
        x = torch.from_numpy(batch)
        if self.cuda:
            x = x.pin_memory().to(self.torch_device, non_blocking=True)
        x = x.to(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.cuda):
            return torch.sigmoid(self.model(x).float())[:, 0].cpu().numpy()
