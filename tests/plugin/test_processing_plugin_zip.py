"""The plugin zip the Processing provider is installed from: normal permissions whatever the
checkout's, a folder entry for every folder, and metadata without placeholder URLs."""
from __future__ import annotations

import configparser
import os
import shutil
import stat
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.plugin.test_package import ROOT, package, source_copy


def test_entries_are_0644_files_and_0755_folders(tmp_path: Path) -> None:
    """On a copy of the tree with odd permissions (0600 files, 0700 folders, an executable file)."""
    root = source_copy(tmp_path / "src")
    for folder, _, files in os.walk(root):
        os.chmod(folder, 0o700)
        for name in files:
            os.chmod(Path(folder) / name, 0o600)
    os.chmod(root / "roadseg_plugin" / "__init__.py", 0o755)
    out = package.build(tmp_path / "dist", allow_missing_model=True, root=root)

    with zipfile.ZipFile(out) as zf:
        infos = zf.infolist()
        names = zf.namelist()
    files = [i for i in infos if not i.is_dir()]
    folders = [i for i in infos if i.is_dir()]
    assert files and folders
    for info in files:
        assert stat.S_IMODE(info.external_attr >> 16) == 0o644 and stat.S_ISREG(info.external_attr >> 16), info
        assert info.create_system == 3 and info.compress_type == zipfile.ZIP_DEFLATED, info.filename
    for info in folders:
        assert stat.S_IMODE(info.external_attr >> 16) == 0o755 and stat.S_ISDIR(info.external_attr >> 16), info
    for name in names:  # every folder above a file has its own entry, listed before it
        parent = name.rstrip("/").rsplit("/", 1)[0] + "/"
        assert parent == name or parent in names[:names.index(name)], name
    assert "roadseg_plugin/" in names and "roadseg_plugin/training/callbacks/" in names

    if shutil.which("unzip"):  # what a user's unzip makes of it
        subprocess.run(["unzip", "-q", str(out), "-d", str(tmp_path / "unzipped")], check=True)
        plugin = tmp_path / "unzipped" / "roadseg_plugin"
        assert stat.S_IMODE(plugin.stat().st_mode) == 0o755
        assert stat.S_IMODE((plugin / "core").stat().st_mode) == 0o755
        assert stat.S_IMODE((plugin / "__init__.py").stat().st_mode) == 0o644
        assert stat.S_IMODE((plugin / "training" / "train.py").stat().st_mode) == 0o644


def test_contents_are_unchanged_by_the_permissions(tmp_path: Path) -> None:
    root = source_copy(tmp_path / "src")
    out = package.build(tmp_path / "dist", allow_missing_model=True, root=root)
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None
        for source, arcname in package.package_files(root):
            assert zf.read(arcname) == source.read_bytes(), arcname


def test_metadata_has_no_placeholder_urls() -> None:
    """There is no public repository: homepage, tracker and repository are left out (QGIS accepts
    that for plugins installed from a zip) rather than pointing at a repository that does not exist."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / "metadata.txt", encoding="utf-8")
    general = parser["general"]
    for key in ("homepage", "tracker", "repository"):
        assert key not in general, f"metadata.txt: {key}={general.get(key)} (no such repository)"
    assert "github.com/roadseg" not in (ROOT / "metadata.txt").read_text()


@pytest.mark.parametrize("key", ["name", "qgisMinimumVersion", "description", "version", "author", "email", "about"])
def test_metadata_keeps_what_qgis_requires(key: str) -> None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / "metadata.txt", encoding="utf-8")
    assert parser["general"].get(key, "").strip(), key
