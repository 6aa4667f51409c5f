"""The `python -m roadseg_plugin` commands on real files: results, and one-line errors on bad input."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from roadseg_plugin.cli.main import main
from tests.core.test_engine import contrast_checkpoint, scene, write_tif  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return write_tif(tmp_path / "in.tif", scene(200, 200))


def assert_one_line_error(capsys, code: int, *expected: str) -> None:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    for text in expected:
        assert text in lines[0]


def test_segment_writes_a_geopackage_in_the_input_crs(tmp_path, image, contrast_checkpoint, capsys):  # noqa: F811
    import geopandas as gpd

    out, mask = tmp_path / "roads.gpkg", tmp_path / "mask.tif"
    code = main(["segment", str(image), "--out", str(out), "--model", str(contrast_checkpoint),
                 "--mask-out", str(mask), "--threshold", "0.5", "--min-length", "5"])
    assert code == 0
    lines = gpd.read_file(out)
    assert len(lines) > 0 and lines.crs.to_epsg() == 32631
    assert set(lines.geom_type) == {"LineString"}
    said = capsys.readouterr().out
    assert "with onnxruntime on cpu" in said and "Mpx/s" in said and f"to {out}" in said and mask.is_file()


def test_vectorise_and_export_onnx_commands(tmp_path, image, contrast_checkpoint, capsys):  # noqa: F811
    import geopandas as gpd

    from roadseg_plugin.core.engine import segment_raster
    from roadseg_plugin.core.model_meta import read_onnx_meta

    mask = segment_raster(image, tmp_path / "mask.tif", contrast_checkpoint, backend="torch").path
    out = tmp_path / "roads.shp"
    assert main(["vectorise", str(mask), "--out", str(out), "--min-length", "5", "--gap", "0", "--smooth"]) == 0
    assert gpd.read_file(out).crs.to_epsg() == 32631
    assert main(["export-onnx", str(contrast_checkpoint), str(tmp_path / "m.onnx")]) == 0
    assert read_onnx_meta(tmp_path / "m.onnx").tile == 64
    assert "wrote" in capsys.readouterr().out


def bad_inputs(tmp: Path, image: Path, model: Path) -> dict[str, tuple[list[str], str]]:
    """Each bad-input case: (extra command-line words, text the error line must contain)."""
    (tmp / "junk.tif").write_text("not an image")
    (tmp / "junk.pt").write_bytes(b"\x00garbage" * 10)
    write_tif(tmp / "grey.tif", scene(60, 60)[:1])
    (tmp / "a_file").write_text("x")
    return {
        "missing raster": ([str(tmp / "missing.tif"), "--model", str(model)], "missing.tif: raster file not found"),
        "corrupt raster": ([str(tmp / "junk.tif"), "--model", str(model)], "junk.tif: not a raster GDAL can read"),
        "one band": ([str(tmp / "grey.tif"), "--model", str(model)], "grey.tif: raster has 1 image band"),
        "band out of range": ([str(image), "--model", str(model), "--bands", "1,2,9"], "band 9 does not exist"),
        "corrupt checkpoint": ([str(image), "--model", str(tmp / "junk.pt")], "junk.pt: "),
        "missing checkpoint": ([str(image), "--model", str(tmp / "none.pt")], "none.pt: model file not found"),
        "unwritable mask": ([str(image), "--model", str(model), "--mask-out", str(tmp / "a_file" / "m.tif")],
                            "a_file is a file, not a folder"),
        "unknown format": ([str(image), "--model", str(model), "--format", "xyz"],
                           "format xyz: is not a vector format"),
        "tile not a multiple": ([str(image), "--model", str(model), "--tile", "50"], "multiple of 4"),
    }


CASES = ["missing raster", "corrupt raster", "one band", "band out of range", "corrupt checkpoint",
         "missing checkpoint", "unwritable mask", "unknown format", "tile not a multiple"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_with_one_line_and_no_output(tmp_path, image, contrast_checkpoint,  # noqa: F811
                                                       capsys, case):
    words, expected = bad_inputs(tmp_path, image, contrast_checkpoint)[case]
    out, mask = tmp_path / "roads.gpkg", tmp_path / "mask.tif"
    if "--mask-out" not in words:
        words = [*words, "--mask-out", str(mask)]
    assert_one_line_error(capsys, main(["segment", *words, "--out", str(out)]), expected)
    assert not out.exists() and not mask.exists()
    assert not [p for p in tmp_path.rglob("*") if ".part" in p.name or p.name.endswith(".tmp")]


def test_unwritable_vector_output_fails_before_any_work(tmp_path, image, contrast_checkpoint, capsys):  # noqa: F811
    code = main(["segment", str(image), "--model", str(contrast_checkpoint), "--mask-out", str(tmp_path / "m.tif"),
                 "--out", str(tmp_path / "no_such_folder" / "roads.gpkg")])
    assert_one_line_error(capsys, code, "no_such_folder", "does not exist")
    assert not (tmp_path / "m.tif").exists()


def test_module_entry_point_reports_errors_without_traceback(tmp_path):
    run = subprocess.run([sys.executable, "-m", "roadseg_plugin", "segment", str(tmp_path / "missing.tif"),
                          "--out", str(tmp_path / "roads.gpkg")], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2 and run.stdout == ""
    missing = tmp_path / "missing.tif"
    assert run.stderr.strip().splitlines() == [f"error: {missing}: raster file not found; check the path"]


def test_probability_threshold_is_read_from_the_mask_tags(tmp_path, image, contrast_checkpoint):  # noqa: F811
    from roadseg_plugin.core.engine import segment_raster
    from roadseg_plugin.core.pipeline import stored_threshold as _stored_threshold

    mask = segment_raster(image, tmp_path / "mask.tif", contrast_checkpoint, backend="torch", threshold=0.37).path
    assert _stored_threshold(mask) == pytest.approx(0.37)
    assert np.isfinite(_stored_threshold(mask))


def cli_words(name: str, value) -> list[str]:
    flag = "--" + name.replace("_", "-")
    if value is True:
        return [flag]
    if isinstance(value, tuple):
        return [flag, ",".join(map(str, value))]
    return [flag, str(value)]


def test_every_option_reaches_the_params(tmp_path):
    from dataclasses import fields

    from roadseg_plugin.cli.main import build_parser
    from roadseg_plugin.cli.options import build
    from roadseg_plugin.core.params import InferenceParams, VectoriseParams
    from tests.option_values import NON_DEFAULT

    words = ["segment", "in.tif", "--out", "roads.fgb"]
    for params_type in (InferenceParams, VectoriseParams):
        for f in fields(params_type):
            words += cli_words(f.name, NON_DEFAULT[f.name])
    args = build_parser().parse_args(words)
    for params_type in (InferenceParams, VectoriseParams):
        built = build(params_type, args)
        for f in fields(params_type):
            assert getattr(built, f.name) == NON_DEFAULT[f.name], f.name
            assert NON_DEFAULT[f.name] != f.default, f.name


def test_unset_options_take_the_dataclass_defaults():
    from roadseg_plugin.cli.main import build_parser
    from roadseg_plugin.cli.options import build
    from roadseg_plugin.core.params import InferenceParams, VectoriseParams

    args = build_parser().parse_args(["segment", "in.tif", "--out", "roads.gpkg"])
    assert build(InferenceParams, args) == InferenceParams() and build(VectoriseParams, args) == VectoriseParams()
