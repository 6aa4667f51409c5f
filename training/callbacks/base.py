"""Do-nothing base so each callback overrides only the hooks it needs.

Under torchrun the trainer calls callbacks on rank 0 alone (`Trainer.fit`), so they write their
files without rank guards, see the plain model (never the DDP wrapper), and what they decide
(`trainer.stop_training`) reaches the other processes by broadcast.
"""
from __future__ import annotations

from typing import Any


class Callback:
    def on_train_begin(self, trainer: Any) -> None:
        pass

    def on_epoch_end(self, trainer: Any, logs: dict[str, float]) -> None:
        pass

    def on_train_end(self, trainer: Any) -> None:
        pass


class Monitor:
    """Tracks the best value of one logged metric; shared by EarlyStopping and ModelCheckpoint."""

    def __init__(self, monitor: str | None = None, mode: str | None = None, min_delta: float = 0.0) -> None:
        if mode not in (None, "min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
        self.monitor, self.mode, self.min_delta = monitor, mode, abs(min_delta)
        self.best: float | None = None

    def bind(self, trainer: Any) -> None:
        """Track the trainer's `monitor` and `mode` unless this callback was given its own."""
        if self.monitor is None:
            self.monitor, self.mode = trainer.monitor, trainer.mode
        elif self.mode is None:
            self.mode = "min" if self.monitor.endswith("loss") else "max"

    def improved(self, logs: dict[str, float]) -> bool:
        """True (and remembers the value) when `logs[monitor]` beats the best by min_delta."""
        if self.monitor is None or self.mode is None:
            raise RuntimeError("Monitor.bind(trainer) must run before the first epoch")
        value = logs.get(self.monitor)
        if value is None:
            raise KeyError(f"monitored value {self.monitor!r} not in logs: {sorted(logs)}")
        better = (self.best is None or
                  (value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta))
        if better:
            self.best = float(value)
        return better
