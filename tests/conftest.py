"""Shared fixtures: small real rasters and a tiny real model, written into tmp folders."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data" / "massachusetts-roads" / "train"
needs_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "images").is_dir(),
    reason=f"real Massachusetts tiles not found at {SHARED_DATA} (they live beside the repository)",
)
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# torch's OpenMP threads spin between operations: on a machine whose cores are busy (a training run, a
# parallel build) that made the tests' small models 10 to 20 times slower. Passive threads sleep instead
# (ONNX Runtime is told the same, `session.intra_op.allow_spinning`). Read when torch loads, so before
# any test module imports it; CLI subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(autouse=True, scope="session")
def private_user_cache(tmp_path_factory: pytest.TempPathFactory):
    """The tests' own user cache folder (exports, the CPU backend choice): never the real one.
    Set in the environment, so CLI subprocesses share it."""
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("user-cache"))
    yield
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before


def draw_roads(size: int, rng: np.random.Generator, n: int = 3, width: int = 5) -> np.ndarray:
    """A boolean mask of a few straight roads across a square."""
    mask = np.zeros((size, size), bool)
    for _ in range(n):
        if rng.random() < 0.5:
            r = int(rng.integers(width, size - width))
            mask[r - width // 2:r + width // 2 + 1, :] = True
        else:
            c = int(rng.integers(width, size - width))
            mask[:, c - width // 2:c + width // 2 + 1] = True
    return mask


def road_image(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 RGB (3, H, W): grey roads on green-brown noise, so a tiny model can learn it."""
    h, w = mask.shape
    base = np.stack([np.full((h, w), 70), np.full((h, w), 110), np.full((h, w), 60)]).astype(np.float32)
    base += rng.normal(0, 12, (3, h, w))
    base[:, mask] = 170 + rng.normal(0, 8, (3, int(mask.sum())))
    return np.clip(base, 0, 254).astype(np.uint8)


def write_png_pair(root: Path, name: str, image: np.ndarray, mask: np.ndarray) -> None:
    from tests.rasters import write_mask_png, write_raster

    write_raster(root / "images" / f"{name}.png", image)
    write_mask_png(root / "masks" / f"{name}.png", mask)


@pytest.fixture
def road_dataset(tmp_path: Path) -> Path:
    """A folder of 4 generated 96x96 image/mask PNG pairs."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for i in range(4):
        mask = draw_roads(96, rng)
        write_png_pair(root, f"tile{i}", road_image(mask, rng), mask)
    return root


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    """A real (untrained) depth-2, base-4 U-Net checkpoint."""
    import torch

    from roadseg_plugin.core.checkpoint import ModelMeta, save_checkpoint
    from roadseg_plugin.core.unet import build_model

    torch.manual_seed(0)
    config = {"in_channels": 3, "base_channels": 4, "depth": 2}
    model = build_model("unet", **config)
    meta = ModelMeta(arch_config=config, tile=64, overlap=16, threshold=0.5)
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, model, meta)
    return path


def default_sigint() -> None:
    """A `preexec_fn` for CLI subprocesses that are sent Ctrl-C: SIGINT as a terminal gives it.
    pytest-qgis's QGIS application sets SIGINT to ignored in the test process, children inherit
    that, and Python then installs no KeyboardInterrupt handler (the run would finish, exit 0)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
