"""Weight interpolation (`python -m training interpolate`): the ends are the two models, the
middle their mean; models of other architectures and outputs over inputs are refused."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from roadseg_plugin.core.checkpoint import ModelMeta, load_model, save_checkpoint
from roadseg_plugin.core.errors import CheckpointError, ParamError
from roadseg_plugin.core.unet import build_model
from training.interpolate import interpolate, write_interpolated

ROOT = Path(__file__).resolve().parents[2]


def _tuned(start: Path, tmp_path: Path, base: int = 4) -> Path:
    """A copy of `start` whose every weight moved (as training would)."""
    model, meta = load_model(start)
    if base != 4:
        config = {**meta.arch_config, "base_channels": base}
        model, meta = build_model("unet", **config), ModelMeta(arch_config=config, tile=64, overlap=16, threshold=0.5)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor))
    path = tmp_path / f"tuned{base}.pt"
    save_checkpoint(path, model, meta)
    return path


def test_the_ends_are_the_two_models_and_the_middle_their_mean(tiny_checkpoint, tmp_path):
    tuned = _tuned(tiny_checkpoint, tmp_path)
    a, b = load_model(tiny_checkpoint)[0].state_dict(), load_model(tuned)[0].state_dict()
    for alpha, expected in ((0.0, a), (1.0, b)):
        got = interpolate(tiny_checkpoint, tuned, alpha)[0].state_dict()
        assert all(torch.equal(got[k], expected[k]) for k in got)
    middle, meta = interpolate(tiny_checkpoint, tuned, 0.5)
    floats = [k for k in a if a[k].is_floating_point()]
    assert floats and all(torch.allclose(middle.state_dict()[k], (a[k] + b[k]) / 2) for k in floats)
    assert "0.5 x tuned4.pt + 0.5 x tiny.pt" in meta.extra["blend"]


def test_other_architectures_bad_alphas_and_inputs_as_output_are_refused(tiny_checkpoint, tmp_path):
    wider = _tuned(tiny_checkpoint, tmp_path, base=8)
    with pytest.raises(CheckpointError, match="one architecture"):
        interpolate(tiny_checkpoint, wider, 0.5)
    for alpha in (-0.1, 1.5, float("nan")):
        with pytest.raises(ParamError, match="alpha"):
            interpolate(tiny_checkpoint, tiny_checkpoint, alpha)
    before = tiny_checkpoint.read_bytes()
    with pytest.raises(Exception, match="tiny.pt"):
        write_interpolated(tiny_checkpoint, _tuned(tiny_checkpoint, tmp_path), 0.5, tiny_checkpoint)
    assert tiny_checkpoint.read_bytes() == before


def test_the_command_writes_the_blend_with_its_threshold(tiny_checkpoint, tmp_path):
    tuned, out = _tuned(tiny_checkpoint, tmp_path), tmp_path / "blend.pt"
    done = subprocess.run([sys.executable, "-m", "training", "interpolate", "--start", str(tiny_checkpoint),
                           "--tuned", str(tuned), "--alpha", "0.4", "--threshold", "0.7", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "0.4 x tuned4.pt + 0.6 x tiny.pt" in done.stdout and load_model(out)[1].threshold == 0.7
    bad = subprocess.run([sys.executable, "-m", "training", "interpolate", "--start", str(tiny_checkpoint),
                          "--tuned", str(tuned), "--alpha", "2", "--out", str(tmp_path / "x.pt")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "alpha" in bad.stderr
    assert not (tmp_path / "x.pt").exists()
