"""`region.json`: what a region run is (inputs, model, options) and which of its parts are done.

The client is its only writer. It records a part once the task that wrote it reported back
(with the part's sha256), and saves at most every `SAVE_EVERY` seconds and when the run ends,
however it ends (a temporary file renamed into place: a reader never sees half of it). A part
on disk that the manifest does not list, or whose hash differs, is made again on `--resume`.

A folder holding a manifest belongs to that run: a new run there is refused, and `--resume` only
continues it with the same inputs (path, size and modification time), the same model bytes
(sha256) and the same options that shape the parts.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..atomic import temporary_sibling
from ..errors import OutputError
from ..params import SET_BY_INFERENCE, InferenceParams, VectoriseParams
from .parts import sha256

NAME = "region.json"
FORMAT = "roadseg-region/1"
SAVE_EVERY = 1.0  # seconds
# Options that do not change what the parts hold (the lines' clean-up runs again at the end).
FREE_OPTIONS = {"device", "batch_size", "min_length", "spur_length", "gap", "tolerance", "smooth", "format"}


def input_identity(source: str) -> dict[str, Any]:
    try:
        st = os.stat(source)
        return {"path": source, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    except OSError:  # a GDAL dataset name that is no file
        return {"path": source}


def options_identity(params: InferenceParams, vectorise: VectoriseParams, chunk: int) -> dict[str, Any]:
    values = {f.name: getattr(params, f.name) for f in fields(params)}
    values.update({f.name: getattr(vectorise, f.name) for f in fields(vectorise) if f.name not in SET_BY_INFERENCE})
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items() if k not in FREE_OPTIONS}
    values["model"] = None  # the model is identified by its bytes
    return {**values, "chunk": chunk}


class Manifest:
    """The manifest of the run in `folder` (see the module notes)."""

    def __init__(self, folder: Path, identity: dict[str, Any], parts: dict[str, dict] | None = None) -> None:
        self.folder, self.identity = folder, identity
        self.parts: dict[str, dict] = parts or {}
        self.complete = False
        self._saved = 0.0

    @property
    def path(self) -> Path:
        return self.folder / NAME

    @classmethod
    def open(cls, folder: Path, identity: dict[str, Any], resume: bool) -> tuple[Manifest, list[str]]:
        """The manifest for a run with `identity` in `folder`: a new one, or with `resume` the one there.

        Returns:
            (the manifest, notes for the user).

        Raises:
            OutputError: the folder holds another run (or this one without `resume`), or a
                manifest that cannot be read.
        """
        path = folder / NAME
        if not path.exists():
            if (folder / "parts").exists():
                raise OutputError(folder, "holds a parts folder but no region.json (not a RoadSeg region run, or "
                                  "its manifest was removed)", "choose an empty output folder")
            return cls(folder, identity), ([f"{folder}: nothing to resume; starting a new run"] if resume else [])
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != FORMAT:
                raise ValueError(data.get("format"))
        except (OSError, ValueError) as exc:
            raise OutputError(path, f"cannot read this region manifest ({exc})",
                              "choose another output folder") from None
        if not resume:
            raise OutputError(folder, "holds the parts of another region run (region.json)",
                              "pass --resume to continue that run, or choose another output folder")
        differs = [what for what in ("inputs", "model", "options") if data.get(what) != identity[what]]
        if differs:
            raise OutputError(folder, f"holds a region run with other {', '.join(differs)}",
                              "resume with the inputs, model and options of that run, or choose another "
                              "output folder")
        return cls(folder, identity, data.get("parts", {})), []

    def finished(self, name: str) -> bool:
        """Whether part `name` (relative path) is recorded and on disk with its recorded hash."""
        entry = self.parts.get(name)
        file = self.folder / name
        if entry is None or not file.is_file():
            return False
        if sha256(file) != entry.get("sha256"):
            del self.parts[name]
            return False
        return True

    def record(self, name: str, info: dict[str, Any]) -> None:
        self.parts[name] = {k: info[k] for k in ("sha256", "seconds") if k in info}
        if time.monotonic() - self._saved >= SAVE_EVERY:
            self.save()

    def save(self) -> None:
        """Write the manifest atomically (temporary sibling, then rename)."""
        data = {"format": FORMAT, **self.identity, "complete": self.complete, "parts": self.parts}
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = temporary_sibling(self.path)
        try:
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        self._saved = time.monotonic()
