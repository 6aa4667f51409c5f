"""`TrainConfig.validate`: every bad option or run folder is refused, named, before anything is written."""
import math

import pytest

from roadseg_plugin.core.errors import CheckpointError, OutputError, ParamError
from training.train import TrainConfig, train_model

TINY = dict(epochs=1, tile=32, infer_tile=64, overlap=16, batch_size=4, samples_per_epoch=4, base_channels=4,
            depth=2, workers=0, val_fraction=0.25, device="cpu")

BAD = [  # (option, value, expected message after "<option> <value>: ")
    ("batch_size", 0, "must be at least 1"),
    ("batch_size", 2.5, "must be a whole number"),
    ("lr", 0.0, "must be a finite number greater than 0"),
    ("lr", -1e-3, "must be a finite number greater than 0"),
    ("lr", math.nan, "must be a finite number greater than 0"),
    ("epochs", 0, "must be at least 1"),
    ("patience", 0, "must be at least 1"),
    ("samples_per_epoch", 0, "must be at least 1"),
    ("workers", -1, "must be at least 0"),
    ("base_channels", 0, "must be at least 1"),
    ("depth", 0, "must be at least 1"),
    ("max_minutes", 0.0, "must be a finite number greater than 0"),
    ("max_minutes", math.inf, "must be a finite number greater than 0"),
    ("scale_jitter", -0.1, "must be a finite number, 0 or more"),
    ("val_fraction", 0.0, "must lie strictly between 0 and 1"),
    ("val_fraction", 1.0, "must lie strictly between 0 and 1"),
    ("val_fraction", math.nan, "must lie strictly between 0 and 1"),
    ("gsd_m", -0.5, "must be a finite number greater than 0"),
    ("device", "gpu", "is not one of auto, cpu, cuda"),
    ("tile", 30, "must be a multiple of 4 for a depth-2 U-Net; e.g. 32"),
    ("infer_tile", 66, "must be a multiple of 4 for a depth-2 U-Net; e.g. 64"),
    ("overlap", 32, "must be less than half the infer_tile (64)"),
    ("overlap", -1, "must be at least 0"),
]


@pytest.mark.parametrize("name,value,problem", BAD, ids=[f"{n}={v}" for n, v, _ in BAD])
def test_bad_option_is_refused_before_anything_is_written(road_dataset, tmp_path, name, value, problem):
    cfg = TrainConfig(data=road_dataset, out=tmp_path / "run", **{**TINY, name: value})
    with pytest.raises(ParamError) as info:
        train_model(cfg)
    assert str(info.value).startswith(f"{name} {value}: {problem}")
    assert info.value.name == name and not (tmp_path / "run").exists()


def test_tile_message_names_the_depth_and_a_fix(road_dataset, tmp_path):
    with pytest.raises(ParamError, match=r"^tile 250: must be a multiple of 16 for a depth-4 U-Net; e\.g\. 256$"):
        TrainConfig(data=road_dataset, out=tmp_path / "run", tile=250).validate()


def test_fine_tuning_checks_tiles_against_the_start_models_depth(road_dataset, tmp_path, tiny_checkpoint):
    # tiny_checkpoint is depth 2: 40 is a multiple of 4 (fine), 250 is not, whatever `depth` says
    TrainConfig(data=road_dataset, out=tmp_path / "run", init=tiny_checkpoint, tile=40, infer_tile=64,
                overlap=16).validate()
    with pytest.raises(ParamError, match=r"^tile 250: must be a multiple of 4 for a depth-2 U-Net; e\.g\. 248"):
        TrainConfig(data=road_dataset, out=tmp_path / "run", init=tiny_checkpoint, tile=250).validate()
    with pytest.raises(CheckpointError, match="missing.pt: model file not found"):
        TrainConfig(data=road_dataset, out=tmp_path / "run", init=tmp_path / "missing.pt").validate()


@pytest.mark.parametrize("where", ["same", "inside", "symlink", "val"])
def test_run_folder_in_the_data_is_refused(road_dataset, tmp_path, where):
    val = None
    if where == "same":
        out = road_dataset
    elif where == "inside":
        out = road_dataset / "images" / "run"
    elif where == "symlink":  # a link that leads into the data is the data
        (tmp_path / "link").symlink_to(road_dataset / "masks")
        out = tmp_path / "link" / "run"
    else:
        val = tmp_path / "val"
        val.mkdir()
        out = val / "run"
    cfg = TrainConfig(data=road_dataset, val=val, out=out, **TINY)
    with pytest.raises(OutputError, match=r"the run folder is, or is inside, the (data|val) folder"):
        train_model(cfg)
    assert not (road_dataset / "images" / "run").exists() and not (road_dataset / "masks" / "run").exists()


def test_data_inside_the_run_folder_is_fine(road_dataset, tmp_path):
    TrainConfig(data=road_dataset, out=road_dataset.parent, **TINY).validate()


def test_resume_without_last_pt_is_refused(road_dataset, tmp_path):
    with pytest.raises(CheckpointError, match=r"run/last\.pt: not found, so there is no run to resume; drop --resume"):
        train_model(TrainConfig(data=road_dataset, out=tmp_path / "run", resume=True, **TINY))
    assert not (tmp_path / "run").exists()


def test_a_run_never_replaces_its_own_start_model(road_dataset, tmp_path, tiny_checkpoint):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(tiny_checkpoint.read_bytes())
    with pytest.raises(OutputError, match=r"best\.pt: is the start model \(--init\)"):
        TrainConfig(data=road_dataset, out=run, init=run / "best.pt", **TINY).validate()


def test_run_folder_that_is_a_file_is_refused(road_dataset, tmp_path):
    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        TrainConfig(data=road_dataset, out=tmp_path / "run" / "sub", **TINY).validate()


def test_a_good_config_passes_and_writes_nothing(road_dataset, tmp_path):
    TrainConfig(data=road_dataset, out=tmp_path / "run", **TINY).validate()
    TrainConfig(data=road_dataset, out=tmp_path / "run", samples_per_epoch=None, max_minutes=5.0).validate()
    assert not (tmp_path / "run").exists()
