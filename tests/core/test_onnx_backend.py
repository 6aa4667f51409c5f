"""ONNX export and the ONNX Runtime backend against the torch backend, with a tiny real model."""
from __future__ import annotations

import os

import numpy as np
import pytest

from roadseg_plugin.core.backends import DihedralTTA, OnnxRuntimeBackend, TorchBackend, load_backend
from roadseg_plugin.core.checkpoint import load_model
from roadseg_plugin.core.engine import segment_raster
from roadseg_plugin.core.errors import CheckpointError, OutputError
from roadseg_plugin.core.model_meta import read_onnx_meta
from roadseg_plugin.core.onnx_backend import checkpoint_digest, export_onnx
from tests.core.test_engine import contrast_checkpoint, read_out, scene, write_tif  # noqa: F401 (fixture)


def test_export_carries_the_metadata_and_is_cached_by_checkpoint_hash(tiny_checkpoint):
    first = export_onnx(tiny_checkpoint)
    assert first.parent == tiny_checkpoint.parent
    assert first.name == f"tiny.{checkpoint_digest(tiny_checkpoint)[:12]}.onnx"
    assert read_onnx_meta(first).to_dict() == load_model(tiny_checkpoint)[1].to_dict()
    stamp = first.stat().st_mtime_ns
    assert export_onnx(tiny_checkpoint) == first and first.stat().st_mtime_ns == stamp  # reused
    assert [p.name for p in tiny_checkpoint.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_export_to_a_chosen_file(tiny_checkpoint, tmp_path):
    out = export_onnx(tiny_checkpoint, tmp_path / "models" / "road.onnx")
    assert out == tmp_path / "models" / "road.onnx" and read_onnx_meta(out).tile == 64


def test_backends_agree_within_1e_3(tiny_checkpoint, contrast_checkpoint):  # noqa: F811
    batch = np.random.default_rng(0).normal(size=(3, 3, 64, 96)).astype(np.float32)  # dynamic H, W and N
    for checkpoint in (tiny_checkpoint, contrast_checkpoint):
        by_torch, by_ort = TorchBackend.load(checkpoint, "cpu"), OnnxRuntimeBackend(export_onnx(checkpoint))
        for tta in (False, True):
            expected = (DihedralTTA(by_torch) if tta else by_torch).predict(batch)
            got = (DihedralTTA(by_ort) if tta else by_ort).predict(batch)
            assert got.shape == expected.shape == (3, 64, 96)
            np.testing.assert_allclose(got, expected, atol=1e-3)


def test_engine_outputs_agree_across_backends(tmp_path, contrast_checkpoint):  # noqa: F811
    src = write_tif(tmp_path / "in.tif", scene(100, 130))
    by_torch = segment_raster(src, tmp_path / "t.tif", contrast_checkpoint, backend="torch")
    by_ort = segment_raster(src, tmp_path / "o.tif", contrast_checkpoint, backend="onnxruntime")
    assert (by_torch.backend, by_ort.backend) == ("torch", "onnxruntime")
    a, b = read_out(by_torch.path)[0].astype(int), read_out(by_ort.path)[0].astype(int)
    assert np.abs(a - b).max() <= 1  # 1e-3 in probability, at most one uint8 rounding step


def test_auto_backend_on_cpu_is_onnxruntime_and_an_onnx_file_is_a_model(tmp_path, tiny_checkpoint):
    assert load_backend(tiny_checkpoint, "cpu").name == "onnxruntime"
    onnx_file = export_onnx(tiny_checkpoint, tmp_path / "m.onnx")
    src = write_tif(tmp_path / "in.tif", scene(50, 60))
    result = segment_raster(src, tmp_path / "out.tif", onnx_file, tta=True)
    assert result.backend == "onnxruntime" and result.tile == 64
    with pytest.raises(CheckpointError, match="only on the onnxruntime backend"):
        load_backend(onnx_file, "cpu", "torch")


def test_damaged_files_are_checkpoint_errors(tmp_path, tiny_checkpoint):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x01garbage")
    with pytest.raises(CheckpointError, match="junk.onnx"):
        read_onnx_meta(junk)
    bare = tmp_path / "bare.onnx"
    import onnx

    graph = onnx.load(str(export_onnx(tiny_checkpoint)))
    del graph.metadata_props[:]
    onnx.save(graph, str(bare))
    with pytest.raises(CheckpointError, match="no RoadSeg metadata"):
        read_onnx_meta(bare)
    with pytest.raises(CheckpointError, match="not found"):
        export_onnx(tmp_path / "missing.pt")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_read_only_model_folder_falls_back_to_the_user_cache(tmp_path, tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = tiny_checkpoint.parent / "ro"
    folder.mkdir()
    model = folder / "tiny.pt"
    model.write_bytes(tiny_checkpoint.read_bytes())
    folder.chmod(0o555)
    try:
        out = export_onnx(model)
    finally:
        folder.chmod(0o755)
    assert out.parent == tmp_path / "cache" / "roadseg"


def test_unwritable_output_is_an_output_error(tmp_path, tiny_checkpoint):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="m.onnx: cannot write here"):
        export_onnx(tiny_checkpoint, tmp_path / "file" / "m.onnx")
    assert (tmp_path / "file").read_text() == "x" and not list(tmp_path.glob("**/*.tmp"))
