"""`predictions.gif`: fixed validation crops as image | ground truth | prediction, one frame per epoch."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .base import Callback


def pick_crops(tiles: list, size: int, count: int = 3, seed: int = 0) -> list[tuple[int, int, int]]:
    """(tile index, row, col) of crops that contain roads and little no-data, reproducibly."""
    rng = np.random.default_rng(seed)
    crops: list[tuple[int, int, int]] = []
    for attempt in range(200):
        if len(crops) == count or not tiles:
            break
        i = int(rng.integers(len(tiles)))
        h, w = tiles[i].shape
        s = min(size, h, w)
        r, c = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        valid = tiles[i].valid[r:r + s, c:c + s]
        roads = tiles[i].mask[r:r + s, c:c + s]
        if attempt > 150 or (valid.mean() > 0.9 and roads.mean() > 0.02):
            crops.append((i, r, c))
    return crops


class PredictionGif(Callback):
    def __init__(self, path: str | Path, size: int = 256, count: int = 3, fps: float = 2.0) -> None:
        self.path, self.size, self.count, self.fps = Path(path), size, count, fps
        self.frames: list[np.ndarray] = []
        self.crops: list[tuple[int, int, int]] = []

    def on_train_begin(self, trainer: Any) -> None:
        self.crops = pick_crops(trainer.val_tiles, self.size, self.count)
        if trainer.epoch and self.path.exists():  # resume: keep earlier epochs' frames
            import imageio.v3 as iio

            self.frames = list(iio.imread(self.path, index=None))[: trainer.epoch]

    def render(self, trainer: Any) -> np.ndarray:
        rows = []
        for i, r, c in self.crops:
            tile = trainer.val_tiles[i]
            s = min(self.size, *tile.shape)
            image = tile.image[:3, r:r + s, c:c + s]
            prob = trainer.predict_tile(tile.image[:, r:r + s, c:c + s])
            rgb = np.moveaxis(image if image.shape[0] == 3 else np.repeat(image[:1], 3, 0), 0, -1)
            truth = np.repeat((tile.mask[r:r + s, c:c + s] * 255).astype(np.uint8)[..., None], 3, -1)
            pred = np.repeat((prob * 255).astype(np.uint8)[..., None], 3, -1)
            gap = np.full((s, 4, 3), 255, np.uint8)
            rows.append(np.concatenate([rgb, gap, truth, gap, pred], axis=1))
        width = max(r.shape[1] for r in rows)
        rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
        return np.concatenate(rows, axis=0)

    def on_epoch_end(self, trainer: Any, logs: dict[str, float]) -> None:
        if not self.crops:
            return
        import imageio.v3 as iio

        self.frames.append(self.render(trainer))
        tmp = self.path.with_name(f".{self.path.stem}.tmp.gif")
        iio.imwrite(tmp, np.stack(self.frames), duration=1000 / self.fps, loop=0)
        tmp.replace(self.path)
