"""`history.csv`: one row per epoch, rewritten from the trainer's history so resume stays consistent."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from .base import Callback


class CSVLogger(Callback):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_epoch_end(self, trainer: Any, logs: dict[str, float]) -> None:
        rows = trainer.history
        keys = list(dict.fromkeys(k for row in rows for k in row))
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(self.path)
