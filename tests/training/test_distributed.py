"""Multi-process training under torchrun: real processes, gloo on CPU, no mocks.

One single-process run and one `torchrun --nproc-per-node 2` run of the same small job (module
fixtures, ~15 s together on 2 cores) are compared; the helpers of `training.distributed` are
checked in this process.
"""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from roadseg_plugin.core.checkpoint import load_model, read_checkpoint
from roadseg_plugin.core.errors import ParamError
from roadseg_plugin.core.metrics import best_threshold, threshold_from_histograms, threshold_histograms
from tests.conftest import ROOT, draw_roads, road_image, write_png_pair
from training import distributed
from training.datasets import RandomCropDataset, load_tiles, split_tiles
from training.trainer import FitConfig, Trainer

# 8 tiles: 5 train, 3 validation (an odd number: the two ranks validate 2 and 1 tiles). Global
# batch 8 = 2 x 4, 32 crops = 4 steps per epoch; no augmentation, so the crops are a function of
# (seed, epoch, index) alone and both runs train on the very same crops in the same batches.
JOB = ["--epochs", "3", "--tile", "32", "--infer-tile", "64", "--overlap", "16", "--batch-size", "8",
       "--samples-per-epoch", "32", "--base-channels", "4", "--depth", "2", "--workers", "0",
       "--val-fraction", "0.375", "--device", "cpu", "--no-augment", "--lr", "0.003", "--seed", "1"]
TIMEOUT = 180
# One OpenMP thread per process, as torchrun sets it: a single process's 2 threads on a busy 2-core
# machine made a tiny epoch 70x slower (2.3 s instead of 0.03 s), and the comparison is of results
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, *args: str, module: str = "training") -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
            "--master-port", str(free_port()), "-m", module, *args]


def rows(path: Path) -> list[dict[str, float]]:
    with open(path) as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("ddp") / "data"
    for i in range(8):
        mask = draw_roads(96, rng)
        write_png_pair(root, f"tile{i}", road_image(mask, rng), mask)
    return root


@pytest.fixture(scope="module")
def single(dataset) -> Path:
    out = dataset.parent / "single"
    subprocess.run([sys.executable, "-m", "training", "train", "--data", str(dataset), "--out", str(out), *JOB],
                   cwd=ROOT, env=ENV, check=True, capture_output=True, timeout=TIMEOUT)
    return out


