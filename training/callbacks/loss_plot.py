"""`loss.png`: train and validation loss, and validation IoU, redrawn every epoch."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import Callback


class LossPlot(Callback):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_epoch_end(self, trainer: Any, logs: dict[str, float]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        hist = trainer.history
        epochs = [h["epoch"] for h in hist]
        fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(10, 4))
        for key, label in (("train_loss", "train loss"), ("val_loss", "val loss")):
            ax_loss.plot(epochs, [h.get(key, float("nan")) for h in hist], marker=".", label=label)
        ax_loss.set(xlabel="epoch", ylabel="BCE + Dice", title="Loss")
        ax_loss.legend()
        ax_iou.plot(epochs, [h.get("val_iou", float("nan")) for h in hist], marker=".", color="tab:green")
        ax_iou.set(xlabel="epoch", ylabel="IoU", title="Validation IoU", ylim=(0, 1))
        for ax in (ax_loss, ax_iou):
            ax.grid(alpha=0.3)
        fig.tight_layout()
        tmp = self.path.with_name(f".{self.path.stem}.tmp.png")
        fig.savefig(tmp, dpi=100)
        plt.close(fig)
        tmp.replace(self.path)
