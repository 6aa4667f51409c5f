"""The console commands `roadseg` and `roadseg-train`, as `make setup` installs them into a venv.

`python -m roadseg_plugin` only works from the repository root (the package is not installed);
the commands work from any folder. The slow test installs a copy of the checkout into a fresh
venv with the very script `make setup` runs (`scripts/install_commands.sh`) and runs them, from
another folder, as real subprocesses.
"""
from __future__ import annotations

import shutil
import subprocess
import sysconfig
from importlib import import_module
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = {"roadseg": ("segment", "vectorise", "export-onnx"), "roadseg-train": ("train", "evaluate")}


def test_pyproject_declares_the_commands_and_their_functions_exist() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == set(COMMANDS)
    for target in scripts.values():
        module, function = target.split(":")
        assert callable(getattr(import_module(module), function)), target


def test_pyproject_lists_every_package() -> None:
    """setuptools installs only the packages pyproject names: a new folder left out would be
    missing from a non-editable install."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(ROOT).parts) for top in ("roadseg_plugin", "training")
             for init in (ROOT / top).rglob("__init__.py")}
    assert listed == found


def test_make_setup_installs_the_commands() -> None:
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "scripts/install_commands.sh .venv" in setup


def source_checkout(root: Path) -> Path:
    """What a clone holds that the editable install needs (the models left out: the test brings one)."""
    root.mkdir()
    shutil.copytree(ROOT / "roadseg_plugin", root / "roadseg_plugin",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pt", "*.onnx"))
    shutil.copytree(ROOT / "training", root / "training", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "scripts", root / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE", "metadata.txt"):
        shutil.copy(ROOT / name, root / name)
    return root


@pytest.mark.slow
def test_commands_run_from_another_folder(tmp_path: Path, tiny_checkpoint: Path) -> None:
    checkout = source_checkout(tmp_path / "checkout")
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    # the heavy packages come from the project's own venv (requirements.txt is not installed again)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path("
                                "'purelib'))"], capture_output=True, text=True, check=True).stdout.strip())
    (site / "roadseg_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    for _ in range(2):  # the second run is the idempotent one: nothing to do
        done = subprocess.run(["bash", str(checkout / "scripts" / "install_commands.sh"), str(venv)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    assert "installing" not in done.stdout

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for command, verbs in COMMANDS.items():
        helped = subprocess.run([str(venv / "bin" / command), "--help"], capture_output=True, text=True,
                                cwd=elsewhere, timeout=120)
        assert helped.returncode == 0, helped.stderr
        assert all(verb in helped.stdout for verb in verbs), helped.stdout

    from tests.plugin.conftest import write_road_geotiff

    raster, _ = write_road_geotiff(elsewhere / "area.tif", size=64)
    done = subprocess.run([str(venv / "bin" / "roadseg"), "segment", "area.tif", "--out", "roads.gpkg",
                           "--model", str(tiny_checkpoint), "--device", "cpu", "--backend", "torch"],
                          capture_output=True, text=True, cwd=elsewhere, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (elsewhere / "roads.gpkg").is_file()
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import roadseg_plugin as p; print(p.__file__)"],
                           capture_output=True, text=True, cwd=elsewhere, check=True).stdout
    assert Path(where.strip()).is_relative_to(checkout), where  # the checkout's code, not a copy
