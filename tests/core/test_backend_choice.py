"""Backend "auto" on CPU: the measured choice between a model's fp32 and int8 ONNX files, the
cache that keeps it per CPU and model, and what the CPU is (all on real ONNX models)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from roadseg_plugin.core.backends import OnnxRuntimeBackend, load_backend, physical_cores
from roadseg_plugin.core.backends.choice import CACHE_NAME, measure, pick
from roadseg_plugin.core.backends.cpu import CPUINFO, _numpy_features, cpu_features, cpu_name, describe_cpu
from roadseg_plugin.core.onnx_backend import checkpoint_digest, export_onnx
from roadseg_plugin.core.quantize import quantize_model
from tests.core.test_engine import scene, write_tif


@pytest.fixture
def cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The choice file in a private user cache folder (away from the model's folder)."""
    folder = tmp_path_factory.mktemp("user-cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(folder))
    return folder / "roadseg" / CACHE_NAME


@pytest.fixture
def imagery(tmp_path: Path) -> Path:
    folder = tmp_path / "calibration"
    folder.mkdir()
    for i in range(2):
        write_tif(folder / f"scene{i}.tif", scene(160, 200, seed=i))
    return folder


@pytest.fixture
def int8_file(tiny_checkpoint: Path, imagery: Path) -> Path:
    return quantize_model(tiny_checkpoint, imagery, crops=4, form="qdq-per-channel")


def _entries(cache: Path) -> dict:
    return json.loads(cache.read_text())["entries"]


def test_auto_measures_both_files_on_first_use_and_caches_the_faster(tiny_checkpoint, int8_file, cache):
    beside = set(tiny_checkpoint.parent.iterdir())
    backend = load_backend(tiny_checkpoint, "cpu")
    (entry,) = _entries(cache).values()
    speeds = entry["tiles_per_s"]
    assert set(speeds) == {"onnxruntime", "onnxruntime-int8"} and min(speeds.values()) > 0
    assert backend.name == entry["chosen"] == pick(speeds)
    assert entry["files"] == {"onnxruntime": checkpoint_digest(export_onnx(tiny_checkpoint))[:16],
                              "onnxruntime-int8": checkpoint_digest(int8_file)[:16]}
    assert entry["signature"]["cpu"] == cpu_name() and entry["signature"]["threads"] == physical_cores()
    assert set(tiny_checkpoint.parent.iterdir()) == beside, "nothing may be written beside the user's model"


def test_the_cached_choice_is_used_without_measuring_again(tiny_checkpoint, int8_file, cache):
    load_backend(tiny_checkpoint, "cpu")
    data = json.loads(cache.read_text())
    (key,) = data["entries"]
    # Plant the other answer: only a choice read from the cache can return it.
    other = {"onnxruntime": "onnxruntime-int8", "onnxruntime-int8": "onnxruntime"}[data["entries"][key]["chosen"]]
    data["entries"][key]["chosen"] = other
    cache.write_text(json.dumps(data))
    stamp = cache.stat().st_mtime_ns
    assert load_backend(tiny_checkpoint, "cpu").name == other
    assert cache.stat().st_mtime_ns == stamp


def test_another_int8_file_of_the_same_checkpoint_is_measured_anew(tiny_checkpoint, int8_file, imagery, cache):
    load_backend(tiny_checkpoint, "cpu")
    quantize_model(tiny_checkpoint, imagery, crops=4, form="qoperator-per-channel")  # same name, new contents
    load_backend(tiny_checkpoint, "cpu")
    entries = list(_entries(cache).values())
    assert len(entries) == 2
    assert entries[0]["files"]["onnxruntime"] == entries[1]["files"]["onnxruntime"]
    assert entries[0]["files"]["onnxruntime-int8"] != entries[1]["files"]["onnxruntime-int8"]


def test_a_damaged_or_unwritable_cache_only_means_measuring_again(tiny_checkpoint, int8_file, cache):
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    assert load_backend(tiny_checkpoint, "cpu").name in ("onnxruntime", "onnxruntime-int8")
    assert len(_entries(cache)) == 1  # rewritten whole
    cache.unlink()
    cache.mkdir()  # a folder where the file should be: cannot be written
    backend = load_backend(tiny_checkpoint, "cpu")
    assert backend.name in ("onnxruntime", "onnxruntime-int8") and cache.is_dir()


def test_the_measurement_ranks_a_heavier_model_slower(tmp_path):
    import torch

    from roadseg_plugin.core.checkpoint import ModelMeta, save_checkpoint
    from roadseg_plugin.core.unet import build_model

    loaded = {}
    for name, width in (("light", 4), ("heavy", 48)):
        torch.manual_seed(0)
        config = {"in_channels": 3, "base_channels": width, "depth": 2}
        path = tmp_path / f"{name}.pt"
        save_checkpoint(path, build_model("unet", **config), ModelMeta(arch_config=config, tile=128, overlap=16))
        loaded[name] = OnnxRuntimeBackend.load(path, "cpu")
    speeds = measure(loaded)
    assert speeds["light"] > 3 * speeds["heavy"]  # 140x the multiply-adds
    assert pick(speeds) == "light"


def test_int8_must_be_clearly_faster_than_fp32_to_be_chosen():
    assert pick({"onnxruntime": 10.0, "onnxruntime-int8": 10.2}) == "onnxruntime"
    assert pick({"onnxruntime": 10.0, "onnxruntime-int8": 10.5}) == "onnxruntime-int8"
    assert pick({"onnxruntime": 10.0, "onnxruntime-int8": 4.0}) == "onnxruntime"


@pytest.mark.skipif(not CPUINFO.is_file(), reason="no /proc/cpuinfo on this platform")
def test_cpu_features_agree_with_numpys_own_dispatch_table():
    features, found = cpu_features(), _numpy_features()
    assert features["AVX2"] == found["AVX2"] and features["AVX-512"] == found["AVX512_SKX"]
    assert features["AVX-512 VNNI"] == found["AVX512VNNI"]
    assert describe_cpu().startswith(cpu_name()) and "AVX2 " in describe_cpu()


def test_measure_runs_the_models_on_their_own_tile_size(tiny_checkpoint):
    fp32 = OnnxRuntimeBackend.load(tiny_checkpoint, "cpu")
    speeds = measure({"onnxruntime": fp32}, batch=2, rounds=2)
    assert set(speeds) == {"onnxruntime"} and np.isfinite(speeds["onnxruntime"]) and speeds["onnxruntime"] > 0
