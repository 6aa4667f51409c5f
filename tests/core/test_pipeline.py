"""core/pipeline.py: raster -> probability -> lines -> file, all outputs or none, inputs never replaced."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from roadseg_plugin.core.errors import Cancelled, OutputError
from roadseg_plugin.core.params import InferenceParams, VectoriseParams
from roadseg_plugin.core.pipeline import extract_roads, vectorise_file
from tests.core.test_engine import contrast_checkpoint, scene, write_tif  # noqa: F401 (fixture)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files(folder: Path) -> list[str]:
    """What a run left in `folder`, less the ONNX export cached beside the checkpoint."""
    return sorted(p.name for p in folder.iterdir() if p.suffix != ".onnx")


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return write_tif(tmp_path / "in.tif", scene(160, 160))


def test_extract_roads_writes_lines_and_probability(tmp_path, image, contrast_checkpoint):  # noqa: F811
    import geopandas as gpd

    seen = []
    params = InferenceParams(model=str(contrast_checkpoint), backend="torch", threshold=0.5)
    result = extract_roads(image, tmp_path / "roads.gpkg", params, VectoriseParams(min_length=5),
                           prob_out=tmp_path / "prob.tif", on_progress=seen.append)
    assert result.n_lines > 0 and result.prob_path.is_file() and result.threshold == 0.5
    assert len(gpd.read_file(result.lines_path)) == result.n_lines
    assert seen == sorted(seen) and seen[-1] == 1.0
    again = vectorise_file(result.prob_path, None, VectoriseParams(min_length=5))
    assert again.threshold == 0.5 and again.n_lines == result.n_lines  # the threshold stored in the raster


def test_lines_only_in_memory(tmp_path, image, contrast_checkpoint):  # noqa: F811
    result = extract_roads(image, None, InferenceParams(model=str(contrast_checkpoint)))
    assert result.lines_path is None and result.prob_path is None and result.segment.width == 160
    assert files(tmp_path) == ["contrast.pt", "in.tif"]


def outputs_over_inputs(tmp: Path, image: Path, model: Path) -> dict[str, dict]:
    (tmp / "sub").mkdir()
    (tmp / "link.tif").symlink_to(image)
    os.link(image, tmp / "hard.tif")
    return {
        "lines over raster": {"lines_out": image},
        "lines over raster through ..": {"lines_out": tmp / "sub" / ".." / image.name},
        "probability over raster via symlink": {"prob_out": tmp / "link.tif"},
        "probability over raster via hard link": {"prob_out": tmp / "hard.tif"},
        "probability over the model": {"prob_out": model},
        "lines and probability the same": {"lines_out": tmp / "both.gpkg", "prob_out": tmp / "both.gpkg"},
    }


@pytest.mark.parametrize("case", ["lines over raster", "lines over raster through ..",
                                  "probability over raster via symlink", "probability over raster via hard link",
                                  "probability over the model", "lines and probability the same"])
def test_an_output_never_replaces_an_input(tmp_path, image, contrast_checkpoint, case):  # noqa: F811
    kwargs = {"lines_out": tmp_path / "roads.gpkg", **outputs_over_inputs(tmp_path, image, contrast_checkpoint)[case]}
    before = {p: digest(p) for p in (image, contrast_checkpoint)}
    with pytest.raises(OutputError):
        extract_roads(image, params=InferenceParams(model=str(contrast_checkpoint)), **kwargs)
    assert {p: digest(p) for p in before} == before


def test_cancel_after_segmenting_keeps_the_previous_outputs(tmp_path, image, contrast_checkpoint):  # noqa: F811
    lines, prob = tmp_path / "roads.gpkg", tmp_path / "prob.tif"
    params = InferenceParams(model=str(contrast_checkpoint))
    extract_roads(image, lines, params, prob_out=prob)
    before = digest(lines), digest(prob)
    stage = []

    def cancel_in_vectorising() -> bool:
        return bool(stage) and stage[-1] > 0.9

    with pytest.raises(Cancelled):
        extract_roads(image, lines, params.with_changes(threshold=0.2), prob_out=prob, on_progress=stage.append,
                      is_cancelled=cancel_in_vectorising)
    assert (digest(lines), digest(prob)) == before
    assert files(tmp_path) == ["contrast.pt", "in.tif", "prob.tif", "roads.gpkg"]


def test_bad_outputs_are_refused_before_the_model_loads(tmp_path, image):
    params = InferenceParams(model=str(tmp_path / "no_model.pt"))  # would fail later, when loaded
    with pytest.raises(OutputError, match="cannot tell the vector format"):
        extract_roads(image, tmp_path / "roads.txt", params)
    with pytest.raises(OutputError, match="is a GeoTIFF"):
        extract_roads(image, tmp_path / "roads.gpkg", params, prob_out=tmp_path / "p.png")
    with pytest.raises(OutputError, match="does not exist"):
        extract_roads(image, tmp_path / "roads.gpkg", params, prob_out=tmp_path / "nowhere" / "p.tif")


def test_binary_output(tmp_path, image, contrast_checkpoint):  # noqa: F811
    import rasterio

    params = InferenceParams(model=str(contrast_checkpoint), binary=True, threshold=0.5)
    result = extract_roads(image, tmp_path / "roads.fgb", params, VectoriseParams(min_length=5),
                           prob_out=tmp_path / "mask.tif")
    with rasterio.open(result.prob_path) as src:
        assert set(src.read(1).ravel().tolist()) <= {0, 1}
    assert result.n_lines > 0


def test_extent_reads_only_the_pixels_it_touches(tmp_path, image, contrast_checkpoint):  # noqa: F811
    import rasterio

    # in.tif: 1 m pixels from (500000, 6000000), 160 x 160
    extent = (500010.5, 5999900.0, 500090.0, 5999979.5)
    result = extract_roads(image, None, InferenceParams(model=str(contrast_checkpoint), extent=extent),
                           prob_out=tmp_path / "part.tif")
    with rasterio.open(result.prob_path) as src:
        assert (src.width, src.height) == (80, 80)
        assert tuple(src.bounds) == (500010.0, 5999900.0, 500090.0, 5999980.0)


def test_extent_outside_the_raster_is_refused(tmp_path, image, contrast_checkpoint):  # noqa: F811
    from roadseg_plugin.core.errors import RasterError

    with pytest.raises(RasterError, match="does not overlap the raster"):
        extract_roads(image, None, InferenceParams(model=str(contrast_checkpoint), extent=(0, 0, 10, 10)))


def test_gsd_resamples_a_raster_without_georeferencing(tmp_path, contrast_checkpoint):  # noqa: F811
    plain = write_tif(tmp_path / "plain.tif", scene(160, 160), transform=None, crs=None)
    params = InferenceParams(model=str(contrast_checkpoint), gsd=0.5)  # the model reads 1 m pixels
    result = extract_roads(plain, None, params, VectoriseParams(min_length=0, spur_length=0, gap=0))
    assert (result.segment.width, result.segment.height) == (80, 80)
    assert any("read as 0.5 m pixels" in w for w in result.warnings)
    xmin, ymin, xmax, ymax = result.lines.total_bounds
    assert 0 <= xmin and xmax <= 80 and -80 <= ymin and ymax <= 0  # metres from the top-left corner
