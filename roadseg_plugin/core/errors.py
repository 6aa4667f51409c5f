"""Errors raised by RoadSeg. Each message names the file and says what to do."""
from __future__ import annotations


class RoadSegError(Exception):
    """Base of every error RoadSeg raises on bad input; the message is user-facing."""

    def __init__(self, path: object, problem: str, fix: str = "") -> None:
        self.path = str(path) if path is not None else ""
        self.problem = problem
        self.fix = fix
        where = f"{self.path}: " if self.path else ""
        tail = f"; {fix}" if fix else ""
        super().__init__(f"{where}{problem}{tail}")


class CheckpointError(RoadSegError, ValueError):
    """A model file is missing, damaged, unsafe or does not match its architecture."""


class DatasetError(RoadSegError, ValueError):
    """A training/evaluation folder or one of its files is unusable."""


class RasterError(RoadSegError, ValueError):
    """An input raster cannot be read or has unsupported bands."""


class ParamError(RoadSegError, ValueError):
    """An option has a value RoadSeg refuses; raised before any work starts.

    The message names the option and the value: `threshold 1.5: must lie strictly between 0 and 1; ...`.
    """

    def __init__(self, name: str, value: object, problem: str, fix: str = "") -> None:
        self.name, self.value = name, value
        super().__init__(f"{name} {value}", problem, fix)


class OutputError(RoadSegError, OSError):
    """An output file cannot be written."""


class Cancelled(Exception):  # noqa: N818 - the user cancelled: an outcome, not an error
    """Raised inside long work when the caller's cancel flag is set."""
