import json
from types import SimpleNamespace

import pytest
import torch

from roadseg_plugin.core.checkpoint import ModelMeta, load_model
from roadseg_plugin.core.unet import build_model
from training.callbacks import EarlyStopping, ModelCheckpoint


def fake_trainer(monitor: str = "val_loss", mode: str = "min"):
    config = {"in_channels": 3, "base_channels": 4, "depth": 2}
    return SimpleNamespace(stop_training=False, model=build_model("unet", **config),
                           meta=ModelMeta(arch_config=config), monitor=monitor, mode=mode)


def run(callback, trainer, losses, key="val_loss"):
    callback.on_train_begin(trainer)
    for epoch, loss in enumerate(losses, start=1):
        callback.on_epoch_end(trainer, {"epoch": epoch, key: loss, "val_iou": 1 - loss, "val_threshold": 0.4})
        if trainer.stop_training:  # as the trainer does: no epoch after a stop
            return epoch
    return None


def test_early_stopping_waits_patience_epochs_after_the_best():
    trainer = fake_trainer()
    es = EarlyStopping(patience=3)
    assert run(es, trainer, [1.0, 0.8, 0.9, 0.85, 0.81, 0.7]) == 5
    assert es.stopped_epoch == 5 and es.tracker.best == 0.8


def test_early_stopping_resets_on_improvement_and_respects_min_delta():
    trainer = fake_trainer()
    assert run(EarlyStopping(patience=2), trainer, [1.0, 0.9, 0.95, 0.8, 0.85, 0.79]) is None
    trainer = fake_trainer()
    # improvements smaller than min_delta do not count
    assert run(EarlyStopping(patience=2, min_delta=0.05), trainer, [1.0, 0.98, 0.97]) == 3


def test_early_stopping_max_mode():
    trainer = fake_trainer()
    assert run(EarlyStopping(monitor="val_iou", mode="max", patience=1), trainer, [0.5, 0.4, 0.45]) == 3


def test_missing_monitored_key_is_explicit():
    es, trainer = EarlyStopping(), fake_trainer()
    es.on_train_begin(trainer)
    with pytest.raises(KeyError, match="val_loss"):
        es.on_epoch_end(trainer, {"epoch": 1})


def test_callbacks_follow_the_trainers_monitor_unless_given_their_own():
    trainer = fake_trainer("val_iou", "max")
    assert run(EarlyStopping(patience=1), trainer, [0.5, 0.4, 0.45]) == 3  # val_iou 0.5, 0.6, 0.55: max wins
    own = EarlyStopping(monitor="val_loss", patience=1)  # its own monitor wins; loss -> min
    own.on_train_begin(trainer)
    assert (own.tracker.monitor, own.tracker.mode) == ("val_loss", "min")


def test_model_checkpoint_saves_only_improvements(tmp_path):
    trainer = fake_trainer()
    ckpt = ModelCheckpoint(tmp_path / "best.pt")
    ckpt.on_train_begin(trainer)
    saved = []
    for epoch, loss in enumerate([1.0, 0.7, 0.9, 0.6, 0.65], start=1):
        with torch.no_grad():
            trainer.model.head.bias.fill_(epoch)  # marks which epoch's weights were saved
        ckpt.on_epoch_end(trainer, {"epoch": epoch, "val_loss": loss, "val_iou": 0.1 * epoch,
                                    "val_threshold": 0.3})
        saved.append(load_model(tmp_path / "best.pt")[0].head.bias.item())
    assert saved == [1, 2, 2, 4, 4]
    _, meta = load_model(tmp_path / "best.pt")
    assert meta.threshold == 0.3 and meta.val_metrics["epoch"] == 4
    assert json.loads((tmp_path / "metrics.json").read_text())["iou"] == pytest.approx(0.4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "metrics.json"]  # no temp files
    assert ckpt.best_epoch == 4


def test_callback_state_round_trips_for_resume():
    es = EarlyStopping(patience=3)
    run(es, fake_trainer(), [1.0, 0.5, 0.6])
    again = EarlyStopping(patience=3)
    again.load_state_dict(es.state_dict())
    assert again.tracker.best == 0.5 and again.wait == 1
