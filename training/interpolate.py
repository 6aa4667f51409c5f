"""Weight interpolation between a start model and a model trained on from it (WiSE-FT, Wortsman
et al. 2022): `alpha * tuned + (1 - alpha) * start`, every floating-point tensor, batch-norm
statistics included.

Two models of one lineage (the tuned one trained from the start one) lie in one basin, so the
straight line between them stays good and trades the start model's home survey against what the
tuned one learnt: the shipped model is such a blend of the Massachusetts model and the one
trained on every shared set (see MODEL_CARD.md). Models of other lineages give nonsense.
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from roadseg_plugin.core.checkpoint import ModelMeta, load_model, save_checkpoint
from roadseg_plugin.core.errors import CheckpointError, ParamError
from roadseg_plugin.core.outputs import check_outputs


def interpolate(start: str | Path, tuned: str | Path, alpha: float) -> tuple[Any, ModelMeta]:
    """The blended model (eval mode) and the tuned model's metadata, noting the blend.

    Raises:
        ParamError: `alpha` outside 0..1.
        CheckpointError: the two models differ in architecture or tensors.
    """
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and 0 <= alpha <= 1):
        raise ParamError("alpha", alpha, "must lie between 0 and 1", "e.g. 0.4 (0: the start model, 1: the tuned one)")
    start_model, start_meta = load_model(start)
    model, meta = load_model(tuned)
    if (start_meta.arch, start_meta.arch_config) != (meta.arch, meta.arch_config):
        raise CheckpointError(tuned, f"is a {meta.arch} {meta.arch_config}, the start model a "
                              f"{start_meta.arch} {start_meta.arch_config}", "blend models of one architecture")
    a, b = start_model.state_dict(), model.state_dict()
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        raise CheckpointError(tuned, "has other tensors than the start model", "blend models of one architecture")
    # integer tensors (batch norm's step counts) are the tuned model's
    model.load_state_dict({k: (alpha * b[k] + (1 - alpha) * a[k]).to(b[k].dtype) if b[k].is_floating_point()
                           else b[k] for k in b})
    note = f"{alpha:g} x {Path(tuned).name} + {1 - alpha:g} x {Path(start).name} (weight interpolation)"
    return model, replace(meta, extra={**meta.extra, "blend": note})


def write_interpolated(start: str | Path, tuned: str | Path, alpha: float, out: str | Path,
                       threshold: float | None = None) -> ModelMeta:
    """`interpolate` written to `out` (never one of the inputs), with `threshold` when given."""
    check_outputs({"blended model": Path(out)}, [start, tuned])
    if threshold is not None and not 0 < threshold < 1:
        raise ParamError("threshold", threshold, "must lie strictly between 0 and 1", "e.g. 0.5")
    model, meta = interpolate(start, tuned, alpha)
    if threshold is not None:
        meta = replace(meta, threshold=float(threshold))
    save_checkpoint(out, model, meta)
    return meta
