"""ONNX export of a checkpoint and the ONNX Runtime predictor (the fast CPU backend).

The exported graph takes normalised (N, C, H, W) float32 tiles and returns (N, H, W) road
probabilities (the sigmoid is inside the graph). The checkpoint's `ModelMeta` travels in the
file as JSON under the `roadseg_meta` metadata key, so an .onnx file alone is a usable model.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np

from .atomic import temporary_sibling
from .checkpoint import BUNDLED_MODEL, ModelMeta
from .errors import CheckpointError, OutputError
from .predictor import physical_cores

META_KEY = "roadseg_meta"
DIGEST_KEY = "roadseg_checkpoint_sha256"
OPSET = 17


def checkpoint_digest(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a checkpoint file's bytes."""
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def user_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/roadseg`, else `~/.cache/roadseg`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "roadseg"


def cached_onnx_path(checkpoint: Path, digest: str, suffix: str = ".onnx") -> Path:
    """`<stem>.<sha12><suffix>` beside the checkpoint, or in the user cache when that folder is
    read-only and holds none."""
    name = f"{checkpoint.stem}.{digest[:12]}{suffix}"
    beside = checkpoint.parent / name
    if beside.is_file() or os.access(checkpoint.parent, os.W_OK):
        return beside
    return user_cache_dir() / name


def export_onnx(checkpoint: str | os.PathLike | None = None, out: str | os.PathLike | None = None) -> Path:
    """Export a RoadSeg checkpoint to ONNX (opset 17, dynamic batch, height and width).

    Args:
        checkpoint: the .pt file; None means the bundled model.
        out: the .onnx file to write. None caches it as `<stem>.<sha12>.onnx` beside the
            checkpoint (or in `~/.cache/roadseg` when that folder is read-only) and reuses an
            existing export of the same checkpoint bytes.

    Returns:
        The path of the ONNX file.

    Raises:
        CheckpointError: the checkpoint is missing or damaged.
        OutputError: the ONNX file cannot be written.
    """
    from .checkpoint import load_model

    checkpoint = Path(checkpoint) if checkpoint is not None else BUNDLED_MODEL
    if not checkpoint.is_file():
        raise CheckpointError(checkpoint, "model file not found", "check the path or pass --model")
    digest = checkpoint_digest(checkpoint)
    if out is not None:
        return _export_to(*load_model(checkpoint), digest, Path(out))
    cached = cached_onnx_path(checkpoint, digest)
    if cached.is_file():
        return cached
    net, meta = load_model(checkpoint)
    try:
        return _export_to(net, meta, digest, cached)
    except OutputError:
        fallback = user_cache_dir() / cached.name
        if fallback == cached:
            raise
        return fallback if fallback.is_file() else _export_to(net, meta, digest, fallback)


def _export_to(net: object, meta: ModelMeta, digest: str, out: Path) -> Path:
    """Write the ONNX file through a temporary name in the same folder (never half a file)."""
    try:
        tmp = temporary_sibling(out)
    except OSError as exc:
        raise OutputError(out, f"cannot write here ({exc.strerror})", "choose a writable folder") from None
    try:
        _write_onnx(net, meta, digest, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _write_onnx(net: object, meta: ModelMeta, digest: str, path: Path) -> None:
    import onnx
    import torch

    class Probabilities(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.model(x))[:, 0]

    example = torch.zeros(1, meta.in_channels, meta.tile, meta.tile)
    axes = {"image": {0: "batch", 2: "height", 3: "width"}, "prob": {0: "batch", 1: "height", 2: "width"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about the (constant) input-shape check
        torch.onnx.export(Probabilities(net).eval(), example, str(path), opset_version=OPSET, dynamo=False,
                          input_names=["image"], output_names=["prob"], dynamic_axes=axes)
    graph = onnx.load(str(path))
    for key, value in ((META_KEY, json.dumps(meta.to_dict())), (DIGEST_KEY, digest)):
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, str(path))


def read_onnx_meta(path: str | os.PathLike) -> ModelMeta:
    """The `ModelMeta` stored in an exported ONNX file.

    Raises:
        CheckpointError: the file is missing, not ONNX, or was not exported by RoadSeg.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "model file not found", "check the path or pass --model")
    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise CheckpointError(path, f"not an ONNX model ({str(exc)[:80]})",
                              "export it again with `python -m roadseg_plugin export-onnx`") from None
    props = {p.key: p.value for p in graph.metadata_props}
    if META_KEY not in props:
        raise CheckpointError(path, "ONNX file carries no RoadSeg metadata",
                              "export it with `python -m roadseg_plugin export-onnx`")
    return ModelMeta.from_dict(json.loads(props[META_KEY]), path)


def _dihedral(x: np.ndarray, k: int, inverse: bool = False) -> np.ndarray:
    """The 8 flips/rotations of the square on the last two axes; `inverse` undoes k."""
    if not inverse:
        x = np.rot90(x, k % 4, axes=(-2, -1))
        return np.flip(x, axis=-1) if k >= 4 else x
    if k >= 4:
        x = np.flip(x, axis=-1)
    return np.rot90(x, -(k % 4), axes=(-2, -1))


class OnnxPredictor:
    """Runs an exported model with ONNX Runtime: all graph optimisations, one thread per core.

    Args:
        path: an .onnx file from `export_onnx`.
        device: "cpu", or "cuda" when onnxruntime-gpu is installed.
        tta: average over the 8 flips/rotations.
        threads: intra-op threads; default the number of physical cores.
    """

    def __init__(self, path: str | os.PathLike, device: str = "cpu", tta: bool = False,
                 threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or physical_cores()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_mem_pattern = False  # measured: faster here and half the memory
        # No busy-waiting: the engine's reader and writer threads need the cores between runs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ValueError("onnxruntime has no CUDA support here; use --backend torch or --device cpu")
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
            self.metadata = self.session.get_modelmeta().custom_metadata_map
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise CheckpointError(path, f"ONNX Runtime cannot load it ({str(exc).splitlines()[0][:80]})",
                                  "export it again with `python -m roadseg_plugin export-onnx`") from None
        self.device = "cuda" if device.startswith("cuda") else "cpu"
        self.tta = tta

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"image": np.ascontiguousarray(batch, dtype=np.float32)})[0]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, t, t) normalised float32 -> (N, t, t) probabilities."""
        if not self.tta:
            return self._forward(batch)
        total = np.zeros((batch.shape[0], *batch.shape[-2:]), dtype=np.float32)
        for k in range(8):
            total += _dihedral(self._forward(_dihedral(batch, k)), k, inverse=True)
        return total / 8
