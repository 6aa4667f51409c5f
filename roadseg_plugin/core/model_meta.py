"""What a model was trained on and how to feed it (`ModelMeta`), read from a file without torch.

A RoadSeg checkpoint (.pt) is a `torch.save` zip holding plain types and tensors; its metadata
is read here with a restricted unpickler that never builds a tensor and refuses every global
outside the handful torch writes, so the dialog, the Processing provider and the CLI can show
and check a model before (or without) importing torch. Exported .onnx files carry the same
metadata as JSON under the `roadseg_meta` key.
"""
from __future__ import annotations

import datetime as _dt
import io
import json
import math
import os
import pickle
import sys
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError, ParamError

FORMAT = "roadseg-checkpoint"
ONNX_META_KEY = "roadseg_meta"


def _torch_version() -> str:
    torch = sys.modules.get("torch")  # only when already imported: reading metadata never imports torch
    return str(torch.__version__) if torch is not None else ""


@dataclass
class ModelMeta:
    """What a model was trained on and how to feed it."""

    arch: str = "unet"
    arch_config: dict[str, Any] = field(default_factory=dict)
    bands: list[int] = field(default_factory=lambda: [1, 2, 3])
    band_names: list[str] = field(default_factory=lambda: ["red", "green", "blue"])
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25])
    input_scale: float = 1.0 / 255.0
    gsd_m: float = 1.0
    tile: int = 256
    overlap: int = 32
    threshold: float = 0.5
    val_metrics: dict[str, float] = field(default_factory=dict)
    data: str = ""
    torch_version: str = field(default_factory=_torch_version)
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def in_channels(self) -> int:
        return len(self.bands)

    @property
    def depth(self) -> int:
        """U-Net depth: tiles must be multiples of 2**depth."""
        return int(self.arch_config.get("depth", 4))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: object = "") -> ModelMeta:
        """Build and check the metadata; a missing key or a wrong type names the key.

        Raises:
            CheckpointError: a required key is missing or a value cannot be used.
        """
        if not isinstance(data, dict):
            raise CheckpointError(path, "the model carries no metadata", "re-export it with this version of RoadSeg")
        for key in ("arch", "arch_config", "bands", "mean", "std", "threshold"):
            if key not in data:
                raise CheckpointError(path, f"metadata key {key!r} is missing",
                                      "re-export the model with this version of RoadSeg")
        known = set(cls.__dataclass_fields__)
        meta = cls(**{k: v for k, v in data.items() if k in known})
        meta._check(path)
        return meta

    def _check(self, path: object) -> None:
        def bad(key: str, problem: str) -> CheckpointError:
            return CheckpointError(path, f"metadata key {key!r} {problem}",
                                   "the file was edited or is damaged; retrain or re-export the model")

        if not isinstance(self.arch_config, dict):
            raise bad("arch_config", "is not a mapping")
        if not _is_list(self.bands, int) or not self.bands or min(self.bands) < 1:
            raise bad("bands", f"must be a list of band numbers, not {self.bands!r}")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if not _is_list(values, (int, float)) or len(values) != len(self.bands):
                raise bad(key, f"must hold one number per band ({len(self.bands)}), not {values!r}")
        if any(not math.isfinite(s) or s <= 0 for s in self.std):
            raise bad("std", f"must be positive (got {self.std}); a zero std gives NaN probabilities")
        for key in ("tile", "overlap"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < (1 if key == "tile" else 0):
                raise bad(key, f"must be a whole number of pixels, not {value!r}")
        for key, low, high in (("threshold", 0.0, 1.0), ("gsd_m", 0.0, math.inf), ("input_scale", 0.0, math.inf)):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not low < value < high:
                raise bad(key, f"must be a number in ({low:g}, {high:g}), not {value!r}")
        depth = self.arch_config.get("depth", 4)
        if not isinstance(depth, int) or depth < 1:
            raise bad("arch_config.depth", f"must be a whole number >= 1, not {depth!r}")
        if self.tile % 2**depth:
            raise bad("tile", f"({self.tile}) must be a multiple of {2**depth} for a depth-{depth} U-Net")
        self._check_sizes(path)
        if not isinstance(self.extra, dict):
            raise bad("extra", "is not a mapping")
        from .normalise import NORMALISATION_KEY, Radiometry  # numpy: only once metadata is checked

        try:  # radiometric normalisation (absent: "off", how every older checkpoint was trained)
            Radiometry.from_dict(self.extra.get(NORMALISATION_KEY)).check(len(self.bands))
        except ValueError as exc:
            raise bad(f"extra.{NORMALISATION_KEY}", str(exc)) from None

    def _check_sizes(self, path: object) -> None:
        """The model's overlap must fit its tile, and its width, depth and tile this machine's memory (`limits`)."""
        from .limits import check_model_size, check_overlap, check_tile

        base = self.arch_config.get("base_channels", 16)
        if not isinstance(base, int) or isinstance(base, bool) or base < 1:
            raise CheckpointError(path, f"metadata key 'arch_config.base_channels' must be a whole number >= 1, "
                                  f"not {base!r}", "the file was edited or is damaged; retrain or re-export the model")
        try:
            check_overlap(self.overlap, self.tile)
            check_model_size(self.in_channels, base, self.depth)
            check_tile(self.tile, 1, base, 2**self.depth)
        except ParamError as exc:
            raise CheckpointError(path, f"metadata key {exc.name!r} ({exc.value}) {exc.problem}",
                                  "the file was edited or is damaged; retrain or re-export the model") from None


def _is_list(values: object, kind: type | tuple[type, ...]) -> bool:
    return isinstance(values, (list, tuple)) and all(isinstance(v, kind) and not isinstance(v, bool)
                                                     for v in values)


# ---------------------------------------------------------------- reading without torch

class _Stub:
    """Stands in for a torch storage or tensor while the metadata is read."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __call__(self, *args: object, **kwargs: object) -> _Stub:
        return _Stub()


# torch.save writes only these globals for tensors, parameters and ordered state dicts.
_TORCH_GLOBALS = {"_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_tensor", "_rebuild_device_tensor_from_numpy"}


class _MetaUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            import collections

            return collections.OrderedDict
        if module == "torch._utils" and name in _TORCH_GLOBALS:
            return _Stub()
        if module == "torch" and (name.endswith("Storage") or name in ("float32", "float16", "bfloat16", "int64")):
            return _Stub
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")

    def persistent_load(self, pid: object) -> Any:
        return _Stub()


def read_checkpoint_payload_light(path: Path) -> dict[str, Any]:
    """The checkpoint's top-level dict with every tensor replaced by a stub (no torch needed).

    Raises:
        CheckpointError: not a RoadSeg checkpoint, damaged, or holding code (pickled objects).
    """
    not_checkpoint = ("not a PyTorch checkpoint", "pass a .pt file written by `python -m training train`")
    try:
        with open(path, "rb") as fh:
            if fh.read(2) != b"PK":  # torch.save writes a zip archive
                raise CheckpointError(path, *not_checkpoint)
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if not names:
                raise CheckpointError(path, *not_checkpoint)
            data = archive.read(names[0])
    except CheckpointError:
        raise
    except PermissionError:
        raise CheckpointError(path, "cannot be read (permission denied)",
                              "check the file's permissions, or copy it somewhere you can read") from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(path, f"file is truncated or damaged ({type(exc).__name__})",
                              "copy the model file again or retrain") from None
    try:
        payload = _MetaUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as exc:
        if "is not allowed" in str(exc):
            raise CheckpointError(path, "the file holds Python code (pickled objects) and was not loaded",
                                  "use a checkpoint written by RoadSeg (tensors and plain types only)") from None
        raise CheckpointError(path, "file is truncated or damaged", "copy the model file again or retrain") from None
    except Exception:  # noqa: BLE001 - any other unpickling failure means a damaged file
        raise CheckpointError(path, "file is truncated or damaged", "copy the model file again or retrain") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(path, "not a RoadSeg checkpoint", "pass a .pt file written by `python -m training train`")
    return payload


def read_onnx_meta(path: str | os.PathLike) -> ModelMeta:
    """The `ModelMeta` an exported .onnx file carries (read with `onnx`, else ONNX Runtime).

    Raises:
        CheckpointError: missing, not ONNX, or not exported by RoadSeg.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "model file not found", "check the path or choose another model")
    return meta_from_properties(_onnx_metadata(path), path)