@pytest.fixture(scope="module")
def ddp(dataset) -> tuple[Path, subprocess.CompletedProcess]:
    out = dataset.parent / "ddp"
    done = subprocess.run(torchrun(2, "train", "--data", str(dataset), "--out", str(out), *JOB),
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def test_torchrun_writes_one_set_of_outputs(ddp):
    out, done = ddp
    for name in ("best.pt", "last.pt", "history.csv", "loss.png", "predictions.gif", "metrics.json", "train.log"):
        assert (out / name).stat().st_size > 0, name
    assert len(list(out.glob("best.*.onnx"))) in (1, 2)  # fp32 (+ int8): exported once, by rank 0
    assert not list(out.glob("*.tmp*"))
    assert [int(r["epoch"]) for r in rows(out / "history.csv")] == [1, 2, 3]
    log = (out / "train.log").read_text()
    assert log.count("DistributedDataParallel: 2 processes (gloo), global batch 8 = 2 x 4") == 1
    for epoch in (1, 2, 3):
        assert len(re.findall(rf"INFO epoch {epoch}/3 ", log)) == 1, log
    assert log.count(" done: 3 epoch(s)") == 1
    assert done.stdout.count("done: 3 epoch(s)") == 1  # the console summary is rank 0's alone
    assert read_checkpoint(out / "last.pt")["epoch"] == 3


def test_checkpoint_loads_like_a_single_run(ddp, single):
    model, meta = load_model(ddp[0] / "best.pt")
    ref_model, ref_meta = load_model(single / "best.pt")
    assert type(model) is type(ref_model)
    assert not any(k.startswith("module.") for k in model.state_dict())  # saved from model.module
    assert list(model.state_dict()) == list(ref_model.state_dict())
    same = ("arch", "arch_config", "bands", "band_names", "mean", "std", "tile", "overlap", "gsd_m", "extra", "data")
    assert {k: getattr(meta, k) for k in same} == {k: getattr(ref_meta, k) for k in same}
    assert meta.val_metrics == json.loads((ddp[0] / "metrics.json").read_text())


def test_loss_curve_matches_a_single_process_run(ddp, single):
    """Same crops, same global batches, same initial weights (seeded; DDP also broadcasts rank 0's)
    and the same schedule. What differs: on CPU each rank's BatchNorm normalises with the
    statistics of its 4 crops, not of all 8 (PyTorch's SyncBatchNorm is CUDA-only), and the Dice
    term of the loss is taken per share, not over the whole batch, before DDP averages; plus
    float summation order. Measured over 3 seeds x 3 epochs of this job: train loss within
    0.5 %, validation loss within 0.2 %. 3 % leaves a 6x margin while still catching a wrong
    global batch (per-rank batch not halved: half the steps) or duplicated crops on both ranks
    (both fail by well over 3 % by epoch 2)."""
    a, b = rows(single / "history.csv"), rows(ddp[0] / "history.csv")
    assert len(a) == len(b) == 3
    for one, two in zip(a, b, strict=True):
        assert two["train_loss"] == pytest.approx(one["train_loss"], rel=0.03), (one, two)
        assert two["val_loss"] == pytest.approx(one["val_loss"], rel=0.03), (one, two)
        assert two["lr"] == pytest.approx(one["lr"], rel=1e-9)  # the same number of steps


def test_two_processes_reproduce_one_when_the_loss_decomposes(dataset, tmp_path):
    """`ddp_probe`: a BatchNorm-free model and the pixel-mean BCE loss (all crops fully valid), so
    the mean of per-share gradients is the whole-batch gradient, also for the last batch of
    5 = 2 + 3 crops (`batch_weight`). Then two processes must end with one process's weights:
    this checks the crop sharding, DDP's averaging and the weighting, which the BatchNorm-
    and Dice-blurred comparison above cannot. Measured: weights within 1.5e-7 after 8 steps."""
    probe = "tests.training.ddp_probe"
    subprocess.run([sys.executable, "-m", probe, str(dataset), str(tmp_path / "one")], cwd=ROOT, env=ENV,
                   check=True, capture_output=True, timeout=TIMEOUT)
    done = subprocess.run(torchrun(2, str(dataset), str(tmp_path / "two"), module=probe), cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (read_checkpoint(tmp_path / name / "last.pt") for name in ("one", "two"))
    assert one["epoch"] == two["epoch"] == 2
    for a, b in zip(one["history"], two["history"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-6)
    for key, value in one["state_dict"].items():
        torch.testing.assert_close(two["state_dict"][key], value, rtol=0, atol=1e-5, msg=key)


def test_sharded_validation_equals_one_process_validating_every_tile(ddp, dataset):
    """The DDP run's validation (3 tiles over 2 ranks, sums all-reduced) of its best weights
    is what one process computes on all 3 tiles with those weights."""
    model, meta = load_model(ddp[0] / "best.pt")
    train_tiles, val_tiles = split_tiles(load_tiles(dataset), 0.375, 0)
    assert len(val_tiles) == 3
    data = RandomCropDataset(train_tiles, 32, 8, meta.mean, meta.std)
    trainer = Trainer(model, meta, data, val_tiles, dataset.parent / "unused", FitConfig(epochs=1),
                      torch.device("cpu"))
    logs = trainer.validate()
    expected = json.loads((ddp[0] / "metrics.json").read_text())
    assert logs["val_loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert logs["val_threshold"] == expected["threshold"]
    for key in ("iou", "precision", "recall", "f1", "relaxed_f1"):
        assert logs[f"val_{key}"] == pytest.approx(expected[key], abs=1e-3), key  # a pixel or two at the threshold


def test_ctrl_c_stops_every_process_cleanly(dataset, tmp_path):
    out = tmp_path / "run"
    job = [*JOB, "--epochs", "500"]  # the last --epochs wins: interrupted mid-run
    proc = subprocess.Popen(torchrun(2, "train", "--data", str(dataset), "--out", str(out), *job, "--patience", "500"),
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (out / "history.csv").exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        time.sleep(1)
        proc.send_signal(signal.SIGINT)  # torchrun passes it on to both processes
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # never leave the job behind, whatever failed
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    assert stderr.count("interrupted; best.pt and last.pt so far are kept") == 2, stderr[-3000:]  # one per rank
    last = (out / "train.log").read_text().strip().splitlines()[-1]
    assert "WARNING interrupted; last.pt holds epoch" in last, last
    assert read_checkpoint(out / "last.pt")["epoch"] >= 1


# ---- the helpers, in this process ---------------------------------------------------------------
@pytest.mark.parametrize("length", [36, 30, 17, 4, 2])  # whole, short last batch, fewer crops than processes
@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_of_each_batch_are_the_single_process_batch(length, world):
    batch = 6
    single = [list(range(i, min(i + batch, length))) for i in range(0, length, batch)]
    samplers = [distributed.BatchShardSampler(length, batch, r, world) for r in range(world)]
    assert all(len(s) == len(single) for s in samplers)  # every rank runs every step
    for k, (expected, *shares) in enumerate(zip(single, *samplers, strict=True)):
        seen = sorted({i for share in shares for i in share})
        assert seen == expected  # together the ranks train on the single-process batch, nothing else
        assert all(share for share in shares)
        if len(expected) >= world:  # no repeats; DDP's average of weighted share losses is the crop-weighted mean
            assert sum(len(s) for s in shares) == len(expected)
            for share in shares:
                weight = distributed.batch_weight(samplers[0], k, len(share))
                assert weight / world == pytest.approx(len(share) / len(expected))


def test_a_world_of_one_batches_as_before():
    data = list(range(30))
    old = [b.tolist() for b in torch.utils.data.DataLoader(data, batch_size=8, shuffle=False)]
    new = [b.tolist() for b in torch.utils.data.DataLoader(data, batch_sampler=distributed.BatchShardSampler(30, 8))]
    assert new == old


def test_threshold_from_summed_histograms_is_best_threshold():
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = int(rng.integers(50, 5000))
        true = rng.random(n) < rng.random()
        prob = np.clip(true * rng.random() + rng.normal(0.3, 0.25, n), 0, 1)
        parts = np.array_split(np.arange(n), 3)  # three tiles on different ranks
        hists = [threshold_histograms(prob[p], true[p]) for p in parts]
        pos, neg = sum(h[0] for h in hists), sum(h[1] for h in hists)
        assert threshold_from_histograms(pos.astype(float), neg.astype(float)) == best_threshold(prob, true)


def test_global_batch_must_split_evenly(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    distributed.check_batch_size(16)
    with pytest.raises(ParamError, match="batch_size 6: is the global batch and must be a multiple of the 4"):
        distributed.check_batch_size(6)
    with pytest.raises(ParamError, match="device"):
        distributed.device_for(torch.device("cuda:1"))


def test_process_group_is_left_also_on_an_error(monkeypatch):
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(key, value)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(RuntimeError, match="boom"):
        with distributed.process_group(torch.device("cpu")):
            assert distributed.active() and distributed.world_size() == 1 and distributed.is_main()
            assert distributed.all_reduce_sum([1.0, 2.0]).tolist() == [1.0, 2.0]
            raise RuntimeError("boom")
    assert not distributed.active()
    assert signal.getsignal(signal.SIGINT) is before
