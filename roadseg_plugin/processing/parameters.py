"""The Processing parameters generated from `core.params` and their help. Used through `base`
(which re-exports these names).

`add_parameters` makes one Processing parameter per field of `InferenceParams` /
`VectoriseParams` (key: the field name in upper case; label, unit, help, default, choices and
the advanced flag from the field's metadata) and `read_parameters` builds the dataclass back,
so an option added to the core appears in the toolbox, qgis_process and the help panel without
touching an algorithm. How each option is edited, its label and choices (the device list among
them) and the QGIS wording of the core's messages are `adapters.options`, shared with the
Segment roads dialog.

Lengths in metres become `QgsProcessingParameterDistance`s linked to the input layer. QGIS
3.22's widget hands them over in the layer CRS's units (it ignores `setDefaultUnit` once a
parent is set), so `read_parameters` turns them back into the metres the core takes
(`metres_per_unit`). Each parameter's help goes to `setHelp` (where QGIS has it) and, with its
default, to the help panel (`parameters_help`), which the toolbox and `qgis_process help` show.

Plain Python and QGIS only: no torch, rasterio or heavy core import (the provider loads while
QGIS starts, before those packages are known to be installed).
"""
from __future__ import annotations

import configparser
from dataclasses import Field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterDistance,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
    QgsUnitTypes,
)

from ..adapters.options import (
    MODEL_FILTER,
    band_numbers,
    option_choices,
    option_kind,
    option_label,
    parameter_key,
    qgis_message,
    qgis_words,
)
from ..core.errors import ParamError
from ..core.params import BUNDLED_MODEL, describe

PLUGIN_DIR = Path(__file__).resolve().parent.parent


# ---- parameters generated from core.params ----------------------------------------------------
def is_distance(params_type: type, name: str) -> bool:
    """A length in metres measured on the layer (not `gsd`, the pixel size of a raster without CRS)."""
    return describe(params_type, name)["unit"] == "m" and name != "gsd"


def metres_per_unit(crs: Any) -> float:
    """Metres per unit of `crs`: what a Distance parameter linked to a layer in `crs` is worth.

    QGIS 3.22's widget hands distances over in the layer CRS's units (a US-feet layer: feet,
    whatever unit the user picked). Degrees (and no CRS) count as metres: road lengths in
    degrees mean nothing, and the core reads such rasters on a metre grid anyway.
    """
    if crs is None or not crs.isValid():
        return 1.0
    units = crs.mapUnits()
    if QgsUnitTypes.unitType(units) != QgsUnitTypes.Standard:
        return 1.0
    return QgsUnitTypes.fromUnitToUnitFactor(units, QgsUnitTypes.DistanceMeters)


def set_help(param: QgsProcessingParameterDefinition, text: str) -> QgsProcessingParameterDefinition:
    """Give `param` its help: `setHelp` where QGIS has it, and always the metadata `parameters_help` reads."""
    if hasattr(param, "setHelp"):
        param.setHelp(text)
    param.setMetadata({**param.metadata(), "roadseg_help": text})
    return param


# Upper bounds of the whole-number options in Processing. QGIS 3.22's spin box holds a 32-bit
# int: a larger maximum (1e12 here once) wraps to -2147483648, and the field then holds no value
# at all ("Wrong or missing parameter value", "Not set" whatever is typed). Each bound is what one
# machine's memory allows, not a preference; the core checks the lower bounds.
INTEGER_MAXIMUM = {
    "tile": 8192,  # one 8192 px tile: 0.8 GB of input, 4.3 GB of first-level U-Net activations
    "overlap": 4095,  # under half the largest tile
    "batch_size": 1024,  # 1024 tiles of 256 px: 4.3 GB of first-level activations
    "block_size": 16384,  # a vectoriser block: mask + distance transform, 16384^2 x 9 B = 2.4 GB
    "halo": 1024,  # roads up to ~1.4 km wide; a halo is re-read around every block
}
INT32_MAX = 2**31 - 1  # what QSpinBox holds


