"""The CUDA path on a real GPU: fp16 autocast inference, real out-of-memory recovery, AMP training.

Skipped where torch sees no CUDA device (CI and the developer machines); run on a GPU machine
with `pytest tests/core/test_cuda.py`.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from roadseg_plugin.core.backends import BatchRunner, TorchBackend
from roadseg_plugin.core.checkpoint import ModelMeta, load_model
from roadseg_plugin.core.engine import segment_raster
from roadseg_plugin.core.unet import build_model
from tests.core.test_engine import read_out, scene, write_tif

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")


def test_fp16_cuda_segmentation_matches_the_cpu_within_rounding(tmp_path):
    # The bundled (trained) model, not a test model with an amplified head: amplified logits turn
    # fp16 rounding into large probability jumps near 0.5, which says nothing about the engine.
    from roadseg_plugin.core.checkpoint import BUNDLED_MODEL

    if not BUNDLED_MODEL.is_file():
        pytest.skip(f"bundled model not present at {BUNDLED_MODEL}")
    src = write_tif(tmp_path / "in.tif", scene(300, 420))
    on_gpu = segment_raster(src, tmp_path / "gpu.tif", device="cuda", batch_size=8)
    on_cpu = segment_raster(src, tmp_path / "cpu.tif", device="cpu", backend="torch")
    assert (on_gpu.backend, on_gpu.device.split(":")[0]) == ("torch", "cuda")
    gpu, cpu = read_out(on_gpu.path)[0].astype(int), read_out(on_cpu.path)[0].astype(int)
    assert np.ptp(cpu) > 100, "the model must give varied probabilities on the test scene"
    assert np.abs(gpu - cpu).max() <= 3 and np.abs(gpu - cpu).mean() < 0.5  # on a 0..255 scale


def test_real_out_of_memory_halves_the_batch(monkeypatch):
    torch.manual_seed(0)
    backend = TorchBackend(build_model("unet", in_channels=3, base_channels=16, depth=4), ModelMeta(), "cuda")
    free, total = torch.cuda.mem_get_info()
    torch.cuda.set_per_process_memory_fraction(min(1.0, (torch.cuda.memory_allocated() + 2**30) / total))
    try:
        runner = BatchRunner(backend.predict, 32)  # 32 x 16 ch x 1024^2 fp16 activations need > 1 GiB
        tiles = np.random.default_rng(0).random((32, 3, 1024, 1024), dtype=np.float32)
        out = runner(tiles)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert out.shape == (32, 1024, 1024) and runner.limit < 32 and runner.notes
    np.testing.assert_allclose(out[-1:], backend.predict(tiles[-1:]), atol=2e-3)


def test_amp_training_on_cuda_writes_a_checkpoint_that_loads_on_the_cpu(tmp_path, road_dataset):
    from tests.training.test_train_run import TINY, rows
    from training.train import TrainConfig, train_model

    out = tmp_path / "run"
    train_model(TrainConfig(data=road_dataset, out=out, **{**TINY, "device": "cuda", "workers": 2}))
    history = rows(out / "history.csv")
    assert len(history) == 2 and all(np.isfinite(float(r["train_loss"])) for r in history)
    model, meta = load_model(out / "best.pt")
    assert next(model.parameters()).device.type == "cpu" and 0 < meta.threshold < 1
