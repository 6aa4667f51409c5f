"""The ONNX Runtime backend: an exported .onnx file, fp32 (or whatever precision the file holds).

On the 2-core CPUs we target it is faster than torch for the same fp32 model (see the bench),
which is why `auto` prefers it on CPU.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import CheckpointError
from ..model_meta import meta_from_properties
from ..onnx_backend import PRECISION_KEY, export_onnx
from .base import physical_cores


class OnnxRuntimeBackend:
    """Runs an exported model with ONNX Runtime: all graph optimisations, one thread per core.

    The name is "onnxruntime-int8" when the file is an int8 model (it carries the precision
    key), else "onnxruntime", so reports say what actually ran.

    Args:
        path: an .onnx file written by `onnx_backend.export_onnx` or `quantize.quantize_model`.
        device: "cpu", "cuda" (needs onnxruntime-gpu), or "auto" (CUDA when ONNX Runtime has it).
        threads: intra-op threads; default the number of physical cores.

    Raises:
        CheckpointError: ONNX Runtime cannot load the file, or it carries no RoadSeg metadata.
        ValueError: CUDA asked for but this ONNX Runtime has no CUDA support.
    """

    def __init__(self, path: str | os.PathLike, device: str = "cpu", threads: int | None = None) -> None:
        import onnxruntime as ort

        if device == "auto":
            device = "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
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
            properties = self.session.get_modelmeta().custom_metadata_map
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise CheckpointError(path, f"ONNX Runtime cannot load it ({str(exc).splitlines()[0][:80]})",
                                  "export it again with `python -m roadseg_plugin export-onnx`") from None
        self.path = Path(path)
        self.meta = meta_from_properties(properties, path)
        self.fixed = _fixed_input(self.session.get_inputs()[0].shape, self.meta, path)
        self.name = "onnxruntime-int8" if PRECISION_KEY in properties else "onnxruntime"
        self.device = "cuda" if device.startswith("cuda") else "cpu"
        self.notes: list[str] = []

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu") -> OnnxRuntimeBackend:
        """An .onnx file as is; a .pt checkpoint through its fp32 export (made once, cached
        beside it, see `onnx_backend.export_onnx`)."""
        path = Path(path)
        return cls(path if path.suffix.lower() == ".onnx" else export_onnx(path), device)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, t, t) normalised float32 -> (N, t, t) probabilities.

        Raises:
            CheckpointError: the graph takes tiles of a fixed size other than t.
        """
        size = self.fixed[2:]
        if any(f is not None and f != t for f, t in zip(size, batch.shape[2:], strict=True)):
            raise CheckpointError(self.path, f"the model takes only {size[0]} x {size[1]} px tiles, not "
                                  f"{batch.shape[2]} x {batch.shape[3]}", f"run it with --tile {size[0]}")
        return self.session.run(None, {"image": np.ascontiguousarray(batch, dtype=np.float32)})[0]


def _fixed_input(shape: list, meta, path: str | os.PathLike) -> tuple[int | None, ...]:
    """The (N, C, H, W) sizes the graph fixes (None where free), checked against the metadata.

    Raises:
        CheckpointError: not 4 dimensions, a band count or fixed tile size other than the
            metadata's, or a fixed batch size (RoadSeg runs batches of any size).
    """
    fix = "export it with `python -m roadseg_plugin export-onnx` (dynamic batch and tile size)"
    if len(shape) != 4:
        raise CheckpointError(path, f"its input has {len(shape)} dimensions, not 4 (batch, bands, rows, columns)",
                              fix)
    fixed = tuple(d if isinstance(d, int) and d > 0 else None for d in shape)
    if fixed[1] is not None and fixed[1] != meta.in_channels:
        raise CheckpointError(path, f"the model takes {fixed[1]} band(s) but its RoadSeg metadata says "
                              f"{meta.in_channels}", fix)
    if fixed[0] is not None:
        raise CheckpointError(path, f"the model takes batches of exactly {fixed[0]} tile(s)", fix)
    if any(d is not None and d != meta.tile for d in fixed[2:]):
        raise CheckpointError(path, f"the model takes only {fixed[2]} x {fixed[3]} px tiles but its RoadSeg "
                              f"metadata says {meta.tile}", fix)
    return fixed
