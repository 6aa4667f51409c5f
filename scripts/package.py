#!/usr/bin/env python3
"""Build dist/roadseg_plugin-<version>.zip, installable with QGIS's Plugins > Install from ZIP.

The zip holds one folder, `roadseg_plugin/`, which QGIS puts on its plugin path:

- the plugin package itself (core, processing, GUI, icon, the bundled model and its card);
- `metadata.txt`, copied in from the repository root (QGIS reads it from the plugin folder);
- the `training/` package, copied in as `roadseg_plugin/training/`. It imports
  `roadseg_plugin.core...` absolutely, which works because QGIS's plugin folder is on
  `sys.path`; the plugin reaches it through `processing.base.import_training`, so no folder
  is added to `sys.path` (a top-level `processing` package would clash with QGIS's own);
- LICENSE, when the repository has one.

Tests, caches, compiled files and temporary files are left out, and so are ONNX files, except
the exports of a shipped checkpoint: `<stem>.<sha12>.onnx` (fp32, what CPU inference runs where
torch is not installed) and `<stem>.<sha12>.int8.onnx` beside `<stem>.pt`, when sha12 is the
start of that checkpoint's SHA-256 (a stale export, made from an older checkpoint, is never used
and is left out). Entries carry 0644 (files) and 0755 (folders) permissions, and every folder
has its own entry.
Usage: `python scripts/package.py [--out DIR] [--allow-missing-model]`.
"""
from __future__ import annotations

import argparse
import configparser
import fnmatch
import hashlib
import os
import re
import shutil
import stat
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = "roadseg_plugin"
EXCLUDE_DIRS = {"__pycache__", "tests", "test", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".git"}
EXCLUDE_FILES = ("*.pyc", "*.pyo", "*.onnx", "*.tmp", ".*", "*~", "*.orig")
EXPORT_NAME = re.compile(r"(?P<stem>.+)\.(?P<tag>[0-9a-f]{12})(\.int8)?\.onnx")


def shipped_export(path: Path) -> bool:
    """Whether `path` is the fp32 or int8 ONNX export of the checkpoint beside it (same hash)."""
    found = EXPORT_NAME.fullmatch(path.name)
    checkpoint = path.parent / f"{found['stem']}.pt" if found else None
    if checkpoint is None or not checkpoint.is_file():
        return False
    sha = hashlib.sha256()
    with open(checkpoint, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()[:12] == found["tag"]


FILE_MODE, DIR_MODE = 0o644, 0o755  # in the zip, whatever the checkout's permissions


def read_version(metadata: Path = ROOT / "metadata.txt") -> str:
    parser = configparser.ConfigParser(interpolation=None)
    if not parser.read(metadata, encoding="utf-8") or not parser.has_option("general", "version"):
        raise SystemExit(f"{metadata}: no [general] version; metadata.txt must sit at the repository root")
    return parser.get("general", "version").strip()


def package_files(root: Path = ROOT) -> list[tuple[Path, str]]:
    """(source file, path inside the zip) for everything the plugin ships, sorted by zip path."""

    def walk(folder: Path, prefix: str) -> list[tuple[Path, str]]:
        found = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDE_DIRS and not d.startswith("."))
            for name in sorted(filenames):
                path = Path(dirpath) / name
                keep = name.endswith(".onnx") and shipped_export(path)
                if not keep and any(fnmatch.fnmatch(name, pattern) for pattern in EXCLUDE_FILES):
                    continue
                found.append((path, f"{prefix}/{path.relative_to(folder).as_posix()}"))
        return found

    files = walk(root / PLUGIN, PLUGIN)
    files += walk(root / "training", f"{PLUGIN}/training")
    files.append((root / "metadata.txt", f"{PLUGIN}/metadata.txt"))
    for extra in ("LICENSE", "LICENSE.txt", "COPYING"):
        if (root / extra).is_file():
            files.append((root / extra, f"{PLUGIN}/{extra}"))
            break
    return sorted(files, key=lambda item: item[1])


def folders(arcnames: list[str]) -> list[str]:
    """Every folder above the given zip paths, parents first ("roadseg_plugin/", "roadseg_plugin/core/"...)."""
    found = {"/".join(name.split("/")[:i]) + "/" for name in arcnames for i in range(1, name.count("/") + 1)}
    return sorted(found)


def entry(arcname: str, mode: int, source: Path | None = None) -> zipfile.ZipInfo:
    """A zip entry with Unix permissions `mode` (0644 files, 0755 folders), whatever the checkout's
    own permissions: tools that apply them (unzip, file managers) give every user a readable plugin."""
    info = (zipfile.ZipInfo.from_file(source, arcname) if source is not None
            else zipfile.ZipInfo(arcname, time.localtime()[:6]))
    is_dir = arcname.endswith("/")
    info.external_attr = ((stat.S_IFDIR if is_dir else stat.S_IFREG) | mode) << 16 | (0x10 if is_dir else 0)
    info.create_system = 3  # Unix, so that the mode bits count
    info.compress_type = zipfile.ZIP_STORED if is_dir else zipfile.ZIP_DEFLATED
    return info


def build(out_dir: Path = ROOT / "dist", allow_missing_model: bool = False, root: Path = ROOT) -> Path:
    """Write the zip atomically and return its path."""
    version = read_version(root / "metadata.txt")
    files = package_files(root)
    models = [arc for _, arc in files if fnmatch.fnmatch(arc, f"{PLUGIN}/models/*.pt")]
    if not models and not allow_missing_model:
        raise SystemExit(f"no bundled model in {root / PLUGIN / 'models'} (*.pt); train or copy one there, "
                         "or pass --allow-missing-model for a plugin without it")
    if (root / PLUGIN / "training").exists():
        raise SystemExit(f"{root / PLUGIN / 'training'} exists; the package copies training/ there itself")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{PLUGIN}-{version}.zip"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=out_dir)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for folder in folders([arcname for _, arcname in files]):
                zf.writestr(entry(folder, DIR_MODE), b"")
            for source, arcname in files:
                with open(source, "rb") as src, zf.open(entry(arcname, FILE_MODE, source), "w",
                                                         force_zip64=source.stat().st_size > 2**31) as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    size = target.stat().st_size / 1e6
    print(f"{target} ({len(files)} files, {size:.1f} MB; model: {', '.join(models) or 'none'})")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="output folder (default: dist/)")
    parser.add_argument("--allow-missing-model", action="store_true",
                        help="build even when roadseg_plugin/models/ holds no .pt file")
    args = parser.parse_args(argv)
    build(args.out, args.allow_missing_model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
