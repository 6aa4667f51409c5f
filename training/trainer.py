"""The training loop: epochs of random crops, whole-tile validation, callbacks, resume state.

The trainer knows nothing of GIFs, plots or early stopping: callbacks do one job each and
read `trainer.history`, `trainer.model` and `trainer.meta`.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from roadseg_plugin.core.checkpoint import ModelMeta, read_checkpoint, save_checkpoint
from roadseg_plugin.core.errors import CheckpointError
from roadseg_plugin.core.metrics import PixelCounts, best_threshold, pixel_counts
from roadseg_plugin.core.normalise import normalise
from roadseg_plugin.core.tiling import predict_array

from .datasets import RandomCropDataset, Tile
from .losses import masked_bce_dice, prob_bce_dice

log = logging.getLogger(__name__)


class Callback(Protocol):
    def on_train_begin(self, trainer: "Trainer") -> None: ...
    def on_epoch_end(self, trainer: "Trainer", logs: dict[str, float]) -> None: ...
    def on_train_end(self, trainer: "Trainer") -> None: ...


@dataclass
class FitConfig:
    epochs: int = 200
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    workers: int = 1
    max_minutes: float | None = None
    amp: bool = True
    compile: bool = False
    val_batch_size: int = 8
    on_progress: Callable[[float], None] | None = None  # fraction of all epochs done, 0..1
    is_cancelled: Callable[[], bool] | None = None  # checked between batches


class Trainer:
    """Fits `model` on `train_data` and validates on whole `val_tiles` after every epoch."""

    monitor = "val_loss"
    mode = "min"

    def __init__(self, model: torch.nn.Module, meta: ModelMeta, train_data: RandomCropDataset,
                 val_tiles: list[Tile], out: Path, config: FitConfig, device: torch.device,
                 callbacks: list[Any] | None = None) -> None:
        # channels_last: ~1.6x faster convolutions on CPU (oneDNN) and tensor cores on CUDA
        model = model.to(device, memory_format=torch.channels_last)
        self.model, self.meta, self.train_data, self.val_tiles = model, meta, train_data, val_tiles
        self.out, self.config, self.device = Path(out), config, device
        self.callbacks = callbacks or []
        self.cuda = device.type == "cuda"
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        total = max(1, config.epochs * self.steps_per_epoch)
        warmup = min(0.1, 3 / max(config.epochs, 1))
        if round(warmup * total, 9) == 1:  # a warm-up of exactly one step divides by zero in OneCycleLR
            warmup = 2 / total
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=config.lr, total_steps=total, pct_start=warmup, div_factor=10,
            final_div_factor=100)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.cuda and config.amp)
        self.forward = torch.compile(model) if config.compile else model
        self.history: list[dict[str, float]] = []
        self.epoch = 0
        self.saved_epoch = 0  # the epoch last.pt holds: behind `epoch` while an epoch's callbacks run
        self.stop_training = False
        self.started, self._first_epoch = time.monotonic(), 0

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
        for cb in self.callbacks:
            cb.on_train_begin(self)
        try:
            while self.epoch < self.config.epochs and not self.stop_training:
                if self._out_of_time():
                    log.info("stopping: --max-minutes budget reached")
                    break
                t0 = time.monotonic()
                train_loss = self.train_epoch()
                if self.stop_training:  # cancelled mid-epoch: no half-epoch in the history
                    break
                logs = {"epoch": self.epoch + 1, "train_loss": train_loss, **self.validate(),
                        "lr": self.optimizer.param_groups[0]["lr"], "seconds": time.monotonic() - t0}
                self.epoch += 1
                self.history.append(logs)
                for cb in self.callbacks:
                    cb.on_epoch_end(self, logs)
                self.save_last()
                log.info(self.summary(logs))
        finally:  # also on Ctrl-C or an error, which go on to the caller (train.log and the exit status say so)
            for cb in self.callbacks:
                cb.on_train_end(self)
        return self.history

    def _out_of_time(self) -> bool:
        if not self.config.max_minutes or not self.history:
            return False
        elapsed = time.monotonic() - self.started
        per_epoch = elapsed / max(1, self.epoch - self._first_epoch)
        return elapsed + per_epoch > self.config.max_minutes * 60

    def summary(self, logs: dict[str, float]) -> str:
        keys = ("train_loss", "val_loss", "val_iou", "val_f1", "val_relaxed_f1", "val_threshold")
        parts = " ".join(f"{k}={logs[k]:.4f}" for k in keys if k in logs)
        return f"epoch {int(logs['epoch'])}/{self.config.epochs} {parts} ({logs['seconds']:.0f}s)"

    def train_epoch(self) -> float:
        self.model.train()
        self.train_data.set_epoch(self.epoch)
        loader = DataLoader(self.train_data, batch_size=self.config.batch_size, shuffle=False,
                            num_workers=self.config.workers, pin_memory=self.cuda, drop_last=False)
        total, count = 0.0, 0
        bar = tqdm(loader, desc=f"epoch {self.epoch + 1}", leave=False, unit="batch")
        for batch in bar:
            x, y, v = (batch[k].to(self.device, non_blocking=True) for k in ("image", "mask", "valid"))
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.cuda and self.config.amp):
                logits = self.forward(x)[:, 0]
            loss = masked_bce_dice(logits, y, v)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.scheduler.last_epoch < self.scheduler.total_steps - 1:
                self.scheduler.step()
            total += loss.item() * len(x)
            count += len(x)
            bar.set_postfix(loss=f"{total / count:.4f}")
            if self.config.on_progress is not None:
                done = self.epoch + count / len(self.train_data)
                self.config.on_progress(min(1.0, done / self.config.epochs))
            if self.config.is_cancelled is not None and self.config.is_cancelled():
                log.warning("cancelled: stopping after this batch")
                self.stop_training = True
                break
        return total / max(count, 1)

    @torch.no_grad()
    def predict_tile(self, image: np.ndarray) -> np.ndarray:
        """Blended whole-tile probabilities with the current weights (eval mode)."""
        self.model.eval()

        def run(batch: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(batch).to(self.device).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.cuda):
                return torch.sigmoid(self.model(x).float())[:, 0].cpu().numpy()

        return predict_array(normalise(image, self.meta), run, self.meta.tile, self.meta.overlap,
                             self.config.val_batch_size)

    def validate(self) -> dict[str, float]:
        if not self.val_tiles:
            return {}
        losses, probs, truths, preds = [], [], [], []
        for t in self.val_tiles:
            prob = self.predict_tile(t.image)
            losses.append(prob_bce_dice(torch.from_numpy(prob)[None], torch.from_numpy(t.mask.astype(np.float32))[None],
                                        torch.from_numpy(t.valid.astype(np.float32))[None]).item())
            probs.append(prob[t.valid])
            truths.append(t.mask[t.valid])
            preds.append(prob)
        threshold, _ = best_threshold(np.concatenate(probs), np.concatenate(truths))
        counts = sum((pixel_counts(p >= threshold, t.mask, t.valid) for p, t in zip(preds, self.val_tiles)),
                     PixelCounts())
        metrics = {f"val_{k}": v for k, v in counts.metrics().items()}
        return {"val_loss": float(np.mean(losses)), **metrics, "val_threshold": threshold}
