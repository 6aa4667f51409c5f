"""Run by test_distributed, alone or under torchrun: `Trainer.fit` of a BatchNorm-free U-Net with
the pixel-mean BCE loss, both of which decompose over crops, so N processes must reproduce one
process's weights up to float summation order.

Usage: python -m tests.training.ddp_probe DATA OUT (writes OUT/last.pt)."""
import sys
from pathlib import Path

import torch

from roadseg_plugin.core.checkpoint import ModelMeta
from roadseg_plugin.core.unet import build_model
from training import distributed
from training.datasets import RandomCropDataset, load_tiles
from training.losses import _bce
from training.trainer import FitConfig, Trainer

data, out = Path(sys.argv[1]), Path(sys.argv[2])
torch.manual_seed(0)
config = {"in_channels": 3, "base_channels": 4, "depth": 2, "batch_norm": False}
model = build_model("unet", **config)
# 29 crops in global batches of 8: the last batch of 5 splits 2 + 3 over two processes
crops = RandomCropDataset(load_tiles(data), 32, 29, [0.5] * 3, [0.25] * 3, augment=False, seed=0)
out.mkdir(parents=True, exist_ok=True)
with distributed.process_group(torch.device("cpu")):
    trainer = Trainer(model, ModelMeta(arch_config=config), crops, [], out,
                      FitConfig(epochs=2, batch_size=8, workers=0, lr=0.01, amp=False,  # exact sums: fp32
                                loss=lambda logits, y, v: _bce(logits.float(), y, v)), torch.device("cpu"))
    trainer.fit()
