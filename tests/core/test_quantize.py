"""int8 models: quantisation on real files, how the engine finds them, and their failure modes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import rasterio
import torch
from rasterio.windows import Window

from roadseg_plugin.cli.main import main
from roadseg_plugin.core.backends import load_backend
from roadseg_plugin.core.checkpoint import BUNDLED_MODEL, load_model, save_checkpoint
from roadseg_plugin.core.errors import CheckpointError, RasterError
from roadseg_plugin.core.model_meta import read_onnx_meta
from roadseg_plugin.core.normalise import normalise
from roadseg_plugin.core.onnx_backend import find_int8, int8_path
from roadseg_plugin.core.quantize import quantize_model
from tests.conftest import ROOT
from tests.core.test_engine import scene, write_tif

SAMPLE = ROOT / "samples" / "massachusetts_19678630_crop.png"


@pytest.fixture
def imagery(tmp_path: Path) -> Path:
    folder = tmp_path / "calibration"
    folder.mkdir()
    for i in range(3):
        write_tif(folder / f"scene{i}.tif", scene(160, 200, seed=i))
    return folder


@pytest.fixture
def quantized(tiny_checkpoint: Path, imagery: Path) -> Path:
    return quantize_model(tiny_checkpoint, imagery, crops=6)


def test_quantize_writes_an_int8_model_the_engine_finds(tiny_checkpoint, quantized, imagery):
    assert quantized == int8_path(tiny_checkpoint) and find_int8(tiny_checkpoint) == quantized
    ops = {node.op_type for node in onnx.load(str(quantized)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    _, meta = load_model(tiny_checkpoint)
    assert read_onnx_meta(quantized).to_dict() == meta.to_dict()

    int8 = load_backend(tiny_checkpoint, "cpu", "onnxruntime-int8")
    fp32 = load_backend(tiny_checkpoint, "cpu", "onnxruntime")
    assert (int8.name, fp32.name) == ("onnxruntime-int8", "onnxruntime")
    batch = normalise(scene(64, 64, seed=9), meta)[None]
    a, b = int8.predict(batch), fp32.predict(batch)
    assert np.abs(a - b).max() < 0.02
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.7  # same picture (an untrained model: weak signal)


def test_a_replaced_checkpoint_falls_back_to_fp32(tiny_checkpoint, quantized):
    model, meta = load_model(tiny_checkpoint)
    with torch.no_grad():
        model.head.bias += 1.0
    save_checkpoint(tiny_checkpoint, model, meta)
    assert find_int8(tiny_checkpoint) is None and quantized.is_file()
    assert load_backend(tiny_checkpoint, "cpu").name == "onnxruntime"


def test_asking_for_int8_without_one_names_the_command(tiny_checkpoint):
    with pytest.raises(CheckpointError, match="roadseg_plugin quantize") as err:
        load_backend(tiny_checkpoint, "cpu", "onnxruntime-int8")
    assert str(tiny_checkpoint) in str(err.value)


def test_calibration_needs_usable_imagery(tiny_checkpoint, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RasterError, match="no raster images"):
        quantize_model(tiny_checkpoint, empty)
    small = tmp_path / "small"
    small.mkdir()
    write_tif(small / "tiny.tif", scene(32, 32))  # smaller than the model's 64 px tile
    with pytest.raises(RasterError, match="at least 64x64"):
        quantize_model(tiny_checkpoint, small)
    assert find_int8(tiny_checkpoint) is None and not list(tmp_path.glob("*.int8.onnx*"))


def test_quantize_command(tiny_checkpoint, imagery, tmp_path, capsys):
    out = tmp_path / "fast.onnx"
    assert main(["quantize", str(tiny_checkpoint), "--calibration", str(imagery), "--crops", "4",
                 "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert load_backend(out, "cpu").name == "onnxruntime-int8"
    assert main(["quantize", str(tiny_checkpoint), "--calibration", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err


@pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason=f"bundled model not present at {BUNDLED_MODEL}")
def test_the_shipped_int8_model_belongs_to_the_shipped_checkpoint():
    # Fails when roadseg_default.pt is replaced without `python -m roadseg_plugin quantize`.
    assert find_int8() is not None, "re-run: python -m roadseg_plugin quantize --calibration IMAGES"
    int8 = load_backend(device="cpu", backend="onnxruntime-int8")
    fp32 = load_backend(device="cpu", backend="onnxruntime")
    assert int8.name == "onnxruntime-int8"
    with rasterio.open(SAMPLE) as src:  # real imagery shipped in the repository
        batch = normalise(src.read(window=Window(0, 0, 512, 512)), int8.meta)[None]
    a, b = int8.predict(batch), fp32.predict(batch)
    threshold = int8.meta.threshold
    assert (b > threshold).mean() > 0.02, "the sample crop must show roads"
    assert ((a > threshold) == (b > threshold)).mean() > 0.99 and np.abs(a - b).mean() < 0.01


def _precision(path: Path) -> dict:
    import json

    from roadseg_plugin.core.onnx_backend import PRECISION_KEY

    return json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}[PRECISION_KEY])


def test_the_auto_form_is_the_fastest_form_that_agrees_with_fp32_on_this_cpu(tiny_checkpoint, imagery):
    from roadseg_plugin.core.backends.cpu import describe_cpu
    from roadseg_plugin.core.quantize import AUTO_FORMS, MIN_AGREEMENT, SAME_SPEED

    info = _precision(quantize_model(tiny_checkpoint, imagery, crops=6))
    speeds, agreement = info["tiles_per_s"], info["agreement"]
    assert set(speeds) == set(agreement) == set(AUTO_FORMS) and min(speeds.values()) > 0
    passing = ([form for form in AUTO_FORMS if agreement[form] >= MIN_AGREEMENT]
               or [max(AUTO_FORMS, key=lambda form: agreement[form])])  # none agrees: the closest
    assert info["form"] in passing
    assert speeds[info["form"]] >= max(speeds[form] for form in passing) * (1 - SAME_SPEED)
    assert info["cpu"] == describe_cpu() and info["calibration_crops"] == 6


def test_each_form_is_the_graph_it_names(tiny_checkpoint, imagery, tmp_path):
    def graph(form: str) -> list:
        return list(onnx.load(str(quantize_model(tiny_checkpoint, imagery, tmp_path / f"{form}.onnx", crops=4,
                                                 form=form))).graph.node)

    qoperator = graph("qoperator-per-channel")
    assert "QLinearConv" in {n.op_type for n in qoperator}
    for form, stem_in_int8 in (("qdq-per-channel", False), ("qdq-per-channel-int8-stem", True)):
        nodes = graph(form)
        first_conv = next(n for n in nodes if n.op_type == "Conv")
        makers = {out: n.op_type for n in nodes for out in n.output}
        assert (makers.get(first_conv.input[0]) == "DequantizeLinear") == stem_in_int8, form
        assert _precision(tmp_path / f"{form}.onnx")["form"] == form
    with pytest.raises(ValueError, match="unknown int8 form 'int4'"):
        quantize_model(tiny_checkpoint, imagery, form="int4")


def test_the_quantize_command_refuses_an_unknown_form(tiny_checkpoint, imagery, capsys):
    assert main(["quantize", str(tiny_checkpoint), "--calibration", str(imagery), "--form", "int4"]) == 2
    assert "form int4: is not one of auto, qdq-per-channel" in capsys.readouterr().err
    assert find_int8(tiny_checkpoint) is None
