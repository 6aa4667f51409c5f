"""core/params.py: one default, unit and check per option; model metadata read without torch."""
from __future__ import annotations

import math
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from roadseg_plugin.core.errors import CheckpointError, ParamError
from roadseg_plugin.core.model_meta import ModelMeta
from roadseg_plugin.core.params import (
    BUNDLED_MODEL,
    InferenceParams,
    VectoriseParams,
    check_threshold,
    describe,
    model_file,
    read_model_info,
)

ROOT = Path(__file__).resolve().parents[2]


def test_every_option_has_help_and_a_label():
    for params_type in (InferenceParams, VectoriseParams):
        for f in fields(params_type):
            info = describe(params_type, f.name)
            assert info["help"] and info["label"], f.name
            assert info["default"] == f.default


def test_defaults():
    params, vectorise = InferenceParams(), VectoriseParams()
    assert params.model_path == BUNDLED_MODEL and params.threshold is None and params.device == "auto"
    assert (vectorise.min_length, vectorise.spur_length, vectorise.gap, vectorise.tolerance) == (20, 10, 15, 1)


@pytest.mark.parametrize("changes, name", [
    ({"threshold": 1.5}, "threshold"), ({"threshold": -1}, "threshold"), ({"threshold": 0.0}, "threshold"),
    ({"threshold": math.nan}, "threshold"), ({"batch_size": 0}, "batch_size"), ({"batch_size": -1}, "batch_size"),
    ({"tile": 0}, "tile"), ({"tile": 12.5}, "tile"), ({"overlap": -2}, "overlap"), ({"gsd": 0}, "gsd"),
    ({"device": "tpu"}, "device"), ({"backend": "tensorrt"}, "backend"), ({"bands": (0, 1, 2)}, "bands"),
    ({"bands": ()}, "bands"), ({"extent": (1, 1, 0, 2)}, "extent"), ({"extent": (1, 2, 3)}, "extent"),
    ({"tile": 64, "overlap": 32}, "overlap"),
])
def test_bad_inference_values_are_refused_naming_the_option(changes, name):
    with pytest.raises(ParamError) as caught:
        InferenceParams(**changes)
    assert caught.value.name == name and str(caught.value).startswith(name)


@pytest.mark.parametrize("name", ["min_length", "spur_length", "gap", "tolerance"])
def test_negative_lengths_are_refused(name):
    with pytest.raises(ParamError, match=f"^{name} -1"):
        VectoriseParams(**{name: -1})


def test_values_are_normalised():
    params = InferenceParams(model=Path("m.pt"), bands=[3, 2, 1], extent=[0, 0, 10, 10], threshold=0.3)
    assert params.model == "m.pt" and params.bands == (3, 2, 1) and params.extent == (0.0, 0.0, 10.0, 10.0)
    assert VectoriseParams(format="GPKG").format == "gpkg"
    with pytest.raises(ParamError, match="format xyz"):
        VectoriseParams(format="xyz")
    assert check_threshold(None) is None


def test_resolve_refuses_tiles_the_model_cannot_take():
    meta = ModelMeta(arch_config={"depth": 4}, tile=256, overlap=32)
    InferenceParams(tile=512).resolve(meta)
    with pytest.raises(ParamError, match="tile 100: must be a multiple of 16 for the model m.pt"):
        InferenceParams(model="m.pt", tile=100).resolve(meta)
    with pytest.raises(ParamError, match="bands 1,2: 2 band"):
        InferenceParams(bands=(1, 2)).resolve(meta)


def test_resolve_gives_the_models_values_when_unset_and_the_users_when_set():
    meta = ModelMeta(arch_config={"depth": 3}, tile=256, overlap=32, threshold=0.42)
    unset = InferenceParams().resolve(meta)
    assert (unset.model, unset.tile, unset.overlap, unset.threshold, unset.depth) == (BUNDLED_MODEL, 256, 32, 0.42, 3)
    assert (unset.batch_for("cpu"), unset.batch_for("cuda:0"), unset.batch_for("auto")) == (2, 16, 2)
    assert unset.meta is meta and unset.tags == {"ROADSEG_VALUES": "road probability x 255",
                                                 "ROADSEG_THRESHOLD": "0.42"}
    given = InferenceParams(model="m.pt", tile=128, overlap=0, threshold=0.3, batch_size=5, binary=True,
                            bands=(3, 2, 1)).resolve(meta)
    assert (given.model, given.tile, given.overlap, given.threshold) == (Path("m.pt"), 128, 0, 0.3)
    assert (given.batch_for("cpu"), given.batch_for("cuda")) == (5, 5) and given.band_list == [3, 2, 1]
    assert given.tags == {"ROADSEG_VALUES": "binary road mask (1 road, 0 background)", "ROADSEG_THRESHOLD": "0.3"}


