"""scripts/package.py and scripts/install_plugin.py: the zip QGIS installs, and installing it."""
from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import install_plugin  # noqa: E402
import package  # noqa: E402

from roadseg_plugin.core.checkpoint import BUNDLED_MODEL  # noqa: E402

VERSION = package.read_version()


def build(out: Path) -> Path:
    """What `make package` runs (plus --allow-missing-model while no model is bundled yet)."""
    args = [sys.executable, str(ROOT / "scripts" / "package.py"), "--out", str(out)]
    if not BUNDLED_MODEL.is_file():
        args.append("--allow-missing-model")
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    return out / f"roadseg_plugin-{VERSION}.zip"


def source_copy(root: Path, *ignore: str) -> Path:
    """The files `scripts/package.py` packs (plugin, training package, metadata) copied to `root`,
    without caches and `ignore` (default: the model files)."""
    ignore = ignore or ("*.pt", "*.onnx")
    shutil.copytree(ROOT / "roadseg_plugin", root / "roadseg_plugin",
                    ignore=shutil.ignore_patterns("__pycache__", *ignore))
    shutil.copytree(ROOT / "training", root / "training", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "metadata.txt", root / "metadata.txt")
    return root


@pytest.fixture(scope="module")
def plugin_zip(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("dist"))


def test_version_comes_from_metadata() -> None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / "metadata.txt")
    general = parser["general"]
    assert VERSION == general["version"] == "0.1.0"
    assert general["name"] == "RoadSeg" and general["qgisMinimumVersion"] == "3.22"
    assert general["hasProcessingProvider"] == "yes" and general["category"] == "Raster"
    assert general["icon"] == "icon.png" and (ROOT / "roadseg_plugin" / "icon.png").is_file()
    for key in ("description", "about", "author", "email", "tags", "changelog"):
        assert general.get(key, "").strip(), key


def test_zip_content(plugin_zip: Path) -> None:
    with zipfile.ZipFile(plugin_zip) as zf:
        names = zf.namelist()
        assert zf.read("roadseg_plugin/metadata.txt") == (ROOT / "metadata.txt").read_bytes()
    assert all(n.startswith("roadseg_plugin/") for n in names)
    for needed in ("__init__.py", "gui/plugin.py", "install/deps.py", "adapters/qgis_reader.py", "cli/main.py",
                   "icon.png", "processing/provider.py", "core/engine.py", "training/__init__.py",
                   "training/train.py", "training/drawn_lines.py", "training/callbacks/__init__.py"):
        assert f"roadseg_plugin/{needed}" in names, needed
    for name in names:
        parts = name.split("/")
        assert "__pycache__" not in parts and "tests" not in parts, name
        assert not name.endswith((".pyc", ".tmp")), name
    if BUNDLED_MODEL.is_file():  # the checkpoint and its two ONNX exports (CPU inference without torch)
        import hashlib

        tag = hashlib.sha256(BUNDLED_MODEL.read_bytes()).hexdigest()[:12]
        shipped = [f"roadseg_plugin/models/{BUNDLED_MODEL.name}",
                   f"roadseg_plugin/models/{BUNDLED_MODEL.stem}.{tag}.onnx",
                   f"roadseg_plugin/models/{BUNDLED_MODEL.stem}.{tag}.int8.onnx"]
        assert set(shipped) <= set(names)
        assert [n for n in names if n.endswith(".onnx")] == shipped[1:][::-1]  # sorted: .int8.onnx first


def test_model_and_card_are_packed_and_junk_left_out(tmp_path: Path) -> None:
    """On a copy of the source tree that has a model, a card, caches, tests and an ONNX export."""
    root = source_copy(tmp_path / "src")
    models = root / "roadseg_plugin" / "models"
    models.mkdir(exist_ok=True)
    (models / "roadseg_default.pt").write_bytes(b"weights")
    tag = package.hashlib.sha256(b"weights").hexdigest()[:12]
    (models / "MODEL_CARD.md").write_text("# card")
    (models / f"roadseg_default.{tag}.onnx").write_bytes(b"fp32 export")
    (models / f"roadseg_default.{tag}.int8.onnx").write_bytes(b"int8 model")
    (models / "roadseg_default.0123456789ab.onnx").write_bytes(b"stale export of an older checkpoint")
    (models / "roadseg_default.0123456789ab.int8.onnx").write_bytes(b"stale int8")
    (models / "other.onnx").write_bytes(b"not an export")
    (root / "roadseg_plugin" / "core" / "cache.onnx").write_bytes(b"cache")
    (root / "roadseg_plugin" / "tests").mkdir()
    (root / "roadseg_plugin" / "tests" / "test_x.py").write_text("")
    (root / "roadseg_plugin" / "__pycache__").mkdir(exist_ok=True)
    (root / "roadseg_plugin" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"")
    (root / "training" / "stray.pyc").write_bytes(b"")
    out = package.build(tmp_path / "dist", root=root)
    names = zipfile.ZipFile(out).namelist()
    assert "roadseg_plugin/models/roadseg_default.pt" in names and "roadseg_plugin/models/MODEL_CARD.md" in names
    assert [n for n in names if n.endswith(".onnx")] == [f"roadseg_plugin/models/roadseg_default.{tag}.int8.onnx",
                                                         f"roadseg_plugin/models/roadseg_default.{tag}.onnx"]
    assert not [n for n in names if n.endswith(".pyc") or "/tests/" in n]


