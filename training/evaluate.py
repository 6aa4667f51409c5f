"""Evaluate a model on whole tiles: pixel, relaxed and topology metrics."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from roadseg_plugin.core.apls import apls
from roadseg_plugin.core.backends import load_backend
from roadseg_plugin.core.checkpoint import ModelMeta
from roadseg_plugin.core.errors import ParamError, RoadSegError
from roadseg_plugin.core.metrics import PixelCounts, pixel_counts
from roadseg_plugin.core.normalise import fill_nodata, normalise
from roadseg_plugin.core.params import InferenceParams, RunSettings
from roadseg_plugin.core.tiling import predict_array

from .datasets import Tile, load_tiles

METRIC_KEYS = ("iou", "precision", "recall", "f1", "relaxed_precision", "relaxed_recall", "relaxed_f1", "apls")


def evaluate_tiles(tiles: list[Tile], predict: Callable[[np.ndarray, np.ndarray], np.ndarray], threshold: float,
                   on_tile: Callable[[str, dict], None] | None = None) -> dict:
    """Pixel metrics micro-averaged over all tiles, APLS averaged over tiles, and each tile's figures.
    `predict(image, valid)` gives a tile's probabilities (`tile_predictor`)."""
    total, per_tile = PixelCounts(), []
    for tile in tiles:
        pred = predict(tile.image, tile.valid) >= threshold
        counts = pixel_counts(pred, tile.mask, tile.valid)
        total = total + counts
        row = {"name": tile.name, **counts.metrics(), "apls": apls(tile.mask, pred, tile.valid)}
        per_tile.append(row)
        if on_tile:
            on_tile(tile.name, row)
    mean_apls = float(np.mean([r["apls"] for r in per_tile])) if per_tile else 0.0
    return {**total.metrics(), "apls": mean_apls, "threshold": threshold, "tiles": len(tiles),
            "per_tile": per_tile}


def predict_whole(image: np.ndarray, valid: np.ndarray | None, meta: ModelMeta,
                  run: Callable[[np.ndarray], np.ndarray], tile: int, overlap: int, batch_size: int) -> np.ndarray:
    """The one whole-tile predictor (evaluation, validation during training, fine-tuning):
    the engine's normalisation, no-data filled as the engine fills it, tiles of `tile` px sharing `overlap` px
    blended. `run` maps a (N, C, t, t) batch to (N, t, t) probabilities."""
    x = normalise(image, meta, valid)
    if valid is not None:
        fill_nodata(x, valid)
    return predict_array(x, run, tile, overlap, batch_size)


def tile_predictor(params: InferenceParams) -> tuple[Callable[[np.ndarray, np.ndarray | None], np.ndarray],
                                                     RunSettings]:
    """(predict(image, valid) -> probabilities, the run's settled values) of `params`' model for
    whole in-memory tiles: the engine's backend, normalisation, no-data (filled from the nearest valid pixel),
    tiling and batch, and tiled blending."""
    try:
        runner = load_backend(params.model_path, params.device, params.backend)
    except ValueError as exc:
        if isinstance(exc, RoadSegError):
            raise
        raise ParamError("device", params.device, str(exc)) from None  # CUDA asked for, none here
    settings = params.resolve(runner.meta)
    batch = settings.batch_for(runner.device)

    def predict(image: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        return predict_whole(image, valid, settings.meta, runner.predict, settings.tile, settings.overlap, batch)

    return predict, settings


def evaluate_model(params: InferenceParams, data: str | Path, on_tile: Callable[[str, dict], None] | None = None,
                   skip_bad: bool = False) -> dict:
    """Metrics of `params`' model (the bundled one when none is given) on a dataset folder at the
    run's threshold, predicted with the engine's backend (ONNX Runtime on CPU when installed) and
    the same tiled blending. Unreadable pairs are an error naming the file, or with `skip_bad` a
    warning and left out."""
    predict, settings = tile_predictor(params)
    tiles = load_tiles(data, bands=settings.meta.in_channels, skip_bad=skip_bad)
    return evaluate_tiles(tiles, predict, settings.threshold, on_tile)


def evaluate_sources(params: InferenceParams, sources: list, split_seed: int = 0) -> dict[str, dict]:
    """Figures of `params`' model on each source's held-out tiles (`sources.Source`: its `val`
    tiles, split as training splits them, or every tile of a role=val set), brought to the model's
    pixel size and label width as training sees them: {source name: evaluate_tiles result}."""
    from .sources import load_sources

    predict, settings = tile_predictor(params)
    _, held = load_sources(sources, settings.meta.gsd_m, split_seed)
    return {s.name: evaluate_tiles([t for t in held if t.source == s.name], predict, settings.threshold)
            for s in sources}


def format_table(result: dict) -> str:
    head = {"relaxed_precision": "rel_prec", "relaxed_recall": "rel_recall", "relaxed_f1": "rel_f1"}
    lines = [f"{'tile':<20}" + "".join(f"{head.get(k, k):>11}" for k in METRIC_KEYS)]
    for row in result["per_tile"]:
        lines.append(f"{row['name'][:20]:<20}" + "".join(f"{row[k]:>11.4f}" for k in METRIC_KEYS))
    lines.append(f"{'ALL':<20}" + "".join(f"{result[k]:>11.4f}" for k in METRIC_KEYS))
    lines.append("(pixel metrics micro-averaged over valid pixels; APLS averaged over tiles)")
    extra = {k: v for k, v in result.items() if k not in METRIC_KEYS and k != "per_tile"}
    lines.append("  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items()))
    return "\n".join(lines)


__all__ = ["evaluate_model", "evaluate_tiles", "format_table", "ModelMeta"]