def test_overlap_of_half_the_tile_is_refused_by_one_rule_everywhere():
    """Options, their resolution against a model, a model's own metadata and the tile grid all
    refuse it with `limits.check_overlap`'s words."""
    from roadseg_plugin.core.tiling import TileGrid

    words = "overlap 32: must be less than half the tile (64)"
    with pytest.raises(ParamError, match=re.escape(words)):
        InferenceParams(tile=64, overlap=32)
    with pytest.raises(ParamError, match=re.escape(words)):
        InferenceParams(overlap=32).resolve(ModelMeta(arch_config={"depth": 2}, tile=64, overlap=8))
    with pytest.raises(ParamError, match=re.escape(words)):
        InferenceParams(tile=64).resolve(ModelMeta(arch_config={"depth": 2}, tile=128, overlap=32))
    with pytest.raises(ParamError, match=re.escape(words)):
        TileGrid(100, 100, 64, 32)
    data = {**ModelMeta(arch_config={"depth": 2}, tile=64, overlap=32).to_dict()}
    with pytest.raises(CheckpointError, match=re.escape("metadata key 'overlap' (32) must be less than half the tile "
                                                        "(64)")):
        ModelMeta.from_dict(data, "m.pt")


def test_no_model_means_the_bundled_model_in_one_way():
    assert model_file(None) == model_file("") == InferenceParams(model="").model_path == BUNDLED_MODEL
    assert model_file(Path("a/m.pt")) == model_file("a/m.pt") == Path("a/m.pt")


def test_a_segment_run_settles_the_vectorisers_threshold():
    settings = InferenceParams().resolve(ModelMeta(threshold=0.42))
    assert VectoriseParams().for_run(settings).threshold == 0.42
    assert VectoriseParams(threshold=0.42, gap=3).for_run(settings) == VectoriseParams(threshold=0.42, gap=3)
    with pytest.raises(ParamError, match="threshold 0.3: is set for the road lines but the run's threshold is 0.42"):
        VectoriseParams(threshold=0.3).for_run(settings)
    with pytest.raises(ParamError, match="^threshold 1.5"):
        VectoriseParams(threshold=1.5)
    assert "threshold" not in VectoriseParams(threshold=0.42).kwargs()


def test_bundled_model_info_is_read_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "from roadseg_plugin.core.params import read_model_info\n"
            "meta = read_model_info(None); print(meta.tile, meta.depth, meta.in_channels)")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["512", "4", "3"]


def test_params_module_imports_nothing_heavy():
    code = ("import sys; import roadseg_plugin.core.params, roadseg_plugin.core.model_meta\n"
            "print([m for m in ('torch', 'scipy', 'rasterio', 'qgis', 'numpy') if m in sys.modules])")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stdout + run.stderr


def test_onnx_and_checkpoint_metadata_agree(tmp_path, tiny_checkpoint):
    from roadseg_plugin.core.onnx_backend import export_onnx

    onnx = export_onnx(tiny_checkpoint, tmp_path / "tiny.onnx")
    assert read_model_info(onnx).to_dict() == read_model_info(tiny_checkpoint).to_dict()


@pytest.mark.parametrize("key, value, words", [
    ("tile", "256", "'tile' must be a whole number"), ("threshold", None, "'threshold' must be a number"),
    ("std", [0.0, 0.25, 0.25], "'std' must be positive"), ("bands", [1, 2], "'mean' must hold one number per band"),
    ("tile", 66, "'tile' \\(66\\) must be a multiple of 4"),
])
def test_bad_metadata_types_name_the_key(tmp_path, key, value, words):
    import torch

    from roadseg_plugin.core.checkpoint import save_checkpoint
    from roadseg_plugin.core.unet import build_model

    config = {"in_channels": 3, "base_channels": 4, "depth": 2}
    meta = ModelMeta(arch_config=config, tile=64, overlap=16)
    path = tmp_path / "edited.pt"
    save_checkpoint(path, build_model("unet", **config), meta)
    payload = torch.load(path, weights_only=True)
    payload["meta"][key] = value
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=rf"edited\.pt: metadata key {words}"):
        read_model_info(path)
