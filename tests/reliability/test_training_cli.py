"""`python -m training` never loses data: each refusal and interruption, run as a real subprocess
on real small files, with the inputs hashed before and after.

Refusals exit 2 with one line `error: <file or option>: <what is wrong>; <what to do>` on stderr
and write nothing; Ctrl-C exits 130 and SIGTERM 143, keeping best.pt / last.pt of the last epoch.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from roadseg_plugin.core.checkpoint import read_checkpoint
from tests.conftest import draw_roads, road_image, write_png_pair
from tests.rasters import write_raster

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
TINY = ["--epochs", "2", "--tile", "32", "--infer-tile", "64", "--overlap", "16", "--batch-size", "4",
        "--samples-per-epoch", "8", "--base-channels", "4", "--depth", "2", "--workers", "0", "--device", "cpu"]


def cli(*args: object, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training", *map(str, args)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def one_error(done: subprocess.CompletedProcess) -> str:
    """The single stderr line of a refusal (exit 2, no traceback)."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, (done.returncode, done.stderr[-3000:])
    assert lines[0].startswith("error: ") and "; " in lines[0], lines[0]
    return lines[0]


def hashes(*paths: Path) -> dict[str, str]:
    """sha256 of every file under `paths` (and of `paths` that are files)."""
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*"))) if f.is_file()]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def make_dataset(root: Path, n: int = 4, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        mask = draw_roads(96, rng)
        write_png_pair(root, f"tile{i}", road_image(mask, rng), mask)
    return root


