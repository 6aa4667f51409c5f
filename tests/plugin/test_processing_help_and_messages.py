"""What the toolbox shows around the algorithms: per-parameter help, tags, help URL, lengths as
distances linked to the input layer (QGIS 3.22's widget hands them over in the layer's units),
and errors in QGIS's words (labels, not `--options`), each reported once."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from qgis.core import QgsProcessingFeedback

from tests.plugin.conftest import fake_extract_roads

ALGORITHMS = ("segmentroads", "vectorisemask", "trainfromlines", "evaluatemodel")
DISTANCES = ("MIN_LENGTH", "SPUR_LENGTH", "GAP", "TOLERANCE")
CLI_SPELLINGS = re.compile(r"(?<![\w/.-])--[a-z]|python -m|\bpass --|\bunset\b")


def algorithm(name: str):
    from qgis.core import QgsApplication

    return QgsApplication.processingRegistry().algorithmById(f"roadseg:{name}")


@pytest.mark.parametrize("name", ALGORITHMS)
def test_help_mentions_every_parameter_with_its_help_and_default(roadseg_provider, name: str) -> None:
    from qgis.core import QgsProcessingParameterDefinition

    alg = algorithm(name)
    text = alg.shortHelpString()
    assert "<b>" not in text and "<br>" not in text  # qgis_process 3.22 prints the help raw
    for param in alg.parameterDefinitions():
        if param.flags() & QgsProcessingParameterDefinition.FlagHidden:
            continue
        line = next((line for line in text.splitlines() if line.startswith(f"{param.description()} ({param.name()})")),
                    None)
        assert line is not None, f"{name}: the help does not mention {param.name()}"
        helped = param.metadata().get("roadseg_help")
        assert helped and helped in line, f"{name}.{param.name()}: no help text"
        if hasattr(param, "help"):  # setHelp where QGIS has it (qgis_process prints it per argument)
            assert param.help() == helped
        default = param.defaultValue()
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            assert f"Default: {default:g}" in line, f"{name}.{param.name()}: default not in the help"
        assert not CLI_SPELLINGS.search(line), line


@pytest.mark.parametrize("name", ALGORITHMS)
def test_tags_and_no_placeholder_help_url(roadseg_provider, name: str) -> None:
    """metadata.txt names no repository (there is no public one), so there is no help URL to point at."""
    from roadseg_plugin.processing import parameters

    alg = algorithm(name)
    assert "roads" in alg.tags() and len(set(alg.tags())) > len(algorithm("segmentroads").tags()) // 3
    parameters.project_url.cache_clear()
    assert parameters.project_url() == "" and alg.helpUrl() == ""


def test_help_url_follows_a_repository_in_metadata(roadseg_provider, tmp_path: Path, monkeypatch) -> None:
    from roadseg_plugin.processing import parameters

    plugin = tmp_path / "roadseg_plugin"
    plugin.mkdir()
    (plugin / "metadata.txt").write_text("[general]\nname=RoadSeg\nrepository=https://github.com/example/roadseg\n")
    monkeypatch.setattr(parameters, "PLUGIN_DIR", plugin)
    parameters.project_url.cache_clear()
    try:
        assert algorithm("segmentroads").helpUrl() == (
            "https://github.com/example/roadseg/blob/main/docs/QGIS.md#processing-algorithms")
    finally:
        monkeypatch.undo()
        parameters.project_url.cache_clear()


@pytest.mark.parametrize("name", ("segmentroads", "vectorisemask"))
def test_lengths_are_distances_linked_to_the_input(roadseg_provider, name: str) -> None:
    from qgis.core import QgsProcessingParameterDistance, QgsUnitTypes

    from roadseg_plugin.core.params import VectoriseParams, describe

    alg = algorithm(name)
    for key in DISTANCES:
        param = alg.parameterDefinition(key)
        assert isinstance(param, QgsProcessingParameterDistance), key
        assert param.parentParameterName() == "INPUT" and "INPUT" in param.dependsOnOtherParameters(), key
        assert param.defaultUnit() == QgsUnitTypes.DistanceMeters, key
        assert param.defaultValue() == describe(VectoriseParams, key.lower())["default"], key
        assert "(m)" not in param.description()  # the widget shows the unit (the layer's)
    # pixel sizes stay numbers: GSD is for rasters without a CRS
    assert not isinstance(algorithm("segmentroads").parameterDefinition("GSD"), QgsProcessingParameterDistance)


@pytest.mark.parametrize("crs, origin, gsd, factor", [
    ("EPSG:32619", (330000.0, 4690000.0), 1.0, 1.0),  # metres
    ("EPSG:2249", (700000.0, 2900000.0), 3.28, 0.3048),  # NAD83 Massachusetts, US feet: converted
    ("EPSG:4326", (-71.0, 42.0), 1e-5, 1.0),  # degrees: read as metres
])
def test_distances_reach_the_core_in_metres(roadseg_provider, road_rasters, tmp_path: Path, monkeypatch, crs, origin,
                                            gsd, factor) -> None:
    import processing

    from roadseg_plugin.core import pipeline

    path, _ = road_rasters("area.tif", size=64, crs=crs, origin=origin, gsd=gsd)
    seen: dict = {}
    monkeypatch.setattr(pipeline, "extract_roads", fake_extract_roads(seen))
    given = {"MIN_LENGTH": 50.0, "SPUR_LENGTH": 12.0, "GAP": 30.0, "TOLERANCE": 2.0}
    processing.run("roadseg:segmentroads", {"INPUT": str(path), "OUTPUT": str(tmp_path / "r.gpkg"), **given})
    for key, value in given.items():
        assert getattr(seen["vectorise"], key.lower()) == pytest.approx(value * factor), (crs, key)


def test_the_322_widget_hands_over_layer_units_and_the_core_gets_metres(roadseg_provider, road_rasters, tmp_path,
                                                                        qgis_new_project, monkeypatch) -> None:
    """The toolbox: a US-feet layer shows "feet"; 20 typed with "meters" chosen arrives as 65.6 (ft),
    which the algorithm turns back into 20 m (QGIS 3.22 ignores setDefaultUnit once a parent is set)."""
    import processing
    from qgis.core import QgsProcessingContext, QgsRasterLayer
    from qgis.gui import (
        QgsDoubleSpinBox,
        QgsGui,
        QgsProcessingContextGenerator,
        QgsProcessingGui,
        QgsProcessingParameterWidgetContext,
    )
    from qgis.PyQt.QtWidgets import QComboBox

    from roadseg_plugin.core import pipeline

    path, _ = road_rasters("feet.tif", size=64, crs="EPSG:2249", origin=(700000.0, 2900000.0), gsd=3.28)
    layer = QgsRasterLayer(str(path), "feet")
    qgis_new_project.addMapLayer(layer)
    alg = algorithm("segmentroads")
    context = QgsProcessingContext()
    context.setProject(qgis_new_project)

    class Generator(QgsProcessingContextGenerator):
        def processingContext(self):  # noqa: N802 - Qt's name
            return context

    generator, widget_context = Generator(), QgsProcessingParameterWidgetContext()
    widget_context.setProject(qgis_new_project)
    wrappers, widgets = [], []
    for key in ("INPUT", "MIN_LENGTH"):
        wrapper = QgsGui.processingGuiRegistry().createParameterWidgetWrapper(alg.parameterDefinition(key),
                                                                              QgsProcessingGui.Standard)
        wrapper.setWidgetContext(widget_context)
        wrapper.registerProcessingContextGenerator(generator)
        widgets.append(wrapper.createWrappedWidget(context))  # keep the widgets alive
        wrappers.append(wrapper)
    source, distance = wrappers
    source.setWidgetValue(layer.id(), context)
    distance.postInitialize(wrappers)
    widgets[1].show()
    units = widgets[1].findChildren(QComboBox)[0]
    assert units.currentText() == "feet"
    units.setCurrentIndex(units.findText("meters"))
    widgets[1].findChildren(QgsDoubleSpinBox)[0].setValue(20.0)
    value = distance.parameterValue()
    assert value == pytest.approx(20 / 0.3048)

    seen: dict = {}
    monkeypatch.setattr(pipeline, "extract_roads", fake_extract_roads(seen))
    processing.run("roadseg:segmentroads", {"INPUT": layer, "MIN_LENGTH": value, "OUTPUT": str(tmp_path / "r.gpkg")})
    assert seen["vectorise"].min_length == pytest.approx(20.0)


# ---- errors and warnings in QGIS's words ---------------------------------------------------------
CORE_MESSAGES = [  # what the core and training say (CLI-worded) -> what QGIS shows
    ("device 'cuda' requested but no CUDA GPU is available; use --device cpu",
     "device 'cuda' requested but no CUDA GPU is available; set \"Device\" to cpu"),
    ("onnxruntime has no CUDA support here; use --backend torch or --device cpu",
     "onnxruntime has no CUDA support here; set \"Backend\" to torch or \"Device\" to cpu"),
    ("the model takes tiles of 512 x 512; run it with --tile 512", "run it with \"Tile size (px)\" = 512"),
    ("pass exactly 3 band numbers, e.g. --bands 1,2,3", "choose exactly 3 band numbers, e.g. \"Bands\" = 1,2,3"),
    ("pass a .pt file written by `python -m training train`",
     "choose a .pt file written by the \"Train model from drawn road lines\" algorithm"),
    ("export it with `python -m roadseg_plugin export-onnx` (dynamic batch and tile size)",
     "export it with RoadSeg's command line (export-onnx, in a terminal)"),
    ("check the path or pass --model", "check the path or set \"Model\""),
    ("e.g. 0.5; leave it unset for the model's", "e.g. 0.5; leave it empty for the model's"),
    ("/data/a--b.tif: not found", "/data/a--b.tif: not found"),  # paths are left alone
    ("/data/unset/pass.tif: unset", "/data/unset/pass.tif: empty"),
    ("tiles per forward pass; unset: 2 on CPU", "tiles per forward pass; empty: 2 on CPU"),
    ("not a PyTorch checkpoint; pass a .pt file", "not a PyTorch checkpoint; choose a .pt file"),
]


@pytest.mark.parametrize("core, shown", CORE_MESSAGES)
def test_cli_wording_is_translated_in_one_place(roadseg_provider, core: str, shown: str) -> None:
    from roadseg_plugin.adapters.options import qgis_words

    text = qgis_words(core, algorithm("segmentroads"))
    assert shown in text
    assert not CLI_SPELLINGS.search(re.sub(r"/data/\S+", "", text))


def test_labels_follow_the_algorithm(roadseg_provider) -> None:
    from roadseg_plugin.adapters.options import qgis_message
    from roadseg_plugin.core.errors import CheckpointError, ParamError

    missing = CheckpointError("/m/x.pt", "model file not found", "check the path or pass --model")
    assert qgis_message(missing, algorithm("trainfromlines")) == (
        '/m/x.pt: model file not found; check the path or set "Start model (.pt); empty to train from scratch"')
    assert qgis_message(ParamError("minutes", 0, "must be more than 0"), algorithm("trainfromlines")) == (
        '"Training time (minutes)" = 0: must be more than 0')
    assert qgis_message(ParamError("tile", 100, "must be a multiple of 16"), algorithm("segmentroads")) == (
        '"Tile size (px)" = 100: must be a multiple of 16')
    assert qgis_message(ParamError("min_length", -1, "must not be negative")) == (
        '"Minimum road length" = -1: must not be negative')


class Recorder(QgsProcessingFeedback):
    """A feedback that keeps every message it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str]] = []

    def reportError(self, error, fatalError=False):  # noqa: N802, N803 - QGIS's names
        self.seen.append(("error", error))

    def pushInfo(self, info):  # noqa: N802
        self.seen.append(("info", info))

    def pushWarning(self, warning):  # noqa: N802
        self.seen.append(("warning", warning))


