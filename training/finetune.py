"""Fine-tuning from drawn road lines that never makes a model worse without saying so.

`finetune_from_lines` is the whole flow behind "Train model from drawn road lines":
1. label tiles from the lines (`drawn_lines.make_label_dataset`), on the model's grid;
2. split them BY AREA: whole tiles, a contiguous block at the end (bottom rows) of each raster,
   go to validation until it holds `val_fraction` of the labelled road pixels; training never
   sees a pixel of them;
3. measure the start model on the validation area (IoU, relaxed F1, APLS at its threshold);
4. train with guards against forgetting: a low learning rate, the encoder frozen when the
   labels are few (`SMALL_LABELS_PX` road pixels), and, when `replay` names the start model's
   own data, crops of it mixed into the training tiles and its validation tiles (those the
   model's metadata names) measured before and after, as a check on forgetting;
5. tune the threshold on the validation area only when it holds `MIN_TUNE_ROAD_PX` road pixels
   and its labels look complete (see below; else keep the start model's), within
   `THRESHOLD_STEP` of the start model's;
6. measure the tuned model on the validation area the same way and keep it only when its mean
   of IoU, relaxed F1 and APLS beats the start model's there and, with `replay`, does not lose
   more than `FORGET_TOLERANCE` on the replay validation tiles; otherwise the start model's
   weights are returned (`keep_worse=True` returns the tuned one anyway). The log,
   `finetune.json` and the returned `FinetuneResult` say which was kept and why, with both sets
   of figures.

Drawn labels are often incomplete: without an area of interest every road not drawn is taught
as background, and the validation area, labelled the same way, then favours a model that
learnt to miss roads. `undrawn_share` (the start model's roads in the validation area more than
`UNDRAWN_PX` from any drawn one) flags it; above `UNDRAWN_WARN` (without an area of interest)
the result warns and the threshold is not tuned (undrawn roads would push it up), and only the
replay check can catch what the labels cannot.
"""
from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio

from roadseg_plugin.core.checkpoint import load_model, save_checkpoint
from roadseg_plugin.core.metrics import best_threshold
from roadseg_plugin.core.normalise import normalise
from roadseg_plugin.core.onnx_backend import copy_with_exports, remove_stale_exports
from roadseg_plugin.core.params import BUNDLED_MODEL
from roadseg_plugin.core.tiling import predict_array

from .datasets import Tile, load_tiles
from .drawn_lines import make_label_dataset
from .evaluate import evaluate_tiles

if TYPE_CHECKING:
    import geopandas as gpd

log = logging.getLogger(__name__)
SMALL_LABELS_PX = 250_000  # road pixels (~35 km of 7 m wide road at 1 m): fewer -> encoder frozen
MIN_TUNE_ROAD_PX = 20_000  # validation road pixels needed to tune the threshold (~3 km of road)
THRESHOLD_STEP = 0.2  # a tuned threshold stays within this of the start model's
FORGET_TOLERANCE = 0.01  # mean of IoU, relaxed F1 and APLS the replay tiles may lose
UNDRAWN_PX = 10  # start-model roads farther than this from any drawn road count as undrawn
UNDRAWN_WARN = 0.35
REPLAY_VAL_TILES = 2
KEYS = ("iou", "relaxed_f1", "apls")


@dataclass
class FinetuneConfig:
    """Options of `finetune_from_lines`; `out` receives the run files and `finetuned.pt`."""

    rasters: list[str | Path]
    lines: gpd.GeoDataFrame
    out: Path
    init: Path | None = None  # the start model; None: the bundled one
    aoi: gpd.GeoDataFrame | None = None
    buffer_m: float = 3.5
    label_tile: int = 512
    val_fraction: float = 0.25  # of the labelled road pixels
    epochs: int = 20
    lr: float = 2e-4  # a tenth of a training run's: small steps away from the start model
    batch_size: int = 8
    crop: int = 256
    freeze_encoder: bool | None = None  # None: frozen when the labels are few (SMALL_LABELS_PX)
    replay: Path | None = None  # the start model's training data (images/ + masks/), mixed in
    replay_share: float = 0.5  # replay crops per user tile
    keep_worse: bool = False
    device: str = "auto"
    seed: int = 0
    max_minutes: float | None = None
    on_progress: Callable[[float], None] | None = None
    is_cancelled: Callable[[], bool] | None = None


