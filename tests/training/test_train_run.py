"""Real training runs on tiny generated data: every RUN file, resume, fine-tuning, CLI."""
import csv
import json

import imageio.v3 as iio
import pytest

from roadseg_plugin.core.checkpoint import load_model, read_checkpoint
from roadseg_plugin.core.errors import CheckpointError, DatasetError
from training.cli import main
from training.train import TrainConfig, train_model

TINY = dict(epochs=2, tile=32, infer_tile=64, overlap=16, batch_size=4, samples_per_epoch=8, base_channels=4,
            depth=2, workers=0, val_fraction=0.25, device="cpu")


def rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def run_dir(tmp_path, road_dataset):
    out = tmp_path / "run"
    train_model(TrainConfig(data=road_dataset, out=out, **TINY))
    return out


def test_two_epochs_write_every_run_file(run_dir):
    for name in ("best.pt", "last.pt", "history.csv", "loss.png", "predictions.gif", "metrics.json", ):
        assert (run_dir / name).stat().st_size > 0, name
    history = rows(run_dir / "history.csv")
    assert [int(r["epoch"]) for r in history] == [1, 2]
    assert {"train_loss", "val_loss", "val_iou", "val_relaxed_f1", "val_threshold", "lr"} <= set(history[0])
    assert iio.imread(run_dir / "predictions.gif", index=None).shape[0] == 2  # one frame per epoch
    assert iio.imread(run_dir / "loss.png").shape[2] in (3, 4)
    model, meta = load_model(run_dir / "best.pt")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert meta.val_metrics == metrics and 0 < meta.threshold < 1
    assert meta.tile == 64 and meta.extra["train_tile"] == 32 and len(meta.mean) == 3
    assert read_checkpoint(run_dir / "last.pt")["epoch"] == 2


def test_resume_continues_from_the_last_epoch(run_dir, road_dataset):
    train_model(TrainConfig(data=road_dataset, out=run_dir, resume=True, **{**TINY, "epochs": 3}))
    history = rows(run_dir / "history.csv")
    assert [int(r["epoch"]) for r in history] == [1, 2, 3]
    assert iio.imread(run_dir / "predictions.gif", index=None).shape[0] == 3
    assert read_checkpoint(run_dir / "last.pt")["epoch"] == 3


def test_init_fine_tunes_from_a_checkpoint(run_dir, road_dataset, tmp_path):
    out = tmp_path / "ft"
    trainer = train_model(TrainConfig(data=road_dataset, out=out, init=run_dir / "best.pt",
                                      **{**TINY, "epochs": 1, "base_channels": 99}))
    _, meta = load_model(out / "best.pt")
    assert meta.arch_config["base_channels"] == 4  # architecture comes from the start model
    assert meta.extra["init"].endswith("best.pt") and trainer.epoch == 1


def test_cancel_stops_after_the_current_batch(road_dataset, tmp_path):
    calls = []
    trainer = train_model(TrainConfig(data=road_dataset, out=tmp_path / "c", is_cancelled=lambda: True,
                                      on_progress=calls.append, **TINY))
    assert trainer.epoch == 0 and len(calls) == 1 and not (tmp_path / "c" / "history.csv").exists()


def test_cli_train_and_evaluate(road_dataset, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["train", "--data", str(road_dataset), "--out", str(out), "--epochs", "1", "--tile", "32",
                 "--infer-tile", "64", "--overlap", "16", "--batch-size", "4", "--samples-per-epoch", "4",
                 "--base-channels", "4", "--depth", "2", "--workers", "0", "--device", "cpu"]) == 0
    assert (out / "train.log").read_text().strip()
    assert main(["evaluate", "--model", str(out / "best.pt"), "--data", str(road_dataset),
                 "--json", str(tmp_path / "e.json"), "--device", "cpu"]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["tiles"] == 4 and len(result["per_tile"]) == 4
    assert "rel_f1" in capsys.readouterr().out and set(result["per_tile"][0]) >= {"name", "relaxed_f1", "apls"}


def test_cli_bad_data_exits_2_with_one_line(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "missing/images" in err[0]


def log_lines(run):
    return (run / "train.log").read_text().strip().splitlines()


def test_train_log_ends_with_done_and_the_files(run_dir):
    last = log_lines(run_dir)[-1]
    assert "INFO done: 2 epoch(s); wrote best.pt, last.pt, history.csv" in last


def test_a_failed_run_logs_the_failure_not_success(run_dir, road_dataset):
    before = (run_dir / "last.pt").read_bytes()
    # last.pt of a base-4 model cannot continue a base-8 run: refused with the file named
    with pytest.raises(CheckpointError, match=r"last\.pt: does not fit this run"):
        train_model(TrainConfig(data=road_dataset, out=run_dir, resume=True, **{**TINY, "base_channels": 8}))
    lines = log_lines(run_dir)
    assert "ERROR failed: " in lines[-1] and "last.pt: does not fit this run" in lines[-1]
    assert "kept: best.pt, last.pt" in lines[-1] and "done" not in lines[-1]
    assert (run_dir / "last.pt").read_bytes() == before


class InterruptAt:
    """Ctrl-C arriving during epoch `epoch`'s callbacks, i.e. after epoch - 1 was saved."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_begin(self, trainer):
        pass

    def on_epoch_end(self, trainer, logs):
        if logs["epoch"] == self.epoch:
            raise KeyboardInterrupt

    def on_train_end(self, trainer):
        pass


def test_interrupt_keeps_the_last_epoch_and_says_so(road_dataset, tmp_path):
    out = tmp_path / "i"
    with pytest.raises(KeyboardInterrupt):
        train_model(TrainConfig(data=road_dataset, out=out, callbacks=[InterruptAt(2)], **{**TINY, "epochs": 5}))
    assert read_checkpoint(out / "last.pt")["epoch"] == 1 and (out / "best.pt").is_file()
    last = log_lines(out)[-1]
    assert "WARNING interrupted; last.pt holds epoch 1; kept: best.pt, last.pt" in last
    assert last.endswith("; --resume continues")


def test_cancel_is_logged_as_cancelled(road_dataset, tmp_path):
    train_model(TrainConfig(data=road_dataset, out=tmp_path / "c", is_cancelled=lambda: True, **TINY))
    assert log_lines(tmp_path / "c")[-1].endswith("WARNING cancelled; kept: no model")


def test_bad_data_leaves_no_run_folder_and_skips_reach_train_log(road_dataset, tmp_path):
    (road_dataset / "images" / "tile3.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"images/tile3\.png: cannot be read"):
        train_model(TrainConfig(data=road_dataset, out=tmp_path / "bad", **TINY))
    assert not (tmp_path / "bad").exists()
    with pytest.warns(UserWarning, match="tile3"):
        train_model(TrainConfig(data=road_dataset, out=tmp_path / "skip", skip_bad=True, **{**TINY, "epochs": 1}))
    text = (tmp_path / "skip" / "train.log").read_text()
    assert "WARNING skipping: " in text and "tile3.png" in text  # logged before the run folder existed
