"""`export-onnx --deepness`: a RoadSeg model the Deepness QGIS plugin can load and run.

Deepness's rules for a segmentation model, written down here from its documentation and
behaviour (PUTvision/qgis-plugin-deepness, "Adding metadata to ONNX model"), not taken from its code:

1. One input, (batch, channels, height, width), height = width fixed in the file (the plugin's
   tile size is set from it); the batch may be dynamic.
2. One output: (batch, height, width), or (batch, classes, height, width). A single channel (or
   no channel axis) is a sigmoid output: the probability of the one named class, "background"
   being the rest.
3. Metadata (ONNX `metadata_props`), every value JSON: `model_type` "Segmentor"; `class_names`
   {"0": name, ...} with keys 0, 1, ... in order; `resolution` in centimetres per pixel;
   `tile_size` in pixels; `tiles_overlap` in percent of the tile; `standardization_mean` and
   `standardization_std`, one number per input channel; `seg_thresh`, the probability threshold.
4. A tile goes in as 8-bit RGB, height x width x channels, divided by 255, minus the mean, over
   the std, channels first; pixels whose output reaches `seg_thresh` are the class.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


class DeepnessSegmentor:
    """A model file read by the rules above."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (self.input,) = self.session.get_inputs()  # rule 1: one input
        (self.output,) = self.session.get_outputs()  # rule 2: one output
        self.meta = {k: json.loads(v) for k, v in self.session.get_modelmeta().custom_metadata_map.items()
                     if not k.startswith("roadseg")}

    @property
    def tile(self) -> int:
        _, _, height, width = self.input.shape
        assert isinstance(height, int) and height == width, self.input.shape  # fixed, square
        return width

    @property
    def channels(self) -> int:
        return int(self.input.shape[1])

    def class_names(self) -> list[str]:
        names = self.meta["class_names"]
        assert sorted(int(k) for k in names) == list(range(len(names)))  # consecutive from 0
        named = [names[k] for k in sorted(names, key=int)]
        sigmoid = len(self.output.shape) == 3 or self.output.shape[1] == 1
        return ["background", *named] if sigmoid and len(named) == 1 else named

    def probabilities(self, tiles_nhwc: np.ndarray) -> np.ndarray:
        x = tiles_nhwc[..., :self.channels].astype(np.float32) / 255.0
        x = (x - np.float32(self.meta["standardization_mean"])) / np.float32(self.meta["standardization_std"])
        out = self.session.run(None, {self.input.name: np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[0]
        return out if out.ndim == 3 else out[:, 0]


@pytest.fixture
def deepness_model(tmp_path: Path, tiny_checkpoint: Path) -> Path:
    out = tmp_path / "roads_deepness.onnx"
    done = subprocess.run([sys.executable, "-m", "roadseg_plugin", "export-onnx", str(tiny_checkpoint), str(out),
                           "--deepness"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Deepness: a Segmentor of one class (road)" in done.stdout
    return out


def test_deepness_reads_the_model_and_its_settings(deepness_model: Path, tiny_checkpoint: Path) -> None:
    from roadseg_plugin.core.checkpoint import load_model

    _, meta = load_model(tiny_checkpoint)
    model = DeepnessSegmentor(deepness_model)
    assert str(model.meta["model_type"]).capitalize() == "Segmentor"
    assert model.class_names() == ["background", "road"]
    assert model.tile == model.meta["tile_size"] == meta.tile and model.channels == meta.in_channels
    assert isinstance(model.input.shape[0], str)  # any batch size
    assert model.meta["resolution"] == pytest.approx(meta.gsd_m * 100)  # cm per pixel
    overlap_px = model.tile * model.meta["tiles_overlap"] / 100  # Deepness's overlap from the percent
    assert meta.overlap <= overlap_px < meta.overlap + model.tile / 100 + 1
    assert model.meta["seg_thresh"] == pytest.approx(meta.threshold)
    assert len(model.meta["standardization_mean"]) == len(model.meta["standardization_std"]) == model.channels


def test_deepness_gets_roadsegs_probabilities(deepness_model: Path, tiny_checkpoint: Path) -> None:
    """A tile fed the Deepness way gives the probabilities RoadSeg's own backend gives."""
    from roadseg_plugin.core.backends import load_backend
    from roadseg_plugin.core.normalise import normalise

    model = DeepnessSegmentor(deepness_model)
    rng = np.random.default_rng(3)
    tiles = rng.integers(0, 256, (2, model.tile, model.tile, 3), dtype=np.uint8)
    deepness = model.probabilities(tiles)
    backend = load_backend(tiny_checkpoint, device="cpu", backend="onnxruntime", tta=False)
    roadseg = backend.predict(np.stack([normalise(t.transpose(2, 0, 1), backend.meta) for t in tiles]))
    np.testing.assert_allclose(deepness, roadseg, atol=1e-5)
    assert 0 <= deepness.min() and deepness.max() <= 1


def test_roadseg_runs_the_deepness_file_too(deepness_model: Path, tmp_path: Path) -> None:
    """The same file stays a RoadSeg model (its own metadata travels in it), at its fixed tile size."""
    from roadseg_plugin.core.engine import segment_raster
    from roadseg_plugin.core.params import read_model_info
    from tests.plugin.conftest import write_road_geotiff

    meta = read_model_info(deepness_model)
    raster, _ = write_road_geotiff(tmp_path / "area.tif", size=150)
    result = segment_raster(raster, tmp_path / "prob.tif", deepness_model, device="cpu", backend="onnxruntime")
    assert (result.width, result.height, result.tile) == (150, 150, meta.tile)


def test_a_deepness_export_needs_a_file_to_write(tiny_checkpoint: Path) -> None:
    from roadseg_plugin.core.onnx_backend import export_onnx

    with pytest.raises(ValueError, match="needs a file"):
        export_onnx(tiny_checkpoint, deepness=True)
