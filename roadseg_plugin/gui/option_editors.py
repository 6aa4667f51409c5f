"""The Segment roads dialog's generated editors: one widget per option of `InferenceParams` /
`VectoriseParams`, from the field's metadata (label, unit, help, default, choices), and the
function reading its value back. An optional option left at its minimum reads "Default: ..."
(from its help's "unset: ...") and stands for None: the model's or the core's own value.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import Field
from typing import Any

from qgis.PyQt.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QLineEdit, QSpinBox, QWidget

from ..adapters.options import band_numbers, option_choices, option_kind
from ..core.params import describe

UNSET = -1  # spin-box value of an optional number left at its default (shown as "Default ...")
MAX_NUMBER = 1_000_000


def unset_meaning(params_type: type, name: str) -> str:
    """What an optional option left empty means, from its help ("...; unset: the model's"), or ""."""
    help_text = describe(params_type, name)["help"]
    return help_text.split("unset: ", 1)[1] if "unset: " in help_text else ""


def unset_text(params_type: type, name: str) -> str:
    meaning = unset_meaning(params_type, name)
    return f"Default: {meaning}" if meaning else "Not set"


def option_editor(params_type: type, f: Field, parent: QWidget) -> tuple[QWidget, Callable[[], Any]]:
    """A widget for one option, set to its default, and the function reading its value back."""
    info, kind = describe(params_type, f.name), option_kind(params_type, f)
    default, unit = info["default"], info["unit"]
    if kind == "bool":
        box = QCheckBox(info["label"], parent)
        box.setChecked(bool(default))
        widget, read = box, box.isChecked
    elif kind == "enum":
        combo = QComboBox(parent)
        if default is None:
            combo.addItem(unset_text(params_type, f.name), None)
        for choice in option_choices(params_type, f.name):
            combo.addItem(choice, choice)
        combo.setCurrentIndex(max(combo.findData(default), 0))
        widget, read = combo, combo.currentData
    elif kind == "bands":
        edit = QLineEdit(parent)
        edit.setPlaceholderText(f"e.g. 3,2,1; empty: {unset_meaning(params_type, f.name) or 'not set'}")
        widget, read = edit, lambda: band_numbers(edit.text()) or None
    elif kind in ("int", "float"):
        spin = QSpinBox(parent) if kind == "int" else QDoubleSpinBox(parent)
        if kind == "float":
            spin.setDecimals(2 if unit == "m" else 3)
        spin.setRange(UNSET if default is None else 0, MAX_NUMBER)
        if unit in ("m", "px"):
            spin.setSuffix(f" {unit}")
        if default is None:  # the minimum reads "Default: the model's" and stands for None
            spin.setSpecialValueText(unset_text(params_type, f.name))
        spin.setValue(UNSET if default is None else default)
        widget = spin
        read = (lambda: None if spin.value() == UNSET else spin.value()) if default is None else spin.value
    else:
        raise TypeError(f"{params_type.__name__}.{f.name}: the dialog has no editor for {kind}")
    widget.setToolTip(info["help"])
    widget.setObjectName(f"option_{f.name}")
    return widget, read