def test_no_model_is_refused_unless_allowed(tmp_path: Path) -> None:
    root = source_copy(tmp_path / "src", "*.pt")
    with pytest.raises(SystemExit, match="no bundled model"):
        package.build(tmp_path / "dist", root=root)
    assert package.build(tmp_path / "dist", allow_missing_model=True, root=root).is_file()


QT_INI = """[General]
lastRunVersion=32216

[PythonPlugins]
processing=true
otherplugin=false

[UI]
geometry=@ByteArray(\\x1\\xd9\\xd0\\xcb\\0\\x3)
Plugins%20Manager\\lastTab=2
"""


def test_install_merges_the_ini_and_replaces_an_old_copy(plugin_zip: Path, tmp_path: Path) -> None:
    profile = tmp_path / "profile"
    (profile / "QGIS").mkdir(parents=True)
    (profile / "QGIS" / "QGIS3.ini").write_text(QT_INI)
    old = profile / "python" / "plugins" / "roadseg_plugin"
    old.mkdir(parents=True)
    (old / "stale.py").write_text("")
    # --packages none: pip's install of the CPU set for QGIS's Python (30 s, or the network) is what
    # tests/plugin/test_qgis_process.py (slow) checks after this same command
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "install_plugin.py"), "--profile", str(profile),
                           "--zip", str(plugin_zip), "--packages", "none"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not (old / "stale.py").exists() and (old / "metadata.txt").is_file()
    assert [p.name for p in (profile / "python" / "plugins").iterdir()] == ["roadseg_plugin"]  # no leftovers
    ini = (profile / "QGIS" / "QGIS3.ini").read_text()
    assert "roadseg_plugin=true" in ini and "processing=true" in ini and "otherplugin=false" in ini
    assert "geometry=@ByteArray(\\x1\\xd9\\xd0\\xcb\\0\\x3)" in ini and "Plugins%20Manager\\lastTab=2" in ini
    assert "lastRunVersion=32216" in ini


def test_install_creates_the_ini(plugin_zip: Path, tmp_path: Path) -> None:
    target = install_plugin.install(plugin_zip, tmp_path / "p")
    ini = install_plugin.enable_plugin(tmp_path / "p")
    assert target == tmp_path / "p" / "python" / "plugins" / "roadseg_plugin"
    assert ini.read_text().split() == ["[PythonPlugins]", "roadseg_plugin=true"]


def test_installed_copy_runs_its_own_training_package(plugin_zip: Path, tmp_path: Path) -> None:
    """With only QGIS's plugin folder on sys.path (no source checkout), the algorithms find
    `roadseg_plugin.training`, and no top-level `training` or `processing` shadowing appears."""
    plugins = install_plugin.install(plugin_zip, tmp_path / "profile").parent
    # QGIS's Python has no editable install of this checkout (`make setup` gives the dev venv one
    # for the console commands): its import finder is left out, as QGIS would not have it
    code = ("import importlib.util, sys\n"
            "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in getattr(f, '__module__', '')]\n"
            "from roadseg_plugin.processing.base import import_training\n"
            "train, drawn = import_training('train'), import_training('drawn_lines')\n"
            "print(train.__file__); print(drawn.__file__)\n"
            "print(importlib.util.find_spec('training'))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={"PYTHONPATH": str(plugins), "QT_QPA_PLATFORM": "offscreen", "HOME": str(tmp_path),
                               "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    train_file, drawn_file, top_level = done.stdout.split("\n")[:3]
    assert train_file == str(plugins / "roadseg_plugin" / "training" / "train.py")
    assert drawn_file == str(plugins / "roadseg_plugin" / "training" / "drawn_lines.py")
    assert top_level == "None"
