#!/usr/bin/env python3
"""Install the packaged plugin into a QGIS profile, enable it, and install the Python packages it needs.

    python scripts/install_plugin.py --profile ~/.local/share/QGIS/QGIS3/profiles/default [--zip FILE]
        [--packages cpu|training|none] [--python /usr/bin/python3]

Unzips `dist/roadseg_plugin-<version>.zip` (or --zip) into `PROFILE/python/plugins/roadseg_plugin`,
replacing an older copy by renaming (the old folder is only deleted once the new one is in
place), and sets `roadseg_plugin=true` under `[PythonPlugins]` in `PROFILE/QGIS/QGIS3.ini`,
keeping every other setting. Then the package set (default: CPU inference) is installed for
QGIS's Python (--python; default `packages.default_qgis_python()`, /usr/bin/python3 on Linux)
into `PROFILE/python/roadseg-packages/py3.X` with pip, by the same code the plugin's installer
dialog runs (`roadseg_plugin/install/packages.py`); nothing is downloaded when every module of the set
already imports there. QGIS (and `qgis_process`) load the plugin at their next start.
"""
from __future__ import annotations

import argparse
import configparser
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from package import PLUGIN, ROOT, read_version  # noqa: E402

sys.path.insert(0, str(ROOT))
from roadseg_plugin.install import packages  # noqa: E402  (plain Python: no QGIS, Qt or third-party imports)


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


def install_packages(profile: Path, python: str, kind: str = "cpu", log=print) -> Path:
    """Make the package set importable by `python` from the profile's package folder (pip only
    when a module of the set does not import); returns the folder.

    Raises:
        SystemExit: pip failed, or a module still does not import afterwards.
    """
    package_set = packages.SETS[kind]
    try:
        version = packages.python_version(python)
    except (OSError, subprocess.SubprocessError) as exc:
        raise SystemExit(f"packages: cannot run QGIS's Python {python} ({exc}); pass --python, or --packages none"
                         ) from None
    target = packages.packages_dir(profile, version)
    missing = packages.check_imports(python, target, package_set.modules)
    if not missing:
        log(f"packages: {package_set.title} already importable by {python} (folder {target})")
        return target
    log(f"packages: installing {package_set.title} ({package_set.size_text()}) for {python} into {target}; "
        f"missing: {', '.join(missing)}")
    try:
        errors = packages.install(package_set, python, target, log=log)
    except RuntimeError as exc:
        raise SystemExit(f"packages: {exc}") from None
    if errors:
        raise SystemExit("packages: installed, but these do not import: "
                         + "; ".join(f"{name} ({error})" for name, error in errors.items()))
    log(f"packages: {package_set.title} installed in {target}")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Install the RoadSeg plugin zip into a QGIS profile, enable it "
                                     "and install the Python packages it needs.")
    parser.add_argument("--profile", type=Path, required=True,
                        help="QGIS profile folder, e.g. ~/.local/share/QGIS/QGIS3/profiles/default")
    parser.add_argument("--zip", type=Path, default=None,
                        help="plugin zip (default: dist/roadseg_plugin-<version>.zip)")
    parser.add_argument("--packages", choices=(*packages.SETS, "none"), default="cpu",
                        help="Python packages to install for QGIS: cpu (CPU inference, default), training "
                             "(adds PyTorch) or none")
    parser.add_argument("--python", default=packages.default_qgis_python(),
                        help="QGIS's Python interpreter (default: %(default)s)")
    args = parser.parse_args(argv)
    zip_path = args.zip or ROOT / "dist" / f"{PLUGIN}-{read_version()}.zip"
    profile = args.profile.expanduser()
    target = install(zip_path, profile)
    ini = enable_plugin(profile)
    print(f"installed {target} and enabled it in {ini}")
    if args.packages != "none":
        install_packages(profile, args.python, args.packages)
    print("restart QGIS to load it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