@dataclass
class FinetuneResult:
    """What a fine-tune did. `model` is the checkpoint to use: the tuned one, or a copy of the
    start model when the tuned one was worse on the validation area (`kept == "start"`)."""

    model: Path
    kept: str
    start: dict[str, float]
    tuned: dict[str, float]
    threshold: float
    threshold_tuned: bool
    frozen_encoder: bool
    train_tiles: list[str]
    val_tiles: list[str]
    train_road_px: int
    val_road_px: int
    undrawn_share: float
    replay_start: dict[str, float] = field(default_factory=dict)
    replay_tuned: dict[str, float] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)

    def summary(self) -> str:
        def fmt(m: dict[str, float]) -> str:
            return ", ".join(f"{k} {m[k]:.3f}" for k in KEYS)

        replay = (f"; replay tiles: start {fmt(self.replay_start)}, fine-tuned {fmt(self.replay_tuned)}"
                  if self.replay_start else "")
        return (f"validation area ({len(self.val_tiles)} tiles, {self.val_road_px} road px): start model "
                f"{fmt(self.start)}; fine-tuned {fmt(self.tuned)}{replay}; kept the {self.kept} model "
                f"(threshold {self.threshold:g}{', tuned' if self.threshold_tuned else ''})")


def _tile_place(name: str) -> tuple[str, int, int]:
    """(raster, row, col) of a `make_label_dataset` tile name `ii_stem_rrrrr_ccccc`."""
    head, row, col = name.rsplit("_", 2)
    return head.split("_", 1)[0], int(row), int(col)


def split_by_area(tiles: list[Tile], val_fraction: float) -> tuple[list[Tile], list[Tile]]:
    """(train, validation): per raster, whole tiles from the end of the raster (bottom rows, then
    right columns) go to validation, rasters in turn, until it holds `val_fraction` of the road
    pixels; at least one tile each, and training keeps at least one tile with road."""
    if len(tiles) < 2:
        raise ValueError("fine-tuning needs at least 2 labelled tiles")
    by_raster: dict[str, list[Tile]] = {}
    for t in sorted(tiles, key=lambda t: _tile_place(t.name)):
        by_raster.setdefault(_tile_place(t.name)[0], []).append(t)
    total = sum(int((t.mask & t.valid).sum()) for t in tiles)
    val: list[Tile] = []
    queues = [list(reversed(group)) for group in by_raster.values()]
    while queues and (not val or sum(int((t.mask & t.valid).sum()) for t in val) < val_fraction * total):
        queue = queues.pop(0)
        val.append(queue.pop(0))
        if queue:
            queues.append(queue)
        train = [t for t in tiles if t not in val]
        if not any((t.mask & t.valid).any() for t in train) or len(train) == 1:
            break
    train = [t for t in tiles if t not in val]
    return train, val


def _predictor(model: Any, meta: Any, device: str) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    model = model.to(device).eval()

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.sigmoid(model(torch.from_numpy(batch).to(device)))[:, 0].cpu().numpy()

    return lambda image: predict_array(normalise(image, meta), run, meta.tile, meta.overlap, 4)


def measure(checkpoint: Path, tiles: list[Tile], device: str = "cpu",
            threshold: float | None = None) -> tuple[dict[str, float], list[np.ndarray]]:
    """Metrics of a checkpoint on whole tiles at its threshold (or `threshold`), and each tile's
    probabilities."""
    model, meta = load_model(checkpoint)
    predict = _predictor(model, meta, device)
    probs: dict[int, np.ndarray] = {}

    def kept(image: np.ndarray) -> np.ndarray:
        probs[id(image)] = predict(image)
        return probs[id(image)]

    result = evaluate_tiles(tiles, kept, meta.threshold if threshold is None else threshold)
    metrics = {k: float(v) for k, v in result.items() if isinstance(v, float)}
    return metrics, [probs[id(t.image)] for t in tiles]


