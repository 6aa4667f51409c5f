"""Keep only the best model (by the monitored value) as `best.pt`, plus its `metrics.json`;
when training ends, its ONNX files beside it.

At the end of training (also after Ctrl-C or a failure, once a best epoch was saved), the final
`best.pt` gets `best.<sha12>.onnx` (the fp32 export) and, when ONNX Runtime's quantisation tools
are installed, `best.<sha12>.int8.onnx` calibrated on crops of the training tiles: the files
CPU inference runs in ONNX Runtime, also on a machine without torch (the engine finds them by
the checkpoint's hash). Exports of earlier versions of `best.pt` are deleted. An export that
fails is logged and never fails the training: the checkpoint is what matters.

Measured on the 2-core development machine for the bundled-size model (base 16, depth 4, 512 px
tiles): fp32 export 3 s, int8 calibration on 64 crops 31 s (16 crops: 7 s); a depth-2 test
model of 128 px tiles takes well under a second for both.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from roadseg_plugin.core.atomic import temporary_sibling
from roadseg_plugin.core.checkpoint import save_checkpoint

from .base import Callback, Monitor

log = logging.getLogger(__name__)
INT8_CROPS = 64  # calibration crops: 64 kept the fp32 model's APLS on the bundled model, 32 lost 0.03


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = temporary_sibling(path)
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


class ModelCheckpoint(Callback):
    """Args:
        path: where the best checkpoint goes (`best.pt`).
        monitor, mode: the logged value that decides "best" and whether lower or higher wins
            (default: the trainer's).
        export_onnx: write the fp32 ONNX export beside the final best checkpoint.
        int8_crops: calibration crops for the int8 model (0: no int8 model).
    """

    def __init__(self, path: str | Path, monitor: str | None = None, mode: str | None = None, export_onnx: bool = True,
                 int8_crops: int = INT8_CROPS) -> None:
        self.path = Path(path)
        self.tracker = Monitor(monitor, mode)
        self.best_epoch: int | None = None
        self.export_onnx, self.int8_crops = export_onnx, int8_crops
        self.exports: list[Path] = []  # the ONNX files written at the end of training

    def on_train_begin(self, trainer: Any) -> None:
        self.tracker.bind(trainer)

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

    def on_train_end(self, trainer: Any) -> None:
        """Write the ONNX files of the final `best.pt` (see the module docstring)."""
        if not self.export_onnx or not self.path.is_file():
            return
        try:
            self.exports = write_exports(self.path, training_tiles(trainer), self.int8_crops)
        except Exception as exc:  # noqa: BLE001 - an export problem must not lose the trained model
            log.warning("ONNX export of %s failed (%s); it is made on first CPU use where torch is installed",
                        self.path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.tracker.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.best, self.best_epoch = state["best"], state["best_epoch"]


def training_tiles(trainer: Any) -> list[Any]:
    """The in-memory training tiles (`datasets.Tile`: uint8 image, valid mask) of a trainer."""
    return list(getattr(getattr(trainer, "train_data", None), "tiles", None) or [])


def write_exports(checkpoint: Path, tiles: list[Any], int8_crops: int = INT8_CROPS, seed: int = 0) -> list[Path]:
    """The fp32 export of `checkpoint` beside it and, when possible, its int8 model calibrated on
    `int8_crops` random crops of `tiles`; stale exports of the same name deleted. Returns the files."""
    from roadseg_plugin.core.onnx_backend import export_onnx, int8_path, remove_stale_exports

    remove_stale_exports(checkpoint)
    fp32 = export_onnx(checkpoint)
    written = [fp32]
    crops = calibration_crops(fp32, tiles, int8_crops, seed) if int8_crops > 0 else []
    if crops:
        try:
            from roadseg_plugin.core import quantize
        except ImportError as exc:  # onnxruntime's quantisation tools absent: fp32 only
            log.info("no int8 model for %s: %s", checkpoint, exc)
            return written
        target = int8_path(checkpoint)
        tmp = temporary_sibling(target)
        try:
            quantize._quantize(fp32, iter(crops), tmp)
            quantize._copy_metadata(fp32, tmp, len(crops))
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        written.append(target)
    return written


def calibration_crops(fp32: Path, tiles: list[Any], count: int, seed: int = 0) -> list[np.ndarray]:
    """Up to `count` model inputs (1, C, t, t), t the model's tile size, cut at random from the
    tiles big enough and mostly valid, normalised exactly as the engine does (`InputNormaliser`)."""
    from roadseg_plugin.core.model_meta import read_onnx_meta
    from roadseg_plugin.core.normalise import InputNormaliser

    meta = read_onnx_meta(fp32)
    size = meta.tile
    usable = [t for t in tiles if min(t.image.shape[1:]) >= size and t.image.dtype == np.uint8
              and t.image.shape[0] == meta.in_channels]
    if not usable:
        return []
    normalise = InputNormaliser(meta, "uint8")
    rng = np.random.default_rng(seed)
    crops: list[np.ndarray] = []
    for _ in range(count * 4):  # mostly-no-data crops are skipped
        tile = usable[int(rng.integers(len(usable)))]
        r = int(rng.integers(tile.image.shape[1] - size + 1))
        c = int(rng.integers(tile.image.shape[2] - size + 1))
        valid = tile.valid[r:r + size, c:c + size]
        if valid.mean() > 0.5:
            crops.append(normalise(tile.image[:, r:r + size, c:c + size], valid)[None])
        if len(crops) == count:
            break
    return crops