def integer_maximum(name: str) -> int:
    """The Processing maximum of the whole-number option `name` (see INTEGER_MAXIMUM)."""
    return min(INTEGER_MAXIMUM.get(name, INT32_MAX), INT32_MAX)


def make_parameter(params_type: type, f: Field, parent: str | None = None) -> QgsProcessingParameterDefinition:
    """The Processing parameter of one option; an option without default is optional (empty: None).

    With `parent` (the input layer's key) lengths in metres are Distance parameters linked to it.
    """
    info, key, label = describe(params_type, f.name), parameter_key(f.name), option_label(params_type, f.name)
    default, kind = info["default"], option_kind(params_type, f)
    if kind == "model":  # shown as the bundled model's path; emptied, it is still the bundled model
        param = QgsProcessingParameterFile(key, label, QgsProcessingParameterFile.File, "", str(BUNDLED_MODEL),
                                           True, MODEL_FILTER)
    elif kind == "extent":
        param = QgsProcessingParameterExtent(key, label, None, True)
    elif kind == "bands":
        param = QgsProcessingParameterString(key, label, None, False, True)
    elif kind == "enum":
        param = QgsProcessingParameterEnum(key, label, option_choices(params_type, f.name), False, default,
                                           default is None, True)
    elif kind == "bool":
        param = QgsProcessingParameterBoolean(key, label, bool(default))
    elif kind == "float" and parent and is_distance(params_type, f.name):  # the widget shows the unit
        param = QgsProcessingParameterDistance(key, info["label"], default, parent, default is None, 0.0, 1e12)
        param.setDefaultUnit(QgsUnitTypes.DistanceMeters)
    elif kind == "int":
        param = QgsProcessingParameterNumber(key, label, QgsProcessingParameterNumber.Integer, default,
                                             default is None, 0, integer_maximum(f.name))
    else:  # every other number is a length or a probability
        maximum = 1.0 if info["unit"] == "0-1" else 1e12
        param = QgsProcessingParameterNumber(key, label, QgsProcessingParameterNumber.Double, default,
                                             default is None, 0.0, maximum)
    set_help(param, qgis_words(info["help"]))
    if info["advanced"]:
        param.setFlags(param.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
    return param


def add_parameters(alg: QgsProcessingAlgorithm, params_type: type, skip: tuple[str, ...] = (),
                   parent: str | None = None) -> None:
    """One Processing parameter per field of `params_type` (but `skip`), keys in upper case;
    lengths in metres linked to the layer parameter `parent` when given (see `make_parameter`)."""
    for f in fields(params_type):
        if f.name not in skip:
            alg.addParameter(make_parameter(params_type, f, parent))


def given(parameters: dict[str, Any], key: str) -> bool:
    """Whether `parameters` holds a value for `key` (an optional parameter left empty holds None)."""
    value = parameters.get(key)
    return not (value is None or value == "" or (hasattr(value, "isNull") and value.isNull()))


def _read(alg: QgsProcessingAlgorithm, params_type: type, f: Field, parameters: dict[str, Any],
          context: QgsProcessingContext, crs: Any) -> Any:
    key, kind = parameter_key(f.name), option_kind(params_type, f)
    if kind == "model":
        return alg.parameterAsFile(parameters, key, context) or None
    if kind == "enum":
        return alg.parameterAsEnumString(parameters, key, context) or None
    if kind == "bool":
        return alg.parameterAsBoolean(parameters, key, context)
    if not given(parameters, key) and alg.parameterDefinition(key).defaultValue() is None:
        return None  # an optional option left empty: the core's default (the model's, the raster's...)
    if kind == "extent":
        rect = (alg.parameterAsExtent(parameters, key, context, crs) if crs is not None
                else alg.parameterAsExtent(parameters, key, context))
        return None if rect.isNull() else (rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum())
    if kind == "bands":
        return band_numbers(alg.parameterAsString(parameters, key, context)) or None
    if kind == "int":
        return alg.parameterAsInt(parameters, key, context)
    value = alg.parameterAsDouble(parameters, key, context)
    if isinstance(alg.parameterDefinition(key), QgsProcessingParameterDistance):
        return value * metres_per_unit(crs)  # in the layer CRS's units -> metres
    return value


def read_parameters(alg: QgsProcessingAlgorithm, params_type: type, parameters: dict[str, Any],
                    context: QgsProcessingContext, crs: Any = None) -> Any:
    """The `params_type` described by the algorithm's parameters (see `add_parameters`).

    Options the algorithm has no parameter for keep their defaults. `crs`: the input layer's
    CRS, which extents are wanted in and Distance parameters are measured in.

    Raises:
        QgsProcessingException: a value the core refuses, with the core's one-line message
            worded for QGIS (`qgis_message`).
    """
    try:
        return params_type(**{f.name: _read(alg, params_type, f, parameters, context, crs)
                              for f in fields(params_type) if alg.parameterDefinition(parameter_key(f.name))})
    except ParamError as exc:
        raise QgsProcessingException(qgis_message(exc, alg)) from None


def _default_text(param: QgsProcessingParameterDefinition) -> str:
    default = param.defaultValue()
    if default is None or default == "" or default is False:
        return ""
    if default == str(BUNDLED_MODEL):
        return " Default: the bundled model."
    if isinstance(param, QgsProcessingParameterDistance):
        return f" Default: {default:g} (metres in a metric CRS)."
    return f" Default: {'yes' if default is True else f'{default:g}' if isinstance(default, float) else default}."


def parameters_help(alg: QgsProcessingAlgorithm) -> str:
    """One line per parameter of `alg`: label (KEY): its help, its default. Plain text, as QGIS
    3.22 makes a paragraph of each line in the help panel and `qgis_process help` prints it raw."""
    lines = []
    for param in alg.parameterDefinitions():
        if param.flags() & QgsProcessingParameterDefinition.FlagHidden:
            continue
        text = param.metadata().get("roadseg_help") or (param.help() if hasattr(param, "help") else "")
        lines.append(f"{param.description()} ({param.name()}){': ' + text if text else ''}.{_default_text(param)}")
    return "\n".join(lines)


def options_help(params_type: type, skip: tuple[str, ...] = ()) -> str:
    """Help-panel text for the options of `params_type`: label, unit, what it does, default
    (for an algorithm that writes its own help; `parameters_help` covers every parameter)."""
    lines = []
    for f in fields(params_type):
        if f.name in skip:
            continue
        info = describe(params_type, f.name)
        default = "" if info["default"] in (None, False) else f" Default: {info['default']}."
        lines.append(f"{option_label(params_type, f.name)}: {info['help']}.{default}")
    return "\n".join(lines)


def lengths_note(crs: Any) -> str:
    """What to tell the user about the lengths' unit for a layer in `crs`; '' for a CRS in metres."""
    if crs is None or not crs.isValid() or crs.mapUnits() == QgsUnitTypes.DistanceMeters:
        return ""
    units = QgsUnitTypes.toString(crs.mapUnits())
    if QgsUnitTypes.unitType(crs.mapUnits()) == QgsUnitTypes.Standard:
        return f"Lengths are in {units} (the units of {crs.authid()}), converted to metres"
    return f"{crs.authid()} is in {units}: the lengths are read as metres"


@lru_cache(maxsize=1)
def project_url() -> str:
    """The `repository` (else `homepage`) of the plugin's metadata.txt; '' when it names none."""
    for path in (PLUGIN_DIR / "metadata.txt", PLUGIN_DIR.parent / "metadata.txt"):  # installed, checkout
        parser = configparser.ConfigParser(interpolation=None)
        if parser.read(path, encoding="utf-8") and parser.has_section("general"):
            general = parser["general"]
            return (general.get("repository", "") or general.get("homepage", "")).strip()
    return ""


