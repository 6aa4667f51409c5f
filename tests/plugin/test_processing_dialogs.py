"""Every RoadSeg algorithm's toolbox dialog, as QGIS opens it: values read back the way Run does.

`processing.run` never opens a dialog, so a parameter QGIS's widgets cannot hold (a whole number
whose maximum overflowed the 32-bit spin box: "-2147483648", "Wrong or missing parameter value:
Block halo") passed every other test. Here the real `AlgorithmDialog` and `BatchAlgorithmDialog`
of each algorithm are built offscreen with a raster and a line layer in the project; each
widget's value is read back as Run reads it and checked with the parameter's own
`checkValueIsAcceptable`, and a value is typed into every whole-number field and read back.
"""
from __future__ import annotations

import sys

import pytest

from tests.plugin.conftest import lines_layer, write_road_geotiff

ALGORITHMS = ("segmentroads", "vectorisemask", "trainfromlines", "evaluatemodel", "segmentregion")
INT32_MAX = 2**31 - 1


@pytest.fixture
def loaded_project(qgis_new_project, qgis_iface, tmp_path, monkeypatch):
    """A raster and a line layer in the project, the raster active (as a user has them).

    pytest-qgis's interface has no browser model; the dialogs get a real one, as in the desktop.
    """
    from qgis.core import QgsRasterLayer
    from qgis.gui import QgsBrowserGuiModel

    browser = QgsBrowserGuiModel()
    monkeypatch.setattr(qgis_iface, "browserModel", lambda: browser, raising=False)

    path, _ = write_road_geotiff(tmp_path / "aerial.tif")
    raster = QgsRasterLayer(str(path), "aerial")
    assert raster.isValid()
    lines = lines_layer(["LINESTRING(330000 4689950, 330096 4689950)"], name="drawn roads")
    qgis_new_project.addMapLayers([raster, lines])
    qgis_iface.setActiveLayer(raster)
    return raster, lines


def algorithm(name: str):
    from qgis.core import QgsApplication

    alg = QgsApplication.processingRegistry().algorithmById(f"roadseg:{name}")
    assert alg is not None, name
    return alg.create()


def typed_value(param) -> int:
    """A whole number inside the parameter's range that is not its default."""
    value = 96 if param.defaultValue() != 96 else 128
    return int(min(max(value, param.minimum()), param.maximum()))


def type_into(spin, text: str) -> None:
    """Select the field's text and type `text`, key by key, as a user does."""
    from qgis.PyQt.QtCore import Qt
    from qgis.PyQt.QtTest import QTest

    edit = spin.lineEdit()
    edit.setFocus()
    edit.selectAll()
    QTest.keyClick(edit, Qt.Key_Backspace)
    QTest.keyClicks(edit, text)
    QTest.keyClick(edit, Qt.Key_Return)
    spin.interpretText()


def fill_required_layers(alg, wrappers: dict, raster, lines) -> None:
    """Pick the layers for the required layer inputs QGIS leaves empty (a user picks them): a
    feature source when the active layer is the raster, a multiple-layer input always."""
    from qgis.core import (
        QgsProcessingContext,
        QgsProcessingParameterFeatureSource,
        QgsProcessingParameterMultipleLayers,
        QgsProcessingParameterRasterLayer,
    )

    for param in alg.parameterDefinitions():
        wrapper = wrappers.get(param.name())
        if wrapper is None or param.flags() & param.FlagOptional or wrapper.parameterValue() is not None:
            continue
        if isinstance(param, QgsProcessingParameterMultipleLayers):  # its widget takes sources
            value = [raster.source()]
        elif isinstance(param, QgsProcessingParameterFeatureSource):
            value = lines.id()
        elif isinstance(param, QgsProcessingParameterRasterLayer):
            value = raster.id()
        else:
            continue
        wrapper.setParameterValue(value, QgsProcessingContext())
        assert wrapper.parameterValue(), (alg.id(), param.name())


