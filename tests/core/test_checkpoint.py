
import pytest
import torch

from roadseg_plugin.core.checkpoint import ModelMeta, load_model, read_checkpoint, save_checkpoint
from roadseg_plugin.core.errors import CheckpointError
from roadseg_plugin.core.unet import build_model


def test_round_trip_keeps_weights_and_metadata(tmp_path, tiny_checkpoint):
    model, meta = load_model(tiny_checkpoint)
    assert meta.tile == 64 and meta.overlap == 16 and meta.bands == [1, 2, 3]
    meta.threshold, meta.val_metrics = 0.37, {"iou": 0.5}
    path = tmp_path / "again.pt"
    save_checkpoint(path, model, meta)
    model2, meta2 = load_model(path)
    assert meta2.threshold == 0.37 and meta2.val_metrics == {"iou": 0.5}
    assert meta2.torch_version == torch.__version__ and meta2.created
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert not model2.training


def test_file_loads_with_weights_only(tiny_checkpoint):
    payload = torch.load(tiny_checkpoint, weights_only=True)
    assert payload["format"] == "roadseg-checkpoint"
    assert set(payload["meta"]) >= {"arch", "arch_config", "bands", "mean", "std", "input_scale", "gsd_m",
                                    "tile", "threshold", "val_metrics", "data", "torch_version", "created"}


def test_write_is_atomic_no_temp_left(tmp_path, tiny_checkpoint):
    save_checkpoint(tmp_path / "x.pt", *load_model(tiny_checkpoint))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.pt", "x.pt"]


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pt: model file not found"):
        load_model(tmp_path / "nope.pt")


def test_truncated_file(tmp_path, tiny_checkpoint):
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(tiny_checkpoint.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match=r"truncated\.pt: file is truncated or damaged"):
        load_model(bad)


def test_file_of_another_kind(tmp_path):
    bad = tmp_path / "notes.pt"
    bad.write_text("this is not a model")
    with pytest.raises(CheckpointError, match=r"notes\.pt: not a PyTorch checkpoint"):
        load_model(bad)


def test_plain_torch_file_is_not_a_roadseg_checkpoint(tmp_path):
    bad = tmp_path / "weights.pt"
    torch.save({"a": torch.zeros(2)}, bad)
    with pytest.raises(CheckpointError, match="not a RoadSeg checkpoint"):
        load_model(bad)


class Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickle_payload_is_refused(tmp_path, capsys):
    bad = tmp_path / "evil.pt"
    torch.save({"format": "roadseg-checkpoint", "x": Payload()}, bad)
    with pytest.raises(CheckpointError, match=r"evil\.pt: the file holds Python code .* and was not loaded"):
        load_model(bad)
    assert "pickled code ran" not in capsys.readouterr().out


def test_state_dict_not_matching_architecture(tmp_path, tiny_checkpoint):
    model, meta = load_model(tiny_checkpoint)
    meta.arch_config = {**meta.arch_config, "base_channels": 8}
    path = tmp_path / "mismatch.pt"
    save_checkpoint(path, model, meta)
    with pytest.raises(CheckpointError, match=r"mismatch\.pt: weights do not match the architecture"):
        load_model(path)


def test_missing_metadata_key_is_named(tmp_path):
    path = tmp_path / "nometa.pt"
    model = build_model("unet", base_channels=4, depth=2)
    torch.save({"format": "roadseg-checkpoint", "state_dict": model.state_dict(), "meta": {"arch": "unet"}}, path)
    with pytest.raises(CheckpointError, match="'arch_config' is missing"):
        load_model(path)


def test_extra_training_state_round_trips(tmp_path, tiny_checkpoint):
    model, meta = load_model(tiny_checkpoint)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(1, 3, 16, 16)).mean().backward()
    opt.step()
    save_checkpoint(tmp_path / "last.pt", model, meta, optimizer=opt.state_dict(), epoch=3,
                    history=[{"epoch": 1, "val_loss": 0.5}])
    state = read_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 3 and state["history"][0]["val_loss"] == 0.5
    torch.optim.AdamW(model.parameters()).load_state_dict(state["optimizer"])


def test_meta_defaults_are_consistent():
    meta = ModelMeta()
    assert meta.in_channels == len(meta.mean) == len(meta.std)


def test_saved_checkpoints_get_ordinary_file_permissions(tmp_path):
    import os

    from roadseg_plugin.core.checkpoint import ModelMeta, save_checkpoint
    from roadseg_plugin.core.unet import build_model

    old = os.umask(0o022)
    os.umask(old)
    path = tmp_path / "m.pt"
    save_checkpoint(path, build_model("unet", in_channels=3, base_channels=4, depth=2), ModelMeta(tile=64))
    assert path.stat().st_mode & 0o777 == 0o666 & ~old  # not mkstemp's owner-only 0600
