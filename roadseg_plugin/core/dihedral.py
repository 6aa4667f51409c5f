"""The 8 flips/rotations of a square (the dihedral group D4) and their inverses.

One implementation for numpy arrays and torch tensors, on the last two axes: test-time
augmentation (`backends.tta`) and training augmentation (`training.augment`) both use it,
so a tile is always turned the same way. Transform k is a rotation by k % 4 quarter turns
(counter-clockwise, as `rot90`), followed by a left-right flip when k >= 4.

torch is never imported here: a tensor is recognised through `sys.modules`, so the module
imports (and works on numpy arrays) without torch installed.
"""
from __future__ import annotations

import sys
from typing import Any, TypeVar

import numpy as np

N_TRANSFORMS = 8
Array = TypeVar("Array")  # np.ndarray or torch.Tensor; the result has the input's type


def _is_tensor(x: object) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _rot90(x: Any, quarter_turns: int) -> Any:
    if _is_tensor(x):
        import torch

        return torch.rot90(x, quarter_turns, dims=(-2, -1))
    return np.rot90(x, quarter_turns, axes=(-2, -1))


def _flip(x: Any) -> Any:
    if _is_tensor(x):
        import torch

        return torch.flip(x, dims=(-1,))
    return np.flip(x, axis=-1)


def _check(k: int) -> None:
    if not 0 <= k < N_TRANSFORMS:
        raise ValueError(f"dihedral transform {k} is not in 0..{N_TRANSFORMS - 1}")


def dihedral(x: Array, k: int) -> Array:
    """Transform k (0..7) of `x` on its last two axes (k = 0 is the identity).

    numpy results are views (possibly with negative strides); torch results are copies.
    """
    _check(k)
    x = _rot90(x, k % 4)
    return _flip(x) if k >= 4 else x


def inverse_dihedral(x: Array, k: int) -> Array:
    """Undo transform k: `inverse_dihedral(dihedral(x, k), k)` equals `x`."""
    _check(k)
    if k >= 4:
        x = _flip(x)
    return _rot90(x, -(k % 4))
