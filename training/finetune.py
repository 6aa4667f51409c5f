"""Fine-tuning from drawn road lines: learns within a training time, never returns a model
worse than its start model without saying so.

`finetune_from_lines` is the whole flow behind "Train model from drawn road lines" and
`python -m training finetune`:
1. label tiles from the lines (`drawn_lines.make_label_dataset`) on the model's grid, the lines
   buffered by the road half-width the user gives (the same labels train, validate and score);
2. split them by whole areas (`finetune_data.split_by_area`): validation never shares a pixel
   with training and both sides keep enough road;
3. measure the start model on the validation area (pooled IoU, relaxed F1, APLS);
4. plan from those figures and the data (`plan`): the learning rate, whether the encoder is
   frozen, how much of the start model's data is replayed (when given), crop and batch size;
5. train for `minutes` (`schedule.BudgetSchedule`: steps of random augmented crops, as many as
   fit, a warm-up + cosine learning rate by step, a validation round every few steps, the best
   round kept); Cancel keeps the best round so far;
6. tune the threshold on the validation area when it holds `MIN_TUNE_ROAD_PX` road pixels and
   its labels look complete, within `THRESHOLD_STEP` of the start model's;
7. measure the tuned model the same way and keep it only when the mean of the pooled IoU,
   relaxed F1 and APLS beats the start model's and IoU does not drop (and, with replay, it
   does not forget the start model's data); otherwise the start model is returned. The log,
   `finetune.json` and `FinetuneResult` give both sets of figures and why.

Drawn labels are often incomplete: without an area of interest every road not drawn is taught
as background. `undrawn_share` flags it (above `UNDRAWN_WARN`): a warning, and no threshold tuning.
"""
from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from roadseg_plugin.core.backends import resolve_device
from roadseg_plugin.core.checkpoint import load_model, save_checkpoint
from roadseg_plugin.core.metrics import best_threshold
from roadseg_plugin.core.onnx_backend import copy_with_exports, remove_stale_exports
from roadseg_plugin.core.params import (
    FINETUNE_MINUTES,
    FINETUNE_VAL_SHARE,
    ROAD_HALF_WIDTH_M,
    InferenceParams,
    model_file,
)

from .datasets import Tile, load_tiles
from .drawn_lines import make_label_dataset
from .evaluate import tile_predictor
from .finetune_data import (
    UNDRAWN_PX,
    Say,
    fmt,
    pooled_figures,
    replay_sets,
    road_px,
    score,
    split_by_area,
    undrawn_share,
    write_tiles,
)

if TYPE_CHECKING:
    import geopandas as gpd

log = logging.getLogger(__name__)
SMALL_LABELS_PX = 250_000  # road pixels (~35 km of 7 m wide road at 1 m): fewer may freeze the encoder
GOOD_START_IOU = 0.45  # the start model already knows this imagery: small steps, frozen encoder when few labels
NEW_IMAGERY_IOU = 0.2  # below: imagery the start model barely knows: the whole model learns, larger steps
MIN_TUNE_ROAD_PX = 20_000  # validation road pixels needed to tune the threshold (~3 km of road)
THRESHOLD_STEP = 0.2  # a tuned threshold stays within this of the start model's
FORGET_TOLERANCE = 0.01  # mean of IoU, relaxed F1 and APLS the replay tiles may lose
IOU_TOLERANCE = 0.002  # a kept model may not lose more pooled IoU than this
UNDRAWN_WARN = 0.35
STEPS_PER_ROUND = 16  # optimiser steps between validations of the held-back area


