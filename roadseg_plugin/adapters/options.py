"""The core's options as QGIS shows them, shared by the Segment roads dialog and the Processing
algorithms: how each option is edited (`option_kind`), its label and choices, the devices offered
(`devices`: "cuda" only where there is a GPU), band lists, the model file filter; and the one place
the core's messages are put in QGIS's words (`qgis_message`).

The core words its fixes for the command line (`pass --model`, `use --device cpu`); `qgis_message`
rewords them for QGIS, naming options by their labels (by an algorithm's own parameters when
given one).

Plain Python: not even QGIS is imported (an algorithm is only asked for its parameters), nor torch,
rasterio or the heavy core (the provider loads while QGIS starts, before those packages are known
to be installed).
"""
from __future__ import annotations

import re
import sys
from dataclasses import Field, fields
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.errors import ParamError, RoadSegError
from ..core.params import DEVICES, InferenceParams, VectoriseParams, describe
from ..install.deps import missing_dependencies

if TYPE_CHECKING:
    from qgis.core import QgsProcessingAlgorithm

MODEL_FILTER = "RoadSeg model (*.pt *.onnx)"


def cuda_available(load: bool = False) -> bool:
    """Whether to offer the `cuda` device.

    Once torch is imported the answer is exact. `load` imports it first when it is installed
    (the dialog, opened after the dependency check); without `load` torch is not imported, so
    the provider lists its algorithms fast while QGIS starts, and a CUDA build of torch counts
    (a machine without a GPU then gets the core's clear "no CUDA GPU" error).
    """
    if load and "torch" not in sys.modules and "torch" not in missing_dependencies():
        try:
            import torch  # noqa: F401
        except Exception:  # noqa: BLE001 - a broken torch (missing CUDA libraries...) offers no GPU
            return False
    if "torch" in sys.modules:
        return bool(sys.modules["torch"].cuda.is_available())
    spec = find_spec("torch") if "torch" not in missing_dependencies() else None
    if spec is None or not spec.submodule_search_locations:
        return False
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    return any(lib.glob("*torch_cuda*"))


def devices(load: bool = False) -> list[str]:
    """`core.params.DEVICES`, without "cuda" when there is no GPU to offer (see `cuda_available`)."""
    return [d for d in DEVICES if d != "cuda" or cuda_available(load)]


# ---- how each option is edited ------------------------------------------------------------------
_SPECIAL_KINDS = {"model": "model", "extent": "extent", "bands": "bands"}


def option_kind(params_type: type, f: Field) -> str:
    """How an option is edited: model, extent, bands, enum, bool, int or float.

    The dialog and Processing both ask. An option of a type no adapter knows fails here, loudly.
    """
    if f.name in _SPECIAL_KINDS:
        return _SPECIAL_KINDS[f.name]
    if f.metadata.get("choices"):
        return "enum"
    kind = str(f.type).split("|")[0].strip()  # annotations are strings: "int | None" -> "int"
    if kind in ("bool", "int", "float"):
        return kind
    raise TypeError(f"{params_type.__name__}.{f.name}: no editor for an option of type {f.type}")


def option_choices(params_type: type, name: str) -> list[str]:
    """The values offered for an enum option; "cuda" only where there is a GPU (see `devices`)."""
    return devices() if name == "device" else list(describe(params_type, name)["choices"])


def option_label(params_type: type, name: str) -> str:
    info = describe(params_type, name)
    return f"{info['label']} ({info['unit']})" if info["unit"] else info["label"]


def parameter_key(name: str) -> str:
    """The Processing parameter of the option `name`: its name in upper case."""
    return name.upper()


def band_numbers(text: str) -> tuple[int, ...]:
    """"3,2,1" -> (3, 2, 1); empty text -> (); anything else is a ParamError naming the option."""
    try:
        return tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise ParamError("bands", text, "must be band numbers from 1, separated by commas", "e.g. 3,2,1") from None


# ---- QGIS wording of the core's messages -------------------------------------------------------
_COMMANDS = (  # the command line's words -> QGIS's
    (re.compile(r"`python -m training train[^`]*`"), 'the "Train model from drawn road lines" algorithm'),
    (re.compile(r"`python -m roadseg_plugin ([\w-]+)[^`]*`"), r"RoadSeg's command line (\1, in a terminal)"),
    (re.compile(r"(?<![\w/.-])unset(?![\w/.-])"), "empty"),  # "leave it unset": a parameter left empty
)
_OPTION = re.compile(r"(?:\b(pass|use|set|or) )?(?<![\w/.-])--([a-z][a-z0-9-]*)(?:[ =](?!or\b|and\b)([^\s,;)`]+))?")
_PASS = re.compile(r"(^|[;:,(]\s*|\bor\s+|\band\s+)pass\b")  # the imperative: "; pass a .pt file"
_ALIASES = {"model": ("MODEL", "INIT_MODEL"), "init": ("INIT_MODEL",), "out": ("OUTPUT_FOLDER",)}


def option_title(name: str, alg: QgsProcessingAlgorithm | None = None) -> str:
    """The label QGIS shows for the core's option `name` (`tile`, `--min-length`...), in quotes:
    the algorithm's own parameter, else the option's label from `core.params`, else the name."""
    name = name.lstrip("-").replace("-", "_")
    for key in _ALIASES.get(name, (parameter_key(name),)):
        param = alg.parameterDefinition(key) if alg is not None else None
        if param is not None:
            return f'"{param.description()}"'
    for params_type in (InferenceParams, VectoriseParams):
        if name in {f.name for f in fields(params_type)}:
            return f'"{describe(params_type, name)["label"]}"'
    return f'"{name.replace("_", " ")}"'


def qgis_words(text: str, alg: QgsProcessingAlgorithm | None = None) -> str:
    """`text` with the command line's spellings (`use --device cpu`, `python -m training train`)
    in QGIS's words (`set "Device" to cpu`, the algorithm's name)."""
    for pattern, replacement in _COMMANDS:
        text = pattern.sub(replacement, text)

    def option(match: re.Match) -> str:
        verb, name, value = match.groups()
        title = option_title(name, alg)
        lead = "or " if verb == "or" else "set " if verb else ""
        if value:
            return f"{lead}{title} to {value}" if lead else f"{title} = {value}"
        return f"{lead}{title}"

    return _PASS.sub(r"\1choose", _OPTION.sub(option, text))


def qgis_message(error: BaseException | str, alg: QgsProcessingAlgorithm | None = None) -> str:
    """An error (or warning) of the core as QGIS shows it: options by their labels, fixes in
    QGIS's words, file paths untouched. The one place the core's CLI wording is translated;
    the dialog and the task can use it too."""
    if isinstance(error, ParamError):
        fix = f"; {qgis_words(error.fix, alg)}" if error.fix else ""
        return f"{option_title(error.name, alg)} = {error.value}: {qgis_words(error.problem, alg)}{fix}"
    if isinstance(error, RoadSegError):
        where = f"{error.path}: " if error.path else ""
        fix = f"; {qgis_words(error.fix, alg)}" if error.fix else ""
        return f"{where}{qgis_words(error.problem, alg)}{fix}"
    return qgis_words(str(error), alg)
