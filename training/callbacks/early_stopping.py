"""Stop when the monitored value has not improved for `patience` epochs."""
from __future__ import annotations

import logging
from typing import Any

from .base import Callback, Monitor

log = logging.getLogger(__name__)


class EarlyStopping(Callback):
    def __init__(self, monitor: str | None = None, mode: str | None = None, patience: int = 15,
                 min_delta: float = 0.0) -> None:
        self.tracker = Monitor(monitor, mode, min_delta)
        self.patience = patience
        self.wait = 0
        self.stopped_epoch: int | None = None

    def on_train_begin(self, trainer: Any) -> None:
        self.tracker.bind(trainer)

    def on_epoch_end(self, trainer: Any, logs: dict[str, float]) -> None:
        if self.tracker.improved(logs):
            self.wait = 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = int(logs.get("epoch", 0))
            trainer.stop_training = True
            log.info("early stopping: %s did not improve for %d epochs", self.tracker.monitor, self.patience)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.tracker.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.best, self.wait = state["best"], state["wait"]
