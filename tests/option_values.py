"""One non-default value per option of `InferenceParams` and `VectoriseParams`.

Adapter tests (CLI here; dialog, task and Processing through `tests/plugin/conftest.py:
option_table`, which swaps in a real model and an extent over its raster) walk the dataclass
fields and look each one up here, so an option added to the params and forgotten by an adapter
fails their tests.
"""
from __future__ import annotations

NON_DEFAULT = {
    "model": "m.pt", "device": "cpu", "backend": "torch", "threshold": 0.3, "extent": (1.0, 2.0, 30.0, 40.0),
    "bands": (3, 2, 1), "tile": 128, "overlap": 16, "batch_size": 3, "tta": True, "binary": True, "gsd": 0.5,
    "min_length": 7.0, "spur_length": 3.0, "gap": 4.0, "tolerance": 0.5, "smooth": True, "format": "fgb",
    "block_size": 512, "halo": 32,
}
