"""Fine-tuning within a training time: the step schedule, the plan from the start model's
figures, the split by area, keep-or-revert on pooled figures, progress and cancel."""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.training.test_finetune import drawn, named_tile
from training.finetune import FinetuneConfig, _decide, finetune_from_lines, plan
from training.finetune_data import MAX_VAL_SHARE, MIN_SIDE_SHARE, pooled_figures, road_px, split_by_area
from training.schedule import FINAL, BudgetSchedule


def schedule(minutes: float = 1.0, first_plan: int = 100) -> BudgetSchedule:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return BudgetSchedule(optimizer, 1e-3, minutes, first_plan=first_plan)


def lr_of(s: BudgetSchedule) -> float:
    return s.optimizer.param_groups[0]["lr"]


def test_schedule_warms_up_then_decays_by_step_to_its_floor():
    s = schedule(first_plan=100)
    lrs = []
    for _ in range(100):
        lrs.append(lr_of(s))
        s.step()
    assert lrs[0] == pytest.approx(1e-3 / 5)  # 5 warm-up steps
    assert max(lrs) == pytest.approx(1e-3) and int(np.argmax(lrs)) == 4
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False))  # then only down
    assert lr_of(s) == pytest.approx(1e-3 * FINAL)  # the planned last step reaches the floor


def test_plan_fits_the_steps_into_the_time_left():
    s = schedule(minutes=1.0)
    for _ in range(10):
        s.step()
    s.plan(seconds_per_step=0.5, round_overhead_s=2.0, steps_per_round=10)  # 7 s a round, < 60 s left
    rounds = math.floor(s.remaining / 7.0)
    assert s.planned == 10 + rounds * 10 and 60 <= s.planned <= 90
    assert not s.finished(next_round_s=7.0)
    s.plan(seconds_per_step=30.0, round_overhead_s=0.0, steps_per_round=10)  # the machine slowed down
    assert s.planned == 10 and s.finished(next_round_s=300.0)


def test_schedule_state_survives_a_restart():
    s = schedule()
    for _ in range(7):
        s.step()
    state = s.state_dict()
    other = schedule()
    other.load_state_dict(state)
    assert other.steps_done == 7 and lr_of(other) == pytest.approx(lr_of(s)) and other.elapsed >= state["spent"]


def test_plan_decides_from_the_start_model_and_the_data():
    cfg = FinetuneConfig(rasters=[], lines=None, out=Path("x"))
    good = plan(cfg, {"iou": 0.6}, train_road=10_000, tile_sides=[512, 512], device="cpu", depth=4)
    assert good.freeze_encoder and good.lr == 2e-4 and good.crop == 256 and good.batch_size == 8
    new = plan(cfg, {"iou": 0.1}, train_road=10_000, tile_sides=[180, 180, 181], device="cpu", depth=4)
    assert not new.freeze_encoder and new.lr > good.lr and new.crop == 176  # small tiles: a crop that fits
    assert new.replay_share < good.replay_share and "unlike the start model's" in new.reasons[0]
    some = plan(cfg, {"iou": 0.3}, train_road=10_000, tile_sides=[512], device="cuda", depth=4)
    assert not some.freeze_encoder and good.lr < some.lr < new.lr and some.batch_size == 16
    mine = plan(FinetuneConfig(rasters=[], lines=None, out=Path("x"), lr=0.01, freeze_encoder=False, crop=64),
                {"iou": 0.9}, 10, [512], "cpu", 4)
    assert (mine.lr, mine.freeze_encoder, mine.crop) == (0.01, False, 64)  # the user's choice wins


def test_split_keeps_enough_road_on_both_sides():
    tiles = [named_tile(f"{i:02d}_s{i}_00000_00000") for i in range(6)]
    tiles[0].mask[:] = True  # one raster holds almost all the road: it never goes to validation alone
    train, val = split_by_area(tiles, 0.25)
    share = road_px(val) / road_px(tiles)
    assert tiles[0] not in val and val and train
    many = [named_tile(f"{i:02d}_s{i}_00000_00000") for i in range(8)]
    train, val = split_by_area(many, 0.25)
    assert len(val) == 2 and MIN_SIDE_SHARE <= road_px(val) / road_px(many) <= MAX_VAL_SHARE
    assert share < 0.5


def test_keep_or_revert_uses_pooled_figures_not_one_tile():
    # two tiles: the tuned model gains APLS on one nearly empty tile but loses IoU over the area
    big, small = named_tile("00_a_00000_00000"), named_tile("01_b_00000_00000")
    big.mask[4:12, :] = True
    small.mask[:] = False
    small.mask[8, 8] = True
    start = pooled_figures([big, small], [big.mask.astype(np.float32), np.zeros((16, 16), np.float32)], 0.5)
    worse = big.mask.astype(np.float32)
    worse[4:6] = 0
    tuned = pooled_figures([big, small], [worse, small.mask.astype(np.float32)], 0.5)
    assert tuned["iou"] < start["iou"]
    said: list[str] = []
    assert _decide(start, tuned, {}, {}, keep_worse=False, say=said.append) == "start"
    assert "IoU" in said[-1] and "not better" in said[-1]
    assert _decide(tuned, start, {}, {}, keep_worse=False, say=said.append) == "tuned"


def test_progress_rises_to_one_and_cancel_keeps_the_best_round(tmp_path, tiny_checkpoint):
    rasters, lines = drawn(tmp_path)
    seen: list[float] = []

    def cancel_after_two_rounds() -> bool:
        return len(list((tmp_path / "run").glob("history.csv"))) > 0 and _rounds(tmp_path / "run") >= 2

    t0 = time.monotonic()
    result = finetune_from_lines(FinetuneConfig(rasters=rasters, lines=lines, out=tmp_path / "run",
                                                init=tiny_checkpoint, label_tile=64, crop=64, minutes=5,
                                                round_steps=2, batch_size=4, device="cpu",
                                                on_progress=seen.append, is_cancelled=cancel_after_two_rounds))
    assert time.monotonic() - t0 < 240  # cancelled long before the 5 minutes
    assert result.cancelled and result.rounds == 2 and result.model.is_file()
    assert seen == sorted(seen) and seen[-1] == 1.0 and 0 < seen[len(seen) // 2] < 1
    log = (tmp_path / "run" / "train.log").read_text()
    assert "round 1: step 2/" in log and "left)" in log and "cancelled after 2 round(s)" in log


def _rounds(run: Path) -> int:
    history = run / "history.csv"
    return max(0, len(history.read_text().splitlines()) - 1) if history.is_file() else 0
