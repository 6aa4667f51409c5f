"""The int8 ONNX Runtime backend: the quantised model made from exactly this checkpoint.

About 1.5x faster than fp32 on the CPUs we target at no measurable accuracy cost (see
`quantize`); `auto` picks it on CPU whenever `find_int8` finds one for the checkpoint.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import CheckpointError
from ..onnx_backend import find_int8
from .onnxruntime_backend import OnnxRuntimeBackend


class OnnxRuntimeInt8Backend(OnnxRuntimeBackend):
    """`OnnxRuntimeBackend` on the `<stem>.<sha12>.int8.onnx` file of a checkpoint."""

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu") -> OnnxRuntimeInt8Backend:
        """The int8 model of a .pt checkpoint; an .onnx file is run as is.

        Raises:
            CheckpointError: no int8 model was made from this checkpoint (or it is damaged).
        """
        path = Path(path)
        if path.suffix.lower() == ".onnx":
            return cls(path, device)
        found = find_int8(path)
        if found is None:
            raise CheckpointError(path, "has no int8 model made from it",
                                  "run `python -m roadseg_plugin quantize MODEL --calibration IMAGES_DIR`, "
                                  "or use --backend onnxruntime")
        return cls(found, device)