def test_a_bad_threshold_is_one_qgis_worded_error(roadseg_provider, road_rasters, road_model, tmp_path: Path) -> None:
    """1.0 passes QGIS's 0-1 range but not the core: the message names the parameter by its label,
    spells no command-line option, and is reported once (the exception; the toolbox's feedback)."""
    import processing
    from qgis.core import QgsProcessingContext, QgsProcessingException

    path, _ = road_rasters("area.tif", size=64)
    params = {"INPUT": str(path), "MODEL": str(road_model), "THRESHOLD": 1.0, "OUTPUT": str(tmp_path / "r.gpkg")}
    feedback = Recorder()
    with pytest.raises(QgsProcessingException) as info:
        processing.run("roadseg:segmentroads", params, feedback=feedback)
    message = str(info.value)
    assert message.startswith('"Road probability threshold (0-1)" = 1.0: must lie strictly between 0 and 1')
    assert "leave it empty" in message and not CLI_SPELLINGS.search(message)
    assert not [m for kind, m in feedback.seen if kind == "error"]  # processing.run: the exception only

    toolbox = Recorder()  # the toolbox runs with catchExceptions: QGIS reports the exception's text once
    _, ok = algorithm("segmentroads").create().run(params, QgsProcessingContext(), toolbox)
    assert not ok and [m for kind, m in toolbox.seen if kind == "error"] == [message]
    assert not (tmp_path / "r.gpkg").exists()


def test_model_errors_name_the_model_parameter(roadseg_provider, road_rasters, tmp_path: Path) -> None:
    import processing
    from qgis.core import QgsProcessingException

    path, _ = road_rasters("area.tif", size=64)
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a model")
    for model in (bad, tmp_path / "missing.pt"):
        with pytest.raises(QgsProcessingException) as info:
            processing.run("roadseg:segmentroads", {"INPUT": str(path), "MODEL": str(model),
                                                    "OUTPUT": str(tmp_path / "r.gpkg")})
        message = str(info.value)
        assert model.name in message and not CLI_SPELLINGS.search(message.replace(str(model), "")), message