@dataclass
class FinetuneConfig:
    """Options of `finetune_from_lines`; `out` receives the run files and `finetuned.pt`.
    Options left None are decided from the data and the start model's figures (`plan`)."""

    rasters: list[str | Path]
    lines: gpd.GeoDataFrame
    out: Path
    init: Path | None = None  # the start model; None: the bundled one
    aoi: gpd.GeoDataFrame | None = None
    buffer_m: float = ROAD_HALF_WIDTH_M  # road half-width of the drawn lines
    label_tile: int = 512
    val_fraction: float = FINETUNE_VAL_SHARE  # of the labelled road pixels
    minutes: float = FINETUNE_MINUTES  # training time (the rounds' validation included)
    lr: float | None = None
    batch_size: int | None = None
    crop: int | None = None
    freeze_encoder: bool | None = None
    replay: Path | None = None  # the start model's training data (images/ + masks/), mixed in
    replay_share: float | None = None  # replay crops per user tile
    keep_worse: bool = False
    device: str = "auto"
    seed: int = 0
    round_steps: int = STEPS_PER_ROUND  # optimiser steps between validations
    on_progress: Callable[[float], None] | None = None
    is_cancelled: Callable[[], bool] | None = None


@dataclass
class Plan:
    """What `plan` decided, and why (one line each, logged)."""

    lr: float
    freeze_encoder: bool
    replay_share: float
    batch_size: int
    crop: int
    reasons: list[str] = field(default_factory=list)


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
    rounds: int = 0
    steps: int = 0
    cancelled: bool = False
    replay_start: dict[str, float] = field(default_factory=dict)
    replay_tuned: dict[str, float] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)

    def summary(self) -> str:
        replay = (f"; replay tiles: start {fmt(self.replay_start)}, fine-tuned {fmt(self.replay_tuned)}"
                  if self.replay_start else "")
        return (f"validation area ({len(self.val_tiles)} tiles, {self.val_road_px} road px, pooled): start model "
                f"{fmt(self.start)}; fine-tuned {fmt(self.tuned)}{replay}; kept the {self.kept} model "
                f"(threshold {self.threshold:g}{', tuned' if self.threshold_tuned else ''})")


