"""Keep only the best model (by the monitored value) as `best.pt`, plus its `metrics.json`."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from roadseg_plugin.core.atomic import temporary_sibling
from roadseg_plugin.core.checkpoint import save_checkpoint

from .base import Callback, Monitor


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = temporary_sibling(path)
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


class ModelCheckpoint(Callback):
    def __init__(self, path: str | Path, monitor: str = "val_loss", mode: str = "min") -> None:
        self.path = Path(path)
        self.tracker = Monitor(monitor, mode)
        self.best_epoch: int | None = None

    def on_epoch_end(self, trainer: Any, logs: dict[str, float]) -> None:
        if not self.tracker.improved(logs):
            return
        meta = trainer.meta
        meta.val_metrics = {k[4:]: float(v) for k, v in logs.items() if k.startswith("val_")}
        meta.val_metrics["epoch"] = int(logs.get("epoch", 0))
        if "val_threshold" in logs:
            meta.threshold = float(logs["val_threshold"])
        save_checkpoint(self.path, trainer.model, meta)  # atomic: temp file + os.replace
        write_json_atomic(self.path.with_name("metrics.json"), meta.val_metrics)
        self.best_epoch = int(logs.get("epoch", 0))

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.tracker.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.best, self.best_epoch = state["best"], state["best_epoch"]