def spin_box(widget):
    from qgis.PyQt.QtWidgets import QAbstractSpinBox

    return widget if isinstance(widget, QAbstractSpinBox) else widget.findChild(QAbstractSpinBox)


def integer_parameters(alg) -> list:
    from qgis.core import QgsProcessingParameterNumber

    return [p for p in alg.parameterDefinitions()
            if isinstance(p, QgsProcessingParameterNumber) and p.dataType() == QgsProcessingParameterNumber.Integer]


@pytest.mark.parametrize("name", ALGORITHMS)
def test_whole_numbers_fit_the_spin_box(roadseg_provider, name: str) -> None:
    alg = algorithm(name)  # kept: the parameters belong to it
    params = integer_parameters(alg)
    assert params or name in ("vectorisemask", "trainfromlines")  # these take no whole numbers
    for param in params:  # QGIS's own "no maximum" (the largest double) is the one bound it special-cases
        assert -INT32_MAX <= param.minimum() <= param.maximum(), (name, param.name())
        assert param.maximum() <= INT32_MAX or param.maximum() == sys.float_info.max, (name, param.name())


@pytest.mark.parametrize("name", ALGORITHMS)
def test_toolbox_dialog_values_are_what_run_accepts(roadseg_provider, loaded_project, name: str) -> None:
    from processing.gui.AlgorithmDialog import AlgorithmDialog

    alg = algorithm(name)
    dialog = AlgorithmDialog(alg, False, None)
    panel = dialog.mainWidget()
    fill_required_layers(alg, panel.wrappers, *loaded_project)
    wrong = [(p.name(), panel.wrappers[p.name()].parameterValue()) for p in alg.parameterDefinitions()
             if not p.isDestination() and p.name() in panel.wrappers
             and not p.checkValueIsAcceptable(panel.wrappers[p.name()].parameterValue())]
    assert not wrong, f"{name}: the dialog holds values Run refuses: {wrong}"
    parameters = panel.createProcessingParameters()  # what Run hands to the algorithm; raises on a bad value
    for param in integer_parameters(alg):
        wrapper = panel.wrappers[param.name()]
        value = typed_value(param)
        type_into(spin_box(wrapper.wrappedWidget()), str(value))
        assert wrapper.parameterValue() == value, (name, param.name(), wrapper.parameterValue())
        assert param.checkValueIsAcceptable(wrapper.parameterValue())
    typed = panel.createProcessingParameters()
    assert {p.name(): typed[p.name()] for p in integer_parameters(alg)} == {
        p.name(): typed_value(p) for p in integer_parameters(alg)}
    assert set(parameters) == set(typed)
    dialog.close()


@pytest.mark.parametrize("name", ALGORITHMS)
def test_batch_dialog_rows_are_what_run_accepts(roadseg_provider, loaded_project, name: str) -> None:
    from processing.gui.BatchAlgorithmDialog import BatchAlgorithmDialog

    alg = algorithm(name)
    dialog = BatchAlgorithmDialog(alg, None)
    panel = dialog.mainWidget()
    assert panel.batchRowCount() >= 1
    row = {p.name(): panel.wrappers[0][panel.parameter_to_column[p.name()]]
           for p in alg.parameterDefinitions() if not p.isDestination()}
    fill_required_layers(alg, row, *loaded_project)
    wrong = [(p.name(), row[p.name()].parameterValue()) for p in alg.parameterDefinitions()
             if not p.isDestination() and not p.checkValueIsAcceptable(row[p.name()].parameterValue())]
    assert not wrong, f"{name}: a batch row holds values Run refuses: {wrong}"
    for param in integer_parameters(alg):
        wrapper, value = row[param.name()], typed_value(param)
        type_into(spin_box(wrapper.wrappedWidget()), str(value))
        assert panel.valueForParameter(0, param.name()) == value, (name, param.name())
    values = {p.name(): panel.valueForParameter(0, p.name()) for p in alg.parameterDefinitions()
              if not p.isDestination()}
    assert all(alg.parameterDefinition(key).checkValueIsAcceptable(value) for key, value in values.items()), values
    dialog.close()