def undrawn_share(tiles: list[Tile], probs: list[np.ndarray], threshold: float) -> float:
    """Share of the predicted road pixels (valid) farther than `UNDRAWN_PX` from any labelled road."""
    from scipy import ndimage

    far = total = 0
    for t, prob in zip(tiles, probs, strict=True):
        pred = (prob >= threshold) & t.valid
        distance = ndimage.distance_transform_edt(~t.mask) if t.mask.any() else np.full(t.shape, np.inf)
        far += int((pred & (distance > UNDRAWN_PX)).sum())
        total += int(pred.sum())
    return far / total if total else 0.0


def _write_tiles(tiles: list[Tile], folder: Path) -> Path:
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for t in tiles:
        h, w = t.shape
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
            with rasterio.open(folder / "images" / f"{t.name}.tif", "w", driver="GTiff", width=w, height=h,
                               count=t.image.shape[0], dtype="uint8") as dst:
                dst.write(t.image)
                dst.write_mask(t.valid.astype(np.uint8) * np.uint8(255))
        with rasterio.open(folder / "masks" / f"{t.name}.tif", "w", driver="GTiff", width=w, height=h, count=1,
                           dtype="uint8") as dst:
            dst.write(t.mask.astype(np.uint8)[None] * np.uint8(255))
    return folder


def replay_sets(folder: Path, meta: Any, count: int, size: int, seed: int) -> tuple[list[Tile], list[Tile]]:
    """(training crops, validation tiles) of the start model's own data in `folder`: up to
    `REPLAY_VAL_TILES` of the validation tiles its metadata names (else the last tiles) whole,
    and `count` random `size` px crops (mostly valid) of the other tiles."""
    from .robustness import validation_stems

    tiles = load_tiles(folder, bands=meta.in_channels)
    named = set(validation_stems(meta))
    val = [t for t in tiles if t.name in named][:REPLAY_VAL_TILES] or tiles[-REPLAY_VAL_TILES:]
    rest = [t for t in tiles if t not in val] or tiles
    return _crops(rest, count, size, seed), val


def _crops(source: list[Tile], count: int, size: int, seed: int) -> list[Tile]:
    rng = np.random.default_rng(seed)
    crops: list[Tile] = []
    for attempt in range(count * 10):
        if len(crops) == count:
            break
        t = source[int(rng.integers(len(source)))]
        h, w = t.shape
        s = min(size, h, w)
        r, c = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        window = np.s_[r:r + s, c:c + s]
        if t.valid[window].mean() > 0.8:
            crops.append(Tile(f"replay_{t.name}_{r}_{c}_{attempt}", t.image[:, r:r + s, c:c + s].copy(),
                              t.mask[window].copy(), t.valid[window].copy(), t.gsd_m))
    return crops


