"""`python -m bench train [--steps N] [--json PATH]`: CPU training throughput in crops/s.

The shipped model is trained on CPUs, so what a training step costs matters. This measures,
in one run and interleaved (so a change in machine load weighs on every figure alike), the
real training step of the bundled architecture (U-Net depth 4, base 16; batch 16 of 256 px
crops; BCE + Dice + clDice; AdamW) in the trainer's settings and the alternatives it chose
between: fp32 in NCHW (the reference), fp32 channels_last, and bf16 autocast + channels_last
where the CPU has native bf16 (AVX-512 BF16 or AMX; emulated elsewhere, so not offered there).
Crops come from the real data pipeline (random crops, robust augmentation, synthetic no-data)
when ../shared/data is present, timed alone as well. Prints the CPU's instruction sets beside
the figures.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "massachusetts-roads" / "train"


def _batches(batch: int, tile: int, count: int) -> list[dict]:
    """`count` real training batches (robust augmentation, no-data) or random ones without data."""
    import numpy as np
    import torch

    if not (DATA / "images").is_dir():
        rng = np.random.default_rng(0)
        return [{"image": torch.from_numpy(rng.normal(size=(batch, 3, tile, tile)).astype(np.float32)),
                 "mask": torch.from_numpy((rng.random((batch, tile, tile)) > 0.9).astype(np.float32)),
                 "valid": torch.ones(batch, tile, tile)} for _ in range(count)]
    from torch.utils.data import default_collate

    dataset = _dataset(batch * count, tile)
    samples = [dataset[i] for i in range(batch * count)]
    return [default_collate(samples[i * batch:(i + 1) * batch]) for i in range(count)]


def _dataset(length: int, tile: int):  # noqa: ANN202 - a RandomCropDataset
    from roadseg_plugin.core.checkpoint import load_model
    from roadseg_plugin.core.params import BUNDLED_MODEL
    from training.augment import RobustAugment, band_quantiles
    from training.datasets import RandomCropDataset, load_tiles, normalised_tiles

    _, meta = load_model(BUNDLED_MODEL)
    tiles = normalised_tiles(load_tiles(DATA)[:8], meta, announce=False)
    return RandomCropDataset(tiles, tile, length, meta.mean, meta.std,
                             RobustAugment([band_quantiles(t.image, t.valid) for t in tiles]), 1.0, 0, p_nodata=0.3)


def data_speed(batch: int, tile: int, count: int) -> float | None:
    """Crops/s of the data pipeline alone, one process (None without the shared data)."""
    if not (DATA / "images").is_dir():
        return None
    dataset = _dataset(batch * count, tile)
    t0 = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]
    return len(dataset) / (time.perf_counter() - t0)


class Step:
    """One configuration of the training step, with its own model and optimiser."""

    def __init__(self, name: str, channels_last: bool, dtype) -> None:  # noqa: ANN001 - torch.dtype or None
        import torch

        from roadseg_plugin.core.unet import build_model
        from training.losses import LOSSES

        self.name, self.channels_last, self.dtype = name, channels_last, dtype
        torch.manual_seed(0)
        self.model = build_model("unet", in_channels=3, base_channels=16, depth=4, upsampling="bilinear",
                                 batch_norm=True)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.loss = LOSSES["bce_cldice"]
        self.seconds: list[float] = []

    def __call__(self, batch: dict) -> None:
        import torch

        x = batch["image"].contiguous(memory_format=torch.channels_last) if self.channels_last else batch["image"]
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            logits = self.model(x)[:, 0].float()
        loss = self.loss(logits, batch["mask"], batch["valid"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.seconds.append(time.perf_counter() - t0)


def run(steps: int, batch: int = 16, tile: int = 256) -> dict:
    import torch

    from training.trainer import autocast_dtype

    configs = [Step("fp32_nchw", False, None), Step("fp32_channels_last", True, None)]
    picked = autocast_dtype(torch.device("cpu"))
    if picked is not None:
        configs.append(Step("bf16_channels_last", True, picked))
    batches = _batches(batch, tile, 2)
    for step in configs:  # warm-up: oneDNN builds its kernels on the first calls
        step(batches[0])
        step.seconds.clear()
    for i in range(steps):  # interleaved: load changes hit every configuration alike
        for step in configs:
            step(batches[i % len(batches)])
    speeds = {s.name: batch / statistics.median(s.seconds) for s in configs}
    reference = speeds["fp32_nchw"]
    from roadseg_plugin.core.backends.cpu import cpu_features, cpu_name

    out = {"cpu": cpu_name(), "cpu_flags": cpu_features(), "threads": torch.get_num_threads(), "batch": batch,
           "tile": tile, "steps": steps, "data_crops_s": None,
           "trainer_uses": "bf16_channels_last" if picked else "fp32_channels_last"}
    data = data_speed(batch, tile, 2)
    out["data_crops_s"] = None if data is None else round(data, 1)
    for name, value in speeds.items():
        out[f"{name}_crops_s"] = round(value, 2)
        out[f"{name}_over_reference"] = round(value / reference, 2)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench train", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8, help="timed steps per configuration (median)")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    args = p.parse_args(argv)
    figures = run(args.steps)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0