def add_truncated_pair(root: Path) -> Path:
    """A good pair whose image then loses its second half, as an interrupted copy leaves it."""
    rng = np.random.default_rng(9)
    mask = draw_roads(96, rng)
    write_png_pair(root, "cut", road_image(mask, rng), mask)
    image = root / "images" / "cut.png"
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    return image


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(dataset, run folder) of a real 2-epoch CLI run, shared by the tests that only read them."""
    root = tmp_path_factory.mktemp("trained")
    data, run = make_dataset(root / "data"), root / "run"
    done = cli("train", "--data", data, "--out", run, *TINY)
    assert done.returncode == 0, done.stderr[-3000:]
    return data, run


@pytest.fixture
def data(tmp_path) -> Path:
    return make_dataset(tmp_path / "data")


# ---- train: refusals before anything is written -------------------------------------------------

@pytest.mark.parametrize("where", ["same", "inside", "symlink", "val"])
def test_run_folder_in_the_data_is_refused(data, tmp_path, where):
    extra = []
    if where == "same":
        out = data
    elif where == "inside":
        out = data / "masks" / "run"
    elif where == "symlink":  # a link into the data is the data
        (tmp_path / "link").symlink_to(data / "images")
        out = tmp_path / "link" / "run"
    else:
        val = make_dataset(tmp_path / "val", n=2, seed=1)
        extra, out = ["--val", val], val / "run"
    before = hashes(tmp_path)
    line = one_error(cli("train", "--data", data, "--out", out, *extra, *TINY))
    assert f"error: {out}: the run folder is, or is inside, the " in line and "choose a run folder (--out)" in line
    assert hashes(tmp_path) == before  # nothing written, nothing changed


BAD_OPTIONS = [  # the option as typed, and the start of the one-line message
    (["--batch-size", "0"], "batch_size 0: must be at least 1; e.g. 16"),
    (["--lr", "0"], "lr 0.0: must be a finite number greater than 0"),
    (["--lr", "nan"], "lr nan: must be a finite number greater than 0"),
    (["--epochs", "0"], "epochs 0: must be at least 1"),
    (["--tile", "250"], "tile 250: must be a multiple of 16 for a depth-4 U-Net; e.g. 256"),
    (["--infer-tile", "500"], "infer_tile 500: must be a multiple of 16 for a depth-4 U-Net; e.g. 496"),
    (["--overlap", "256"], "overlap 256: must be less than half the infer_tile (512)"),
    (["--val-fraction", "1"], "val_fraction 1.0: must lie strictly between 0 and 1"),
    (["--val-fraction", "0"], "val_fraction 0.0: must lie strictly between 0 and 1"),
    (["--patience", "0"], "patience 0: must be at least 1"),
    (["--samples-per-epoch", "0"], "samples_per_epoch 0: must be at least 1"),
    (["--workers", "-1"], "workers -1: must be at least 0"),
    (["--base-channels", "0"], "base_channels 0: must be at least 1"),
    (["--depth", "0"], "depth 0: must be at least 1"),
    (["--max-minutes", "0"], "max_minutes 0.0: must be a finite number greater than 0"),
    (["--scale-jitter", "-0.5"], "scale_jitter -0.5: must be a finite number, 0 or more"),
]
# One command per option costs a Python start with torch (about 2 s each). Every option's check is
# tests/training/test_train_config.py's (in this process, fast); these three, a whole number, a
# float read from "nan" and a message made from the model's depth, show the command's way there
# (parsed, refused in one line, exit 2, no run folder) in make test-fast; the rest are slow.
FAST_BAD_OPTIONS = {"--batch-size=0", "--lr=nan", "--infer-tile=500"}


@pytest.mark.parametrize("option,message", [
    pytest.param(o, m, id="=".join(o), marks=() if "=".join(o) in FAST_BAD_OPTIONS else pytest.mark.slow)
    for o, m in BAD_OPTIONS])
def test_bad_option_exits_2_before_the_run_folder_exists(data, tmp_path, option, message):
    out = tmp_path / "run"
    line = one_error(cli("train", "--data", data, "--out", out, "--device", "cpu", *option))
    assert line.startswith(f"error: {message}"), line
    assert not out.exists()  # no run folder, so no train.log claiming anything


def test_resume_without_last_pt_is_refused(data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    line = one_error(cli("train", "--data", data, "--out", out, "--resume", *TINY))
    assert line.startswith(f"error: {out / 'last.pt'}: not found, so there is no run to resume; drop --resume")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # it did not start from scratch


def test_truncated_image_is_refused_and_skip_bad_leaves_it_out(data, tmp_path):
    cut = add_truncated_pair(data)
    before = hashes(data)
    line = one_error(cli("train", "--data", data, "--out", tmp_path / "run", *TINY))
    assert line.startswith(f"error: {cut}: cannot be read (") and "--skip-bad" in line
    assert not (tmp_path / "run").exists()
    done = cli("train", "--data", data, "--out", tmp_path / "skip", "--skip-bad", *TINY)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"skipping: {cut}: cannot be read" in done.stderr and "UserWarning: skipping" not in done.stderr
    assert f"skipping: {cut}" in (tmp_path / "skip" / "train.log").read_text()
    assert hashes(data) == before


# ---- train: failures and interruptions mid-run -----------------------------------------------------

def test_failed_run_logs_the_failure_and_keeps_the_checkpoints(trained, tmp_path):
    data, run = trained
    shutil.copytree(run, tmp_path / "run")
    run = tmp_path / "run"
    models = hashes(run / "best.pt", run / "last.pt")
    done = cli("train", "--data", data, "--out", run, "--resume", *TINY[:-10], "--base-channels", "8",
               "--depth", "2", "--workers", "0", "--device", "cpu")  # last.pt is a base-4 model
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {run / 'last.pt'}: does not fit this run (")
    last = (run / "train.log").read_text().strip().splitlines()[-1]
    assert " ERROR failed: " in last and "kept: best.pt, last.pt" in last and "done" not in last
    assert hashes(run / "best.pt", run / "last.pt") == models


@pytest.mark.parametrize("signum,status,word", [(signal.SIGINT, 130, "interrupted"),
                                                (signal.SIGTERM, 143, "terminated")])
def test_signal_exits_non_zero_and_keeps_the_last_epoch(data, tmp_path, signum, status, word):
    out, err = tmp_path / "run", tmp_path / "stderr.txt"
    before = hashes(data)
    args = [*TINY[2:], "--epochs", "100000"]
    with open(err, "w") as stderr:
        # SIG_DFL in the child: Python turns SIGINT into KeyboardInterrupt only when it is not ignored
        proc = subprocess.Popen([sys.executable, "-m", "training", "train", "--data", str(data), "--out", str(out),
                                 *args], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=stderr,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline = time.monotonic() + 60
            log = out / "train.log"
            while not (log.exists() and "epoch 1/" in log.read_text()):
                assert proc.poll() is None and time.monotonic() < deadline, err.read_text()[-3000:]
                time.sleep(0.1)
            proc.send_signal(signum)
            assert proc.wait(timeout=60) == status, err.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    last = err.read_text().replace("\r", "\n").strip().splitlines()[-1]
    assert last == f"{word}; best.pt and last.pt so far are kept in {out}; --resume continues"
    assert read_checkpoint(out / "last.pt")["epoch"] >= 1 and (out / "best.pt").is_file()
    log_end = (out / "train.log").read_text().strip().splitlines()[-1]
    assert " WARNING interrupted; last.pt holds epoch " in log_end and "done" not in log_end
    assert not list(out.glob(".*.pt.*")) and hashes(data) == before  # no half-written checkpoint left


# ---- evaluate ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["model", "image", "mask", "no folder"])
def test_evaluate_json_onto_an_input_is_refused(trained, which, tmp_path):
    data, run = trained
    target = {"model": run / "best.pt", "image": data / "images" / "tile0.png", "mask": data / "masks" / "tile1.png",
              "no folder": tmp_path / "missing" / "e.json"}[which]
    before = hashes(data, run / "best.pt")
    line = one_error(cli("evaluate", "--model", run / "best.pt", "--data", data, "--json", target,
                         "--device", "cpu", "--backend", "torch"))
    if which == "no folder":
        assert line == (f"error: {target}: the folder {target.parent} does not exist; "
                        "create it first or choose another folder")
    else:
        assert line.startswith(f"error: {target}: the JSON figures would overwrite the input ")
    assert hashes(data, run / "best.pt") == before


def test_evaluate_refuses_a_truncated_image_and_skip_bad_leaves_it_out(trained, tmp_path):
    data, run = trained
    shutil.copytree(data, tmp_path / "data")
    cut = add_truncated_pair(tmp_path / "data")
    common = ["--model", run / "best.pt", "--data", tmp_path / "data", "--device", "cpu", "--backend", "torch"]
    line = one_error(cli("evaluate", *common, "--json", tmp_path / "e.json"))
    assert line.startswith(f"error: {cut}: cannot be read (") and not (tmp_path / "e.json").exists()
    done = cli("evaluate", *common, "--json", tmp_path / "e.json", "--skip-bad")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "e.json").read_text())["tiles"] == 4 and f"skipping: {cut}" in done.stderr


def test_zero_one_masks_evaluate_like_0_255_masks(trained, tmp_path):
    data, run = trained
    shutil.copytree(data, tmp_path / "d01")
    for mask in sorted((tmp_path / "d01" / "masks").iterdir()):
        with rasterio.open(mask) as src:
            values = src.read(1)
        write_raster(mask, (values > 127).astype(np.uint8))  # the same roads as 1, not 255
    results = []
    for folder in (data, tmp_path / "d01"):
        done = cli("evaluate", "--model", run / "best.pt", "--data", folder, "--json", tmp_path / f"{folder.name}.json",
                   "--device", "cpu", "--backend", "torch")
        assert done.returncode == 0, done.stderr[-3000:]
        results.append(json.loads((tmp_path / f"{folder.name}.json").read_text()))
    assert results[0] == results[1] and results[0]["recall"] > 0  # roads found, not all background