def plan(cfg: FinetuneConfig, start: dict[str, float], train_road: int, tile_sides: list[int], device: str,
         depth: int) -> Plan:
    """Learning rate, encoder freezing, replay share, batch and crop from the start model's
    pooled figures on the validation area, the amount of labels and the tile sizes; an option
    the user set wins."""
    iou, reasons = start["iou"], []
    if iou >= GOOD_START_IOU:
        lr, freeze, share = 2e-4, train_road < SMALL_LABELS_PX, 0.5
        reasons.append(f"the start model already finds these roads (IoU {iou:.2f} >= {GOOD_START_IOU}): small steps"
                       + (f", encoder frozen ({train_road} road px < {SMALL_LABELS_PX})" if freeze else ""))
    elif iou >= NEW_IMAGERY_IOU:
        lr, freeze, share = 5e-4, False, 0.3
        reasons.append(f"the start model finds some of these roads (IoU {iou:.2f}): the whole model learns")
    else:
        lr, freeze, share = 1e-3, False, 0.15
        reasons.append(f"imagery unlike the start model's (IoU {iou:.2f} < {NEW_IMAGERY_IOU}): the whole model "
                       "learns with larger steps")
    multiple = 2**depth
    side = int(np.median(tile_sides)) if tile_sides else 256
    crop = max(multiple * 4, min(256, side // multiple * multiple))
    cuda = device.startswith("cuda") or (device == "auto" and resolve_device("auto").type == "cuda")
    batch = 16 if cuda else 8
    out = Plan(cfg.lr or lr, freeze if cfg.freeze_encoder is None else cfg.freeze_encoder,
               share if cfg.replay_share is None else cfg.replay_share, cfg.batch_size or batch, cfg.crop or crop,
               reasons)
    out.reasons.append(f"learning rate {out.lr:g}, batch {out.batch_size} crops of {out.crop} px"
                       + (f", {out.replay_share:g} replay crops per tile" if cfg.replay else ""))
    return out


def measure(params: InferenceParams, tiles: list[Tile]) -> tuple[dict[str, float], list[np.ndarray]]:
    """Pooled figures of `params`' model on whole tiles at the run's threshold, and each tile's
    probabilities."""
    predict, settings = tile_predictor(params)
    probs = [predict(t.image, t.valid) for t in tiles]
    return pooled_figures(tiles, probs, settings.threshold), probs


def on_torch(checkpoint: Path, device: str, threshold: float | None = None) -> InferenceParams:
    """The options `measure` runs a checkpoint with here: torch, the same predictor for the start
    and tuned models (the tuned one has no ONNX export until it is kept)."""
    return InferenceParams(model=str(checkpoint), device=device, backend="torch", threshold=threshold)


def finetune_from_lines(cfg: FinetuneConfig) -> FinetuneResult:
    """Label, split by area, measure, plan, train for `minutes`, measure again, keep the better.

    Raises:
        RoadSegError: bad lines, rasters or options (see `make_label_dataset`, `train_model`).
        Cancelled: cancelled before the first validation round; no `finetuned.pt` is written.
    """
    from .train import TrainConfig, train_model

    init = model_file(cfg.init)
    _, start_meta = load_model(init)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    messages: list[str] = []
    progress = cfg.on_progress or (lambda fraction: None)

    def say(message: str) -> None:
        messages.append(message)
        log.info(message)

    device = cfg.device  # "auto": CUDA when present, for measuring and training alike (`resolve_device`)
    with tempfile.TemporaryDirectory(prefix="roadseg_finetune_") as tmp:
        scratch = Path(tmp)
        labels = make_label_dataset(cfg.rasters, cfg.lines, scratch / "labels", buffer_m=cfg.buffer_m, aoi=cfg.aoi,
                                    tile=cfg.label_tile, gsd_m=start_meta.gsd_m)
        train, val = split_by_area(load_tiles(labels, bands=start_meta.in_channels), cfg.val_fraction)
        road = {"train": road_px(train), "val": road_px(val)}
        say(f"split by area: {len(train)} training tiles ({road['train']} road px), {len(val)} validation tiles "
            f"({road['val']} road px): {', '.join(t.name for t in val)}")
        progress(0.04)
        start, start_probs = measure(on_torch(init, device), val)
        undrawn = undrawn_share(val, start_probs, start_meta.threshold)
        say(f"start model on the validation area: {fmt(start)}; {undrawn:.0%} of its road pixels there are over "
            f"{UNDRAWN_PX} px from any drawn road")
        incomplete = undrawn > UNDRAWN_WARN and cfg.aoi is None
        if incomplete:
            say("warning: the drawn lines look incomplete (the start model finds many roads nobody drew); every "
                "road not drawn is taught as background. Draw all roads, or an area of interest around the ones "
                "drawn" + ("" if cfg.replay else ", or give the start model's data as replay"))
        decided = plan(cfg, start, road["train"], [min(t.shape) for t in train], device, start_meta.depth)
        for reason in decided.reasons:
            say(reason)
        extra, replay_val = (replay_sets(cfg.replay, start_meta, round(len(train) * decided.replay_share),
                                         cfg.label_tile, cfg.seed) if cfg.replay else ([], []))
        replay_start = measure(on_torch(init, device), replay_val)[0] if replay_val else {}
        if cfg.replay:
            say(f"replay: {len(extra)} crops of {cfg.replay} mixed into training; forgetting checked on "
                f"{', '.join(t.name for t in replay_val)}: start {fmt(replay_start)}")
        progress(0.08)
        say(f"training for {cfg.minutes:g} min")
        trainer = train_model(TrainConfig(
            data=write_tiles(train + extra, scratch / "train"), val=write_tiles(val, scratch / "val"), out=out,
            init=init, minutes=cfg.minutes, epochs=1_000_000, patience=1_000_000, lr=decided.lr,
            batch_size=decided.batch_size, tile=decided.crop, samples_per_epoch=cfg.round_steps * decided.batch_size,
            infer_tile=start_meta.tile, overlap=start_meta.overlap, freeze_encoder=decided.freeze_encoder,
            recipe="robust", device=cfg.device, seed=cfg.seed, workers=0,
            description=f"fine-tuned from {init.name} on drawn lines",
            on_progress=lambda f: progress(0.08 + 0.87 * f), is_cancelled=cfg.is_cancelled))
        best = out / "best.pt"
        cancelled = cfg.is_cancelled is not None and cfg.is_cancelled()
        if not best.is_file():
            raise _cancelled(out)
        if cancelled:
            say(f"cancelled after {trainer.epoch} round(s): the best round so far is measured and kept if better")
        tuned, threshold, tuned_threshold = _tune(best, val, device, road["val"], start_meta.threshold, say,
                                                  trust_labels=not incomplete)
        replay_tuned = measure(on_torch(best, device), replay_val)[0] if replay_val else {}
        kept = _decide(start, tuned, replay_start, replay_tuned, cfg.keep_worse, say)
        if kept == "tuned":
            _export(best, train)
    final = out / "finetuned.pt"
    copy_with_exports(best if kept == "tuned" else init, final)  # with its ONNX files: runs without torch too
    if kept == "start":
        say(f"kept the start model's weights ({final}); the fine-tuned one stays in {best}")
    steps = trainer.budget.steps_done if getattr(trainer, "budget", None) is not None else 0
    result = FinetuneResult(final, kept, start, tuned, threshold if kept == "tuned" else start_meta.threshold,
                            tuned_threshold and kept == "tuned", decided.freeze_encoder, [t.name for t in train],
                            [t.name for t in val], road["train"], road["val"], round(undrawn, 4), trainer.epoch,
                            steps, cancelled, replay_start, replay_tuned, messages)
    say(result.summary())
    (out / "finetune.json").write_text(json.dumps({**asdict(result), "model": str(final)}, indent=2))
    _append_log(out, messages)
    progress(1.0)
    return result


def _decide(start: dict[str, float], tuned: dict[str, float], replay_start: dict[str, float],
            replay_tuned: dict[str, float], keep_worse: bool, say: Say) -> str:
    """"tuned" when its pooled figures beat the start model's (mean of IoU, relaxed F1, APLS up,
    IoU not down) and it does not forget on the replay tiles (or `keep_worse`), else "start"."""
    better = score(tuned) > score(start) and tuned["iou"] >= start["iou"] - IOU_TOLERANCE
    forgets = bool(replay_start) and score(replay_tuned) < score(replay_start) - FORGET_TOLERANCE
    if better and not forgets:
        say(f"kept the fine-tuned model: mean of pooled IoU, relaxed F1 and APLS {score(start):.3f} -> "
            f"{score(tuned):.3f} (IoU {start['iou']:.3f} -> {tuned['iou']:.3f})")
        return "tuned"
    why = (f"it is not better on the validation area (mean {score(start):.3f} -> {score(tuned):.3f}, IoU "
           f"{start['iou']:.3f} -> {tuned['iou']:.3f})" if not better
           else f"it forgets the start model's data ({score(replay_start):.3f} -> {score(replay_tuned):.3f})")
    if keep_worse:
        say(f"warning: kept the fine-tuned model as asked although {why}")
        return "tuned"
    say(f"warning: the fine-tuned model is worse: {why}")
    return "start"


def _tune(best: Path, val: list[Tile], device: str, val_road: int, start_threshold: float, say: Say,
          trust_labels: bool = True) -> tuple[dict[str, float], float, bool]:
    """Set best.pt's threshold (tuned on the validation area when it has enough road and its labels
    look complete, else the start model's) and measure it there: (figures, threshold, whether it
    was tuned)."""
    model, meta = load_model(best)
    _, probs = measure(on_torch(best, device, start_threshold), val)
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
    tuned = pooled_figures(val, probs, threshold)
    say(f"fine-tuned model on the validation area: {fmt(tuned)}")
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

    log.warning("fine-tuning cancelled before its first round; nothing kept in %s", out)
    return Cancelled()


def _append_log(out: Path, messages: list[str]) -> None:
    with open(out / "train.log", "a", encoding="utf-8") as fh:
        fh.write("".join(f"finetune: {m}\n" for m in messages))


__all__ = ["FinetuneConfig", "FinetuneResult", "Plan", "finetune_from_lines", "measure", "on_torch", "plan"]
