"""ONNX files of a checkpoint: the fp32 export, where exports are cached, and the int8 lookup.

The exported graph takes normalised (N, C, H, W) float32 tiles and returns (N, H, W) road
probabilities (the sigmoid is inside the graph). The checkpoint's `ModelMeta` travels in the
file as JSON under the `roadseg_meta` metadata key, so an .onnx file alone is a usable model.
The ONNX Runtime backends that run these files are in `backends/`; the int8 quantisation is in
`quantize` (which needs the engine to read calibration tiles, so nothing here imports it).

Nothing here imports torch at module level: exporting needs it, finding and running an
existing export does not, so a checkpoint whose `.onnx` files lie beside it (the bundled model,
every `best.pt` training writes) runs where torch is not installed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any

from .atomic import temporary_sibling
from .errors import CheckpointError, OutputError
from .model_meta import ONNX_META_KEY as META_KEY
from .model_meta import ModelMeta
from .params import model_file

log = logging.getLogger(__name__)
DIGEST_KEY = "roadseg_checkpoint_sha256"
PRECISION_KEY = "roadseg_precision"  # present (JSON) only in int8 models
OPSET = 17


def checkpoint_digest(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a checkpoint file's bytes."""
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def user_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/roadseg`, else `~/.cache/roadseg`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "roadseg"


def cached_onnx_path(checkpoint: Path, digest: str, suffix: str = ".onnx") -> Path:
    """`<stem>.<sha12><suffix>` beside the checkpoint, or in the user cache when that folder is
    read-only and holds none."""
    name = f"{checkpoint.stem}.{digest[:12]}{suffix}"
    beside = checkpoint.parent / name
    if beside.is_file() or os.access(checkpoint.parent, os.W_OK):
        return beside
    return user_cache_dir() / name


def export_onnx(checkpoint: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                deepness: bool = False) -> Path:
    """Export a RoadSeg checkpoint to ONNX (opset 17, dynamic batch, height and width).

    Args:
        checkpoint: the .pt file; None means the bundled model.
        out: the .onnx file to write. None caches it as `<stem>.<sha12>.onnx` beside the
            checkpoint (or in `~/.cache/roadseg` when that folder is read-only) and reuses an
            existing export of the same checkpoint bytes.
        deepness: also a model the Deepness plugin loads: its metadata keys (`core.deepness`)
            and tiles of the model's size fixed in the graph (Deepness reads its tile size from
            them); only with `out`. RoadSeg runs such a file too (with that tile size).

    Returns:
        The path of the ONNX file.

    Raises:
        CheckpointError: the checkpoint is missing or damaged, or torch (needed to export) is
            not installed and no export of this checkpoint exists.
        OutputError: the ONNX file cannot be written.
    """
    checkpoint = model_file(checkpoint)
    if not checkpoint.is_file():
        raise CheckpointError(checkpoint, "model file not found", "check the path or pass --model")
    digest = checkpoint_digest(checkpoint)
    if out is not None:
        return _export_to(*_load_for_export(checkpoint), digest, Path(out), deepness)
    if deepness:
        raise ValueError("a Deepness export needs a file to write (out)")
    cached = find_fp32(checkpoint, digest)
    if cached is not None:
        return cached
    cached = cached_onnx_path(checkpoint, digest)
    if cached.exists() and export_digest(cached) is None:  # not an export of ours: never replaced
        cached = user_cache_dir() / cached.name
    net, meta = _load_for_export(checkpoint)
    try:
        return _export_to(net, meta, digest, cached)
    except OutputError:
        fallback = user_cache_dir() / cached.name
        if fallback == cached:
            raise
        return fallback if fallback.is_file() else _export_to(net, meta, digest, fallback)


def _load_for_export(checkpoint: Path) -> tuple[object, ModelMeta]:
    """The network and metadata of a checkpoint; a CheckpointError saying what to install without torch."""
    try:
        from .checkpoint import load_model
    except ImportError as exc:
        if exc.name != "torch":
            raise
        raise CheckpointError(checkpoint, "has no ONNX export beside it and needs torch to export it to ONNX",
                              "install the Training and GPU packages (Plugins > RoadSeg > Install packages...) "
                              "or pass an .onnx model") from None
    return load_model(checkpoint)


def export_digest(path: str | os.PathLike) -> str | None:
    """The checkpoint hash an exported ONNX file carries; None when it is not a readable RoadSeg export."""
    from .model_meta import _onnx_metadata

    try:
        return _onnx_metadata(Path(path)).get(DIGEST_KEY)
    except CheckpointError:
        return None


def _verified(path: Path, digest: str) -> bool:
    """`path` is an export of the checkpoint whose full hash is `digest` (the name alone is not
    trusted: a file copied or written under it would run in the checkpoint's place)."""
    if not path.is_file():
        return False
    carried = export_digest(path)
    if carried != digest:
        log.warning("%s: not an export of this checkpoint (it carries %s); not used", path,
                    (carried or "no RoadSeg checkpoint hash")[:12])
        return False
    return True


def is_export_of(path: str | os.PathLike, checkpoint: str | os.PathLike) -> bool:
    """`path` is a name `checkpoint`'s ONNX exports are cached under (`<stem>.<sha12>[.int8].onnx`
    beside it or in the user cache), whatever the hash: such a file is never an output."""
    path, checkpoint = Path(path), Path(checkpoint)
    if not re.fullmatch(re.escape(checkpoint.stem) + r"\.[0-9a-f]{12}(\.int8)?\.onnx", path.name):
        return False
    folder = os.path.realpath(path.parent)
    return folder in (os.path.realpath(checkpoint.parent), os.path.realpath(user_cache_dir()))


def find_fp32(checkpoint: str | os.PathLike | None = None, digest: str | None = None) -> Path | None:
    """The fp32 export of exactly this checkpoint (default: the bundled one) beside it or in the
    user cache, or None. Needs no torch: the name carries the checkpoint's hash, and the file the
    full hash, which must match."""
    checkpoint = model_file(checkpoint)
    if not checkpoint.is_file():
        return None
    digest = digest or checkpoint_digest(checkpoint)
    for path in (cached_onnx_path(checkpoint, digest), user_cache_dir() / f"{checkpoint.stem}.{digest[:12]}.onnx"):
        if _verified(path, digest):
            return path
    return None


def remove_stale_exports(checkpoint: str | os.PathLike) -> list[Path]:
    """Delete `<stem>.<sha12>[.int8].onnx` files beside `checkpoint` made from other versions of it
    (a retrained `best.pt`); returns what was deleted. Other files are never touched."""
    checkpoint = Path(checkpoint)
    keep = checkpoint_digest(checkpoint)[:12] if checkpoint.is_file() else None
    removed = []
    for path in checkpoint.parent.glob(f"{checkpoint.stem}.*.onnx"):
        tag = path.name[len(checkpoint.stem) + 1:].split(".")[0]
        if len(tag) == 12 and all(c in "0123456789abcdef" for c in tag) and tag != keep:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def copy_with_exports(checkpoint: str | os.PathLike, target: str | os.PathLike) -> list[Path]:
    """Copy a checkpoint and its fp32/int8 ONNX files (renamed after the target's stem, same
    hash) so that the copy runs without torch too; returns the files written."""
    import shutil

    checkpoint, target = Path(checkpoint), Path(target)
    digest = checkpoint_digest(checkpoint)[:12]
    target.parent.mkdir(parents=True, exist_ok=True)
    written = [Path(shutil.copyfile(checkpoint, target))]
    for suffix in (".onnx", ".int8.onnx"):
        source = checkpoint.with_name(f"{checkpoint.stem}.{digest}{suffix}")
        if source.is_file():
            written.append(Path(shutil.copyfile(source, target.with_name(f"{target.stem}.{digest}{suffix}"))))
    return written


def _export_to(net: object, meta: ModelMeta, digest: str, out: Path, deepness: bool = False) -> Path:
    """Write the ONNX file through a temporary name in the same folder (never half a file)."""
    try:
        tmp = temporary_sibling(out)
    except OSError as exc:
        raise OutputError(out, f"cannot write here ({exc.strerror})", "choose a writable folder") from None
    try:
        _write_onnx(net, meta, digest, tmp, deepness)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _write_onnx(net: Any, meta: ModelMeta, digest: str, path: Path, deepness: bool = False) -> None:
    import onnx
    import torch

    class Probabilities(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.model(x))[:, 0]

    example = torch.zeros(1, meta.in_channels, meta.tile, meta.tile)
    axes = {"image": {0: "batch", 2: "height", 3: "width"}, "prob": {0: "batch", 1: "height", 2: "width"}}
    if deepness:  # Deepness sets its tile size from the input's fixed width
        axes = {"image": {0: "batch"}, "prob": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about the (constant) input-shape check
        torch.onnx.export(Probabilities(net).eval(), (example,), str(path), opset_version=OPSET, dynamo=False,
                          input_names=["image"], output_names=["prob"], dynamic_axes=axes)
    graph = onnx.load(str(path))
    entries = {META_KEY: json.dumps(meta.to_dict()), DIGEST_KEY: digest}
    if deepness:
        from .deepness import deepness_metadata

        entries.update(deepness_metadata(meta))
    for key, value in entries.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, str(path))


def int8_path(checkpoint: str | os.PathLike, digest: str | None = None) -> Path:
    """Where the int8 model of `checkpoint` lives: `<stem>.<sha12>.int8.onnx` beside it (or in
    the user cache when the checkpoint's folder is read-only and holds none)."""
    checkpoint = Path(checkpoint)
    return cached_onnx_path(checkpoint, digest or checkpoint_digest(checkpoint), ".int8.onnx")


def find_int8(checkpoint: str | os.PathLike | None = None) -> Path | None:
    """The int8 model made from exactly this checkpoint (default: the bundled one), or None.

    The name carries the checkpoint's hash and the file the full hash, so a retrained or
    replaced checkpoint never runs with a stale int8 model, nor with another model copied under
    its name: it falls back to fp32 until `quantize_model` is run again.
    """
    checkpoint = model_file(checkpoint)
    if not checkpoint.is_file():
        return None
    digest = checkpoint_digest(checkpoint)
    path = int8_path(checkpoint, digest)
    return path if _verified(path, digest) else None
