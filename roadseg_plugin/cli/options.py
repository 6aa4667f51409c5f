"""What every command of the command line shares: the exit statuses (2 bad input, 130 Ctrl-C,
143 SIGTERM; `training.cli` uses them too), `Terminated`, and the options generated from the
core's dataclasses (`add_options`) with the params built back from them (`build`), so every
option, default and help text has one home.
"""
from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..core.params import describe

EXIT_BAD_INPUT = 2
EXIT_CANCELLED = 130
EXIT_TERMINATED = 143


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that clean-up runs as for Ctrl-C."""


def _band_list(text: str) -> tuple[int, ...]:
    try:
        bands = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of band numbers") from None
    if not bands:
        raise argparse.ArgumentTypeError("give at least one band number, e.g. 1,2,3")
    return bands


def _extent(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"{text!r} is not xmin,ymin,xmax,ymax (four numbers)")
    return values


_GROUPS = {"InferenceParams": "model, tiling and reading", "VectoriseParams": "road lines"}
_CUSTOM_TYPES = {"bands": (_band_list, "B1,B2,..."), "extent": (_extent, "XMIN,YMIN,XMAX,YMAX"),
                 "model": (Path, "MODEL")}


def add_options(parser: argparse.ArgumentParser, params_type: type, skip: tuple[str, ...] = ()) -> None:
    """One `--option` per field of `params_type`, its help and default from the field's metadata.

    Unset options stay None, so the dataclass alone decides every default.
    """
    group = parser.add_argument_group(_GROUPS.get(params_type.__name__, params_type.__name__))
    for f in fields(params_type):
        if f.name in skip:
            continue
        info = describe(params_type, f.name)
        flag = "--" + f.name.replace("_", "-")
        unit = f" ({info['unit']})" if info["unit"] else ""
        default = "" if info["default"] in (None, False) else f" [default: {info['default']}]"
        text = f"{info['help']}{unit}{default}".replace("%", "%%")
        if f.name in _CUSTOM_TYPES:
            kind, metavar = _CUSTOM_TYPES[f.name]
            group.add_argument(flag, type=kind, metavar=metavar, help=text)
        elif "bool" in str(f.type):
            group.add_argument(flag, action="store_true", default=None, help=text)
        else:
            # choices are checked by the dataclass, so a bad one gives the one-line error too
            kind = int if "int" in str(f.type) else float if "float" in str(f.type) else str
            metavar = "{" + ",".join(info["choices"]) + "}" if info["choices"] else None
            group.add_argument(flag, type=kind, metavar=metavar, help=text)


def build(params_type: type, args: argparse.Namespace) -> Any:
    """The params object from the options the user gave (ParamError on a bad value)."""
    return params_type(**{f.name: getattr(args, f.name) for f in fields(params_type)
                          if getattr(args, f.name, None) is not None})