def meta_from_properties(props: dict[str, str], path: object) -> ModelMeta:
    """The `ModelMeta` in an ONNX file's metadata properties (read by onnx or ONNX Runtime).

    Raises:
        CheckpointError: the file was not exported by RoadSeg, or its metadata is unusable.
    """
    if ONNX_META_KEY not in props:
        raise CheckpointError(path, "ONNX file carries no RoadSeg metadata",
                              "export it with `python -m roadseg_plugin export-onnx`")
    try:
        data = json.loads(props[ONNX_META_KEY])
    except ValueError:
        raise CheckpointError(path, "the RoadSeg metadata in this ONNX file is not valid JSON",
                              "export it again") from None
    return ModelMeta.from_dict(data, path)


def _onnx_metadata(path: Path) -> dict[str, str]:
    not_onnx = "export it again with `python -m roadseg_plugin export-onnx`"
    try:
        import onnx
    except ImportError:
        onnx = None  # type: ignore[assignment]
    if onnx is not None:
        try:
            graph = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError and friends
            raise CheckpointError(path, f"not an ONNX model ({str(exc)[:80]})", not_onnx) from None
        return {p.key: p.value for p in graph.metadata_props}
    try:
        import onnxruntime as ort
    except ImportError:
        raise CheckpointError(path, "reading an ONNX model needs the onnx or onnxruntime package",
                              "install the CPU inference packages (Plugins > RoadSeg > Install packages)") from None
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph types
        raise CheckpointError(path, f"not an ONNX model ({str(exc).splitlines()[0][:80]})", not_onnx) from None
    return dict(session.get_modelmeta().custom_metadata_map)


def read_meta(path: Path) -> ModelMeta:
    """`ModelMeta` of a .pt checkpoint or .onnx model (see `params.read_model_info`)."""
    if path.is_file() and not os.access(path, os.R_OK):
        raise CheckpointError(path, "cannot be read (permission denied)",
                              "check the file's permissions, or copy it somewhere you can read")
    if path.suffix.lower() == ".onnx":
        return read_onnx_meta(path)
    if not path.is_file():
        raise CheckpointError(path, "model file not found", "check the path or choose another model")
    return ModelMeta.from_dict(read_checkpoint_payload_light(path).get("meta", {}), path)