def finetune_from_lines(cfg: FinetuneConfig) -> FinetuneResult:
    """Label, split by area, measure, train with guards, measure again and keep the better model.

    Raises:
        RoadSegError: bad lines, rasters or options (see `make_label_dataset`, `train_model`).
        Cancelled: `is_cancelled` returned True; no `finetuned.pt` is written.
    """
    from .train import TrainConfig, train_model

    init = Path(cfg.init) if cfg.init is not None else BUNDLED_MODEL
    _, start_meta = load_model(init)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    messages: list[str] = []

    def say(message: str) -> None:
        messages.append(message)
        log.info(message)

    device = "cpu" if cfg.device == "auto" else cfg.device
    with tempfile.TemporaryDirectory(prefix="roadseg_finetune_") as tmp:
        scratch = Path(tmp)
        labels = make_label_dataset(cfg.rasters, cfg.lines, scratch / "labels", buffer_m=cfg.buffer_m, aoi=cfg.aoi,
                                    tile=cfg.label_tile, gsd_m=start_meta.gsd_m)
        train, val = split_by_area(load_tiles(labels, bands=start_meta.in_channels), cfg.val_fraction)
        road = {name: sum(int((t.mask & t.valid).sum()) for t in group) for name, group in (("train", train),
                                                                                             ("val", val))}
        say(f"split by area: {len(train)} training tiles ({road['train']} road px), {len(val)} validation tiles "
            f"({road['val']} road px): {', '.join(t.name for t in val)}")
        start, start_probs = measure(init, val, device)
        undrawn = undrawn_share(val, start_probs, start_meta.threshold)
        say("start model on the validation area: " + ", ".join(f"{k} {start[k]:.3f}" for k in KEYS)
            + f"; {undrawn:.0%} of its road pixels there are over {UNDRAWN_PX} px from any drawn road")
        incomplete = undrawn > UNDRAWN_WARN and cfg.aoi is None
        if incomplete:
            say("warning: the drawn lines look incomplete (the start model finds many roads nobody drew); every "
                "road not drawn is taught as background. Draw all roads, or an area of interest around the ones "
                "drawn" + ("" if cfg.replay else ", or give the start model's data as replay"))
        frozen = road["train"] < SMALL_LABELS_PX if cfg.freeze_encoder is None else cfg.freeze_encoder
        if frozen:
            why = f" < {SMALL_LABELS_PX}" if cfg.freeze_encoder is None else ", as asked"
            say(f"encoder frozen ({road['train']} training road px{why}): only the decoder and head learn")
        extra, replay_val = (replay_sets(cfg.replay, start_meta, round(len(train) * cfg.replay_share),
                                         cfg.label_tile, cfg.seed) if cfg.replay else ([], []))
        replay_start = measure(init, replay_val, device)[0] if replay_val else {}
        if cfg.replay:
            say(f"replay: {len(extra)} crops of {cfg.replay} mixed into training; forgetting checked on "
                f"{', '.join(t.name for t in replay_val)}: start " + ", ".join(f"{k} {replay_start[k]:.3f}"
                                                                              for k in KEYS))
        config = TrainConfig(
            data=_write_tiles(train + extra, scratch / "train"), val=_write_tiles(val, scratch / "val"), out=out,
            init=init, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, tile=cfg.crop,
            infer_tile=start_meta.tile, overlap=start_meta.overlap, freeze_encoder=frozen, device=cfg.device,
            seed=cfg.seed, workers=0, patience=max(3, cfg.epochs // 3), max_minutes=cfg.max_minutes,
            description=f"fine-tuned from {init.name} on drawn lines", on_progress=cfg.on_progress,
            is_cancelled=cfg.is_cancelled)
        trainer = train_model(config)
        best = out / "best.pt"
        if not best.is_file() or (cfg.is_cancelled is not None and cfg.is_cancelled()):
            raise _cancelled(out)
        tuned, threshold, tuned_threshold = _tune(best, val, device, road["val"], start_meta.threshold, say,
                                                  trust_labels=not incomplete)
        replay_tuned = measure(best, replay_val, device)[0] if replay_val else {}
        kept = _decide(start, tuned, replay_start, replay_tuned, cfg.keep_worse, say)
        if kept == "tuned":
            _export(best, train)
    final = out / "finetuned.pt"
    copy_with_exports(best if kept == "tuned" else init, final)  # with its ONNX files: runs without torch too
    if kept == "start":
        say(f"kept the start model's weights ({final}); the fine-tuned one stays in {best}")
    result = FinetuneResult(final, kept, start, tuned, threshold if kept == "tuned" else start_meta.threshold,
                            tuned_threshold and kept == "tuned", frozen, [t.name for t in train],
                            [t.name for t in val], road["train"], road["val"], round(undrawn, 4), replay_start,
                            replay_tuned, messages)
    say(result.summary())
    (out / "finetune.json").write_text(json.dumps({**asdict(result), "model": str(final), "epochs": trainer.epoch},
                                                  indent=2))
    _append_log(out, messages)
    return result


def _score(metrics: dict[str, float]) -> float:
    return float(np.mean([metrics[k] for k in KEYS]))


def _decide(start: dict[str, float], tuned: dict[str, float], replay_start: dict[str, float],
            replay_tuned: dict[str, float], keep_worse: bool, say: Callable[[str], None]) -> str:
    """"tuned" when it beats the start model on the validation area and does not forget on the
    replay tiles (or `keep_worse`), else "start"; says why."""
    better = _score(tuned) > _score(start)
    forgets = bool(replay_start) and _score(replay_tuned) < _score(replay_start) - FORGET_TOLERANCE
    if better and not forgets:
        say(f"kept the fine-tuned model: mean of IoU, relaxed F1 and APLS {_score(start):.3f} -> {_score(tuned):.3f}")
        return "tuned"
    why = (f"it is not better on the validation area ({_score(start):.3f} -> {_score(tuned):.3f})" if not better
           else f"it forgets the start model's data ({_score(replay_start):.3f} -> {_score(replay_tuned):.3f})")
    if keep_worse:
        say(f"warning: kept the fine-tuned model as asked although {why}")
        return "tuned"
    say(f"warning: the fine-tuned model is worse: {why}")
    return "start"


def _tune(best: Path, val: list[Tile], device: str, val_road: int, start_threshold: float,
          say: Callable[[str], None], trust_labels: bool = True) -> tuple[dict[str, float], float, bool]:
    """Set best.pt's threshold (tuned on the validation area when it has enough road and its labels
    look complete, else the start model's) and measure it there: (metrics, threshold, whether it
    was tuned)."""
    model, meta = load_model(best)
    _, probs = measure(best, val, device, start_threshold)
    tune = val_road >= MIN_TUNE_ROAD_PX and trust_labels
    if tune:
        truth = np.concatenate([t.mask[t.valid] for t in val])
        found, _ = best_threshold(np.concatenate([p[t.valid] for p, t in zip(probs, val, strict=True)]), truth)
        threshold = float(np.clip(found, start_threshold - THRESHOLD_STEP, start_threshold + THRESHOLD_STEP))
        say(f"threshold tuned on the validation area: {threshold:.2f} (best F1 at {found:.2f}, kept within "
            f"{THRESHOLD_STEP} of the start model's {start_threshold:g})")
    else:
        threshold = start_threshold
        why = (f"the validation area has {val_road} road px, tuning needs {MIN_TUNE_ROAD_PX}"
               if val_road < MIN_TUNE_ROAD_PX else "the drawn lines look incomplete")
        say(f"threshold kept at the start model's {start_threshold:g}: {why}")
    meta.threshold = round(threshold, 4)
    save_checkpoint(best, model, meta)
    remove_stale_exports(best)  # the ONNX files of best.pt before its threshold changed
    tuned, _ = measure(best, val, device)
    say("fine-tuned model on the validation area: " + ", ".join(f"{k} {tuned[k]:.3f}" for k in KEYS))
    return tuned, threshold, tune


def _export(checkpoint: Path, tiles: list[Tile]) -> None:
    """The ONNX files of the final checkpoint (the threshold changed after training's own export)."""
    from .callbacks.model_checkpoint import write_exports

    try:
        write_exports(checkpoint, tiles)
    except Exception as exc:  # noqa: BLE001 - an export problem must not lose the model
        log.warning("ONNX export of %s failed (%s); it is made on first CPU use", checkpoint, exc)


def _cancelled(out: Path) -> Exception:
    from roadseg_plugin.core.errors import Cancelled

    log.warning("fine-tuning cancelled; nothing kept in %s", out)
    return Cancelled()


def _append_log(out: Path, messages: list[str]) -> None:
    with open(out / "train.log", "a", encoding="utf-8") as fh:
        fh.write("".join(f"finetune: {m}\n" for m in messages))
