"""One checkpoint file carries the weights, the architecture and everything inference needs.

The file is written with `torch.save` and holds only tensors and plain Python types, so it
loads with `torch.load(weights_only=True)`: opening a model never runs pickled code.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import temporary_sibling
from .errors import CheckpointError
from .model_meta import FORMAT, ModelMeta, read_checkpoint_payload_light
from .params import BUNDLED_MODEL, model_file  # noqa: F401 - BUNDLED_MODEL: imported from here too
from .unet import build_model

FORMAT_VERSION = 1


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
    # The restricted reader refuses pickled code by itself, whatever torch's wording of the
    # same refusal (it changed between releases); then torch loads the tensors, weights only.
    read_checkpoint_payload_light(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(path, "the file holds Python code (pickled objects) and was not loaded",
                              "use a checkpoint written by RoadSeg (tensors and plain types only)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, IndexError, KeyError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:80]
        raise CheckpointError(path, f"file is truncated or damaged ({reason})",
                              "copy the model file again or retrain") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(path, "not a RoadSeg checkpoint",
                              "pass a .pt file written by `python -m training train`")
    return payload


def load_model(path: str | os.PathLike | None = None) -> tuple[nn.Module, ModelMeta]:
    """Rebuild the trained model (in eval mode) and its metadata; None means the bundled model (`model_file`)."""
    path = model_file(path)
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
