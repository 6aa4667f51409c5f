"""The training loop: epochs of random crops, whole-tile validation, callbacks, resume state.

The trainer knows nothing of GIFs, plots or early stopping: callbacks do one job each and
read `trainer.history`, `trainer.model` and `trainer.meta`.

Under torchrun every process runs this loop on its share of each batch and of the validation
tiles (see `distributed`); callbacks, and so every file of the run, run on rank 0 only, and
`trainer.model` is always the plain model (never the DDP wrapper).
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from roadseg_plugin.core.checkpoint import ModelMeta, read_checkpoint, save_checkpoint
from roadseg_plugin.core.errors import CheckpointError
from roadseg_plugin.core.metrics import (
    THRESHOLD_BINS,
    PixelCounts,
    pixel_counts,
    threshold_from_histograms,
    threshold_histograms,
)

from . import distributed
from .datasets import RandomCropDataset, Tile
from .evaluate import predict_whole
from .losses import Loss, masked_bce_dice, prob_bce_dice
from .schedule import BudgetSchedule

log = logging.getLogger(__name__)


@dataclass
class FitConfig:
    epochs: int = 200
    batch_size: int = 16  # the global batch: each of N torchrun processes trains on batch_size / N
    lr: float = 1e-3
    weight_decay: float = 1e-4
    workers: int = 1
    max_minutes: float | None = None
    minutes: float | None = None  # a training time: epochs become rounds, as many as fit (`schedule`)
    amp: bool = True  # CUDA: fp16 autocast; CPU: bf16 autocast where the CPU has bf16 instructions
    compile: bool = False
    val_batch_size: int = 8
    loss: Loss = masked_bce_dice  # (logits, target, valid) -> loss; `losses.LOSSES` names them
    monitor: str = "val_loss"  # the logged value that decides the best epoch (callbacks read it)
    on_progress: Callable[[float], None] | None = None  # fraction of all epochs done, 0..1
    is_cancelled: Callable[[], bool] | None = None  # checked between batches


class Trainer:
    """Fits `model` on `train_data` and validates on whole `val_tiles` after every epoch."""

    def __init__(self, model: torch.nn.Module, meta: ModelMeta, train_data: RandomCropDataset,
                 val_tiles: list[Tile], out: Path, config: FitConfig, device: torch.device,
                 callbacks: list[Any] | None = None) -> None:
        # channels_last: ~1.6x faster convolutions on CPU (oneDNN) and tensor cores on CUDA
        model = model.to(device, memory_format=torch.channels_last)
        self.model, self.meta, self.train_data, self.val_tiles = model, meta, train_data, val_tiles
        self.out, self.config, self.device = Path(out), config, device
        self.callbacks = callbacks or []
        # tiles validated and reported every epoch but kept out of val_loss, the threshold and
        # the pooled figures (sets never trained on, such as licence-restricted imagery)
        self.watch_tiles: list[Tile] = []
        self.cuda = device.type == "cuda"
        self.autocast = autocast_dtype(device) if config.amp else None
        if self.autocast is torch.bfloat16:
            log.info("bf16 autocast on this CPU (AVX-512 BF16 or AMX): about 2x the fp32 crops/s")
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.budget: BudgetSchedule | None = None
        if config.minutes:
            self.budget = BudgetSchedule(self.optimizer, config.lr, config.minutes, first_plan=self.steps_per_epoch)
            self.scheduler: Any = self.budget
        else:
            total = max(1, config.epochs * self.steps_per_epoch)
            warmup = min(0.1, 3 / max(config.epochs, 1))
            if round(warmup * total, 9) == 1:  # a warm-up of exactly one step divides by zero in OneCycleLR
                warmup = 2 / total
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
                self.optimizer, max_lr=config.lr, total_steps=total, pct_start=warmup, div_factor=10,
                final_div_factor=100)
        self.round_seconds = (0.0, 0.0)  # (per step, validation) of the last round, for the budget
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.cuda and config.amp)
        self.world = distributed.world_size()
        ddp = distributed.wrap_model(model, device)  # `model` itself without torchrun
        self.model = distributed.unwrap(ddp)  # the same parameters; SyncBatchNorm layers on CUDA under torchrun
        self.forward = torch.compile(ddp) if config.compile else ddp
        if distributed.active():
            log.info("DistributedDataParallel: %d processes (%s), global batch %d = %d x %d crops per process",
                     self.world, torch.distributed.get_backend(), config.batch_size, self.world,
                     config.batch_size // self.world)
        self.history: list[dict[str, float]] = []
        self.epoch = 0
        self.saved_epoch = 0  # the epoch last.pt holds: behind `epoch` while an epoch's callbacks run
        self.stop_training = False
        self.started, self._first_epoch = time.monotonic(), 0

    @property
    def monitor(self) -> str:
        return self.config.monitor

    @property
    def mode(self) -> str:
        """"min" for a loss, "max" for a figure such as IoU."""
        return "min" if self.config.monitor.endswith("loss") else "max"

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train_data) / self.config.batch_size)

    # ---- resume state -------------------------------------------------------------------
    def save_last(self) -> None:
        save_checkpoint(self.out / "last.pt", self.model, self.meta, epoch=self.epoch,
                        optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                        scaler=self.scaler.state_dict(), history=self.history,
                        callbacks={type(cb).__name__: cb.state_dict() for cb in self.callbacks
                                   if hasattr(cb, "state_dict")})
        self.saved_epoch = self.epoch

    def load_last(self) -> None:
        """Continue from RUN/last.pt (CheckpointError when it is not a last.pt of this model)."""
        path = self.out / "last.pt"
        state = read_checkpoint(path)
        try:
            self.model.load_state_dict(state["state_dict"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            self.epoch, self.history = int(state["epoch"]), list(state["history"])
            self.saved_epoch = self.epoch
        except (KeyError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(path, f"does not fit this run ({first})",
                                  "resume with the options the run started with, or drop --resume") from None
        for cb in self.callbacks:
            if hasattr(cb, "load_state_dict") and type(cb).__name__ in state["callbacks"]:
                cb.load_state_dict(state["callbacks"][type(cb).__name__])
        log.info("resumed after epoch %d", self.epoch)

    # ---- loop ------------------------------------------------------------------------------
    def fit(self) -> list[dict[str, float]]:
        self.started, self._first_epoch = time.monotonic(), self.epoch
        if self.budget is not None:
            self.budget.restart_clock()
        main = distributed.is_main()
        callbacks = self.callbacks if main else []  # files and decisions are rank 0's
        for cb in callbacks:
            cb.on_train_begin(self)
        try:
            while self.epoch < self.config.epochs and not self.stop_training:
                if distributed.broadcast_flag(self._out_of_time()):  # rank 0's clock, so all stop together
                    log.info("stopping: the training time is spent" if self.budget is not None
                             else "stopping: --max-minutes budget reached")
                    break
                t0 = time.monotonic()
                steps_before = self.budget.steps_done if self.budget is not None else 0
                train_loss = self.train_epoch()
                if self.stop_training:  # cancelled mid-epoch: no half-epoch in the history
                    break
                t1 = time.monotonic()
                lr = self.optimizer.param_groups[0]["lr"]
                logs = {"epoch": self.epoch + 1, "train_loss": train_loss, **self.validate(), "lr": lr,
                        "seconds": time.monotonic() - t0}
                if self.budget is not None:
                    steps = max(1, self.budget.steps_done - steps_before)
                    self.round_seconds = ((t1 - t0) / steps, time.monotonic() - t1)
                    self.budget.plan(self.round_seconds[0], self.round_seconds[1], self.steps_per_epoch)
                    logs.update(step=self.budget.steps_done, planned_steps=self.budget.planned,
                                seconds_left=self.budget.remaining)
                self.epoch += 1
                self.history.append(logs)
                for cb in callbacks:
                    cb.on_epoch_end(self, logs)
                self.stop_training = distributed.broadcast_flag(self.stop_training)  # early stopping
                if main:
                    self.save_last()
                log.info(self.summary(logs))
        except Exception as exc:  # under torchrun: a peer that left on Ctrl-C breaks this rank's collective
            distributed.raise_if_signalled(exc)
            raise
        finally:  # also on Ctrl-C or an error, which go on to the caller (train.log and the exit status say so)
            for cb in callbacks:
                cb.on_train_end(self)
        return self.history

    def _out_of_time(self) -> bool:
        if self.budget is not None:
            per_step, validation = self.round_seconds
            return bool(self.history) and self.budget.finished(per_step * self.steps_per_epoch + validation)
        if not self.config.max_minutes or not self.history:
            return False
        elapsed = time.monotonic() - self.started
        per_epoch = elapsed / max(1, self.epoch - self._first_epoch)
        return elapsed + per_epoch > self.config.max_minutes * 60

    def summary(self, logs: dict[str, float]) -> str:
        keys = ("train_loss", "val_loss", "val_iou", "val_f1", "val_relaxed_f1", "val_threshold")
        keys += tuple(k for k in logs if k.endswith("_iou") and k != "val_iou")  # per source
        parts = " ".join(f"{k}={logs[k]:.4f}" for k in keys if k in logs)
        if "planned_steps" in logs:  # a training time: rounds until it is spent
            left = int(logs["seconds_left"])
            return (f"round {int(logs['epoch'])}: step {int(logs['step'])}/{int(logs['planned_steps'])} {parts} "
                    f"({logs['seconds']:.0f}s; {left // 60}:{left % 60:02d} left)")
        return f"epoch {int(logs['epoch'])}/{self.config.epochs} {parts} ({logs['seconds']:.0f}s)"

    def train_epoch(self) -> float:
        self.model.train()
        self.train_data.set_epoch(self.epoch)  # the crops of (seed, epoch, index): new ones every epoch
        sampler = distributed.BatchShardSampler(len(self.train_data), self.config.batch_size)
        loader = DataLoader(self.train_data, batch_sampler=sampler, num_workers=self.config.workers,
                            pin_memory=self.cuda)
        total, count = 0.0, 0
        bar = tqdm(loader, desc=f"epoch {self.epoch + 1}", leave=False, unit="batch", disable=not distributed.is_main())
        for step, batch in enumerate(bar):
            x, y, v = (batch[k].to(self.device, non_blocking=True) for k in ("image", "mask", "valid"))
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=self.autocast or torch.float32,
                                enabled=self.autocast is not None):
                logits = self.forward(x)[:, 0].float()
            loss = self.config.loss(logits, y, v)
            weighted = loss if self.world == 1 else loss * distributed.batch_weight(sampler, step, len(x))
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(weighted).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.budget is not None or self.scheduler.last_epoch < self.scheduler.total_steps - 1:
                self.scheduler.step()
            total += loss.item() * len(x)
            count += len(x)
            bar.set_postfix(loss=f"{total / count:.4f}")
            if self.config.on_progress is not None:
                done = self.epoch + count * self.world / len(self.train_data)
                self.config.on_progress(self.budget.fraction if self.budget is not None
                                        else min(1.0, done / self.config.epochs))
            if self.budget is not None and self.history and self.budget.remaining < self.round_seconds[1]:
                break  # the time is spent: validate what this round learnt and stop
            if self.config.is_cancelled is not None and distributed.any_flag(self.config.is_cancelled()):
                log.warning("cancelled: stopping after this batch")
                self.stop_training = True
                break
        total, count = distributed.all_reduce_sum([total, count])  # the mean over every rank's crops
        return float(total / max(count, 1))

    @torch.no_grad()
    def predict_tile(self, image: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Blended whole-tile probabilities with the current weights (eval mode); no-data
        (`valid` False) goes in as the engine gives it (`normalise.fill_nodata`)."""
        self.model.eval()

        def run(batch: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(batch).to(self.device).contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=self.autocast or torch.float32,
                                enabled=self.autocast is not None):
                return torch.sigmoid(self.model(x).float())[:, 0].cpu().numpy()

        meta = self.meta  # the model being trained: validated on its own inference tiling
        return predict_whole(image, valid, meta, run, meta.tile, meta.overlap, self.config.val_batch_size)

    def validate(self) -> dict[str, float]:
        """Whole-tile metrics over `val_tiles`. Each rank predicts its share of the tiles; the
        loss sum, the probability histograms that choose the threshold and the pixel counts
        are summed over the ranks, so the figures are those of one process predicting all."""
        if not self.val_tiles:
            return {}
        distributed.sync_buffers(self.model)  # every rank predicts with rank 0's BatchNorm statistics
        mine = distributed.shard(self.val_tiles)
        loss_sum, pos, neg, preds = 0.0, np.zeros(THRESHOLD_BINS), np.zeros(THRESHOLD_BINS), []
        for t in mine:
            prob = self.predict_tile(t.image, t.valid)
            loss_sum += prob_bce_dice(torch.from_numpy(prob)[None], torch.from_numpy(t.mask.astype(np.float32))[None],
                                      torch.from_numpy(t.valid.astype(np.float32))[None]).item()
            tile_pos, tile_neg = threshold_histograms(prob[t.valid], t.mask[t.valid])
            pos, neg = pos + tile_pos, neg + tile_neg
            preds.append(prob)
        sums = distributed.all_reduce_sum([loss_sum, *pos, *neg])
        threshold = threshold_from_histograms(sums[1:1 + THRESHOLD_BINS], sums[1 + THRESHOLD_BINS:])[0]
        counts = sum((pixel_counts(p >= threshold, t.mask, t.valid) for p, t in zip(preds, mine, strict=True)),
                     PixelCounts())
        counts = PixelCounts(*(int(c) for c in distributed.all_reduce_sum(astuple(counts))))
        metrics = {f"val_{k}": v for k, v in counts.metrics().items()}
        if not distributed.active():
            watched = [self.predict_tile(t.image, t.valid) for t in self.watch_tiles]
            metrics.update(per_source_figures(preds + watched, mine + self.watch_tiles, threshold))
        return {"val_loss": float(sums[0] / len(self.val_tiles)), **metrics, "val_threshold": threshold}


def per_source_figures(preds: list[np.ndarray], tiles: list[Tile], threshold: float) -> dict[str, float]:
    """`val_<source>_iou` and `_relaxed_f1` of each source, when the tiles come from several."""
    names = sorted({t.source for t in tiles})
    if len(names) < 2:
        return {}
    out = {}
    for name in names:
        counts = sum((pixel_counts(p >= threshold, t.mask, t.valid) for p, t in zip(preds, tiles, strict=True)
                      if t.source == name), PixelCounts())
        figures = counts.metrics()
        out[f"val_{name}_iou"], out[f"val_{name}_relaxed_f1"] = figures["iou"], figures["relaxed_f1"]
    return out


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The reduced precision that pays on `device`: fp16 on CUDA, bf16 on a CPU with native
    bf16 (AVX-512 BF16 or AMX; measured 2.1x the fp32 crops/s on a 2-core EPYC), none on a CPU
    that would emulate it (AVX2 only: slower than fp32)."""
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
        return torch.bfloat16
    return None
