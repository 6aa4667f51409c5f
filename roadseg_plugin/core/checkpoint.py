"""One checkpoint file carries the weights, the architecture and everything inference needs.

The file is written with `torch.save` and holds only tensors and plain Python types, so it
loads with `torch.load(weights_only=True)`: opening a model never runs pickled code.
"""
from __future__ import annotations

import datetime as _dt
import os
import pickle
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import temporary_sibling
from .errors import CheckpointError
from .unet import build_model

FORMAT = "roadseg-checkpoint"
FORMAT_VERSION = 1
BUNDLED_MODEL = Path(__file__).resolve().parent.parent / "models" / "roadseg_default.pt"


@dataclass
class ModelMeta:
    """What a model was trained on and how to feed it."""

    arch: str = "unet"
    arch_config: dict[str, Any] = field(default_factory=dict)
    bands: list[int] = field(default_factory=lambda: [1, 2, 3])
    band_names: list[str] = field(default_factory=lambda: ["red", "green", "blue"])
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25])
    input_scale: float = 1.0 / 255.0
    gsd_m: float = 1.0
    tile: int = 256
    overlap: int = 32
    threshold: float = 0.5
    val_metrics: dict[str, float] = field(default_factory=dict)
    data: str = ""
    torch_version: str = field(default_factory=lambda: str(torch.__version__))
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def in_channels(self) -> int:
        return len(self.bands)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: object = "") -> "ModelMeta":
        known = set(cls.__dataclass_fields__)
        for key in ("arch", "arch_config", "bands", "mean", "std"):
            if key not in data:
                raise CheckpointError(path, f"metadata key {key!r} is missing",
                                      "re-export the model with this version of RoadSeg")
        return cls(**{k: v for k, v in data.items() if k in known})


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: ModelMeta,
                    **state: Any) -> None:
    """Write a checkpoint atomically (temp file in the same folder, then `os.replace`).

    Extra keyword arguments (optimizer state, epoch, ...) are stored beside the model; they
    must be tensors or plain types.
    """
    path = Path(path)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": meta.to_dict(),
        **state,
    }
    tmp = temporary_sibling(path)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load the raw payload safely; every failure becomes a `CheckpointError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "model file not found", "check the path or pass --model")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic[:2] != b"PK" and magic[:1] != b"\x80":  # torch.save writes a zip (or a legacy pickle)
        raise CheckpointError(path, "not a PyTorch checkpoint",
                              "pass a .pt file written by `python -m training train`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):
            raise CheckpointError(path, "file contains pickled Python objects and was refused for safety",
                                  "use a checkpoint written by RoadSeg (tensors and plain types only)") from None
        raise CheckpointError(path, "not a PyTorch checkpoint",
                              "pass a .pt file written by `python -m training train`") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, IndexError, KeyError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:80]
        raise CheckpointError(path, f"file is truncated or damaged ({reason})",
                              "copy the model file again or retrain") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(path, "not a RoadSeg checkpoint",
                              "pass a .pt file written by `python -m training train`")
    return payload


def load_model(path: str | os.PathLike | None = None) -> tuple[nn.Module, ModelMeta]:
    """Rebuild the trained model (in eval mode) and its metadata; None means the bundled model."""
    path = Path(path) if path is not None else BUNDLED_MODEL
    payload = read_checkpoint(path)
    meta = ModelMeta.from_dict(payload.get("meta", {}), path)
    try:
        model = build_model(meta.arch, **meta.arch_config)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(path, f"cannot build architecture: {exc}", "retrain the model") from None
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError) as exc:
        first = str(exc).splitlines()[0][:120]
        raise CheckpointError(path, f"weights do not match the architecture ({first})",
                              "the file was edited or belongs to another model; retrain or re-export") from None
    model.eval()
    return model, meta
