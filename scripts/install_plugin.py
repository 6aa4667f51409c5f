#!/usr/bin/env python3
"""Install the packaged plugin into a QGIS profile and enable it.

    python scripts/install_plugin.py --profile ~/.local/share/QGIS/QGIS3/profiles/default [--zip FILE]

Unzips `dist/roadseg_plugin-<version>.zip` (or --zip) into `PROFILE/python/plugins/roadseg_plugin`,
replacing an older copy by renaming (the old folder is only deleted once the new one is in
place), and sets `roadseg_plugin=true` under `[PythonPlugins]` in `PROFILE/QGIS/QGIS3.ini`,
keeping every other setting. QGIS (and `qgis_process`) load the plugin at their next start.
"""
from __future__ import annotations

import argparse
import configparser
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from package import PLUGIN, ROOT, read_version  # noqa: E402


def _qt_ini() -> configparser.ConfigParser:
    """A parser that round-trips Qt's INI files: case kept, no interpolation, '=' only."""
    parser = configparser.ConfigParser(interpolation=None, delimiters=("=",), strict=False,
                                       comment_prefixes=(";",), empty_lines_in_values=False)
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    return parser


def enable_plugin(profile: Path, name: str = PLUGIN) -> Path:
    """Set `[PythonPlugins] name=true` in the profile's QGIS3.ini (created when absent)."""
    ini = profile / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True, exist_ok=True)
    parser = _qt_ini()
    if ini.is_file():
        parser.read(ini, encoding="utf-8")
    if not parser.has_section("PythonPlugins"):
        parser.add_section("PythonPlugins")
    parser.set("PythonPlugins", name, "true")
    tmp = ini.with_name(f".{ini.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        parser.write(fh, space_around_delimiters=False)
    os.replace(tmp, ini)
    return ini


def install(zip_path: Path, profile: Path) -> Path:
    """Unzip the plugin into the profile's plugin folder, replacing an existing copy; returns its path."""
    if not zip_path.is_file():
        raise SystemExit(f"{zip_path}: not found; run `make package` first")
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        if f"{PLUGIN}/metadata.txt" not in names or any(not n.startswith(f"{PLUGIN}/") for n in names):
            raise SystemExit(f"{zip_path}: not a {PLUGIN} package (expected one {PLUGIN}/ folder with metadata.txt)")
        plugins = profile / "python" / "plugins"
        plugins.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{PLUGIN}.new-", dir=plugins))
        try:
            zf.extractall(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    target = plugins / PLUGIN
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{PLUGIN}.old-", dir=plugins))
        os.replace(target, old / PLUGIN)
    os.replace(staging / PLUGIN, target)
    shutil.rmtree(staging, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Install the RoadSeg plugin zip into a QGIS profile and enable it.")
    parser.add_argument("--profile", type=Path, required=True,
                        help="QGIS profile folder, e.g. ~/.local/share/QGIS/QGIS3/profiles/default")
    parser.add_argument("--zip", type=Path, default=None,
                        help="plugin zip (default: dist/roadseg_plugin-<version>.zip)")
    args = parser.parse_args(argv)
    zip_path = args.zip or ROOT / "dist" / f"{PLUGIN}-{read_version()}.zip"
    profile = args.profile.expanduser()
    target = install(zip_path, profile)
    ini = enable_plugin(profile)
    print(f"installed {target} and enabled it in {ini}; restart QGIS to load it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
