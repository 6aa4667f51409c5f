"""segment_raster end to end on small real GeoTIFFs with tiny real models."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin
from rasterio.windows import Window

from roadseg_plugin.core.backends import BatchRunner
from roadseg_plugin.core.engine import segment_raster
from roadseg_plugin.core.errors import Cancelled, OutputError, RasterError
from roadseg_plugin.core.tiling import RollingBlend, TileGrid, predict_array
from tests.conftest import draw_roads, road_image
from tests.rasters import write_raster

TRANSFORM = from_origin(500000.0, 6000000.0, 1.0, 1.0)
RGBA = (ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha)


def scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return road_image(draw_roads(max(h, w), rng, n=5)[:h, :w], rng)


def write_tif(path: Path, data: np.ndarray, transform: Affine = TRANSFORM, crs: str | None = "EPSG:32631",
              **extra) -> Path:
    return write_raster(path, data, crs=crs, transform=transform, colorinterp=RGBA if data.shape[0] == 4 else None,
                        **{"driver": "GTiff", **extra})


def read_out(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    with rasterio.open(path) as src:
        return src.read(1), src.dataset_mask(), src.profile


def write_contrast_checkpoint(path: Path, seed: int = 0) -> Path:
    """The tiny U-Net with an amplified head, so its probabilities vary across the image."""
    import torch

    from roadseg_plugin.core.checkpoint import save_checkpoint
    from roadseg_plugin.core.model_meta import ModelMeta
    from roadseg_plugin.core.unet import build_model

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = {"in_channels": 3, "base_channels": 4, "depth": 2}
    model = build_model("unet", **config)
    with torch.no_grad():
        model.head.weight *= 100
        model.head.bias.zero_()
    save_checkpoint(path, model, ModelMeta(arch_config=config, tile=64, overlap=16))
    return path


@pytest.fixture
def contrast_checkpoint(tmp_path: Path) -> Path:
    return write_contrast_checkpoint(tmp_path / "contrast.pt")


def reference(image: np.ndarray, checkpoint: Path) -> np.ndarray:
    from roadseg_plugin.core.backends import TorchBackend
    from roadseg_plugin.core.normalise import normalise

    backend = TorchBackend.load(checkpoint, "cpu")
    return predict_array(normalise(image, backend.meta), backend.predict, backend.meta.tile, backend.meta.overlap)


@pytest.mark.parametrize("shape", [(150, 97), (40, 50), (64, 64)])
def test_streaming_equals_whole_array_prediction(tmp_path, contrast_checkpoint, shape):
    # Not a multiple of the tile, smaller than a tile, exactly one tile.
    image = scene(*shape)
    src = write_tif(tmp_path / "in.tif", image)
    result = segment_raster(src, tmp_path / "out.tif", contrast_checkpoint, backend="torch", batch_size=3)
    prob, mask, _ = read_out(result.path)
    assert prob.shape == shape and mask.all()
    np.testing.assert_allclose(prob / 255, reference(image, contrast_checkpoint), atol=0.6 / 255)


def test_georeferenced_output_is_a_tiled_deflate_geotiff_on_the_input_grid(tmp_path, tiny_checkpoint):
    image = scene(120, 90)
    image[:, :20] = 0
    src = write_tif(tmp_path / "in.tif", image, nodata=0)
    result = segment_raster(src, tmp_path / "out.tif", tiny_checkpoint, backend="torch")
    prob, mask, profile = read_out(result.path)
    assert profile["crs"] == CRS.from_epsg(32631) and profile["transform"] == TRANSFORM
    assert profile["dtype"] == "uint8" and profile["count"] == 1
    assert profile["tiled"] and profile["compress"] == "deflate"
    assert (result.width, result.height, result.tile, result.overlap) == (90, 120, 64, 16)
    assert result.gsd_m == pytest.approx(1.0, rel=1e-3)  # ground metres: UTM 31N at 500 km east, k = 0.9996
    assert (prob[:20] == 0).all() and (mask[:20] == 0).all() and (mask[20:] == 255).all()
    assert result.warnings == [] and result.backend == "torch" and result.device == "cpu"


def test_seamless_prediction_does_not_depend_on_tile_alignment(tmp_path, contrast_checkpoint):
    image = scene(288, 288, seed=1)
    shift = 32  # half a tile
    a = segment_raster(write_tif(tmp_path / "a.tif", image[:, :256, :256]), tmp_path / "a_out.tif",
                       contrast_checkpoint, backend="torch").path
    b = segment_raster(write_tif(tmp_path / "b.tif", image[:, shift:, shift:]), tmp_path / "b_out.tif",
                       contrast_checkpoint, backend="torch").path
    pa, pb = read_out(a)[0] / 255, read_out(b)[0] / 255
    assert pa.std() > 0.01  # the model's output does vary
    edge = 8  # raster borders see reflected context, not the neighbouring pixels
    same_a = pa[shift + edge:-edge, shift + edge:-edge]
    same_b = pb[edge:256 - shift - edge, edge:256 - shift - edge]
    assert np.abs(same_a - same_b).max() < 0.02 and np.abs(same_a - same_b).mean() < 0.0015


def test_one_band_raster_needs_a_one_band_model(tmp_path, tiny_checkpoint):
    import torch

    from roadseg_plugin.core.checkpoint import ModelMeta, save_checkpoint
    from roadseg_plugin.core.unet import build_model

    grey = write_tif(tmp_path / "grey.tif", scene(70, 80)[:1])
    with pytest.raises(RasterError, match="grey.tif: raster has 1 image band.*needs 3"):
        segment_raster(grey, tmp_path / "out.tif", tiny_checkpoint, backend="torch")
    assert not (tmp_path / "out.tif").exists()
    torch.manual_seed(0)
    config = {"in_channels": 1, "base_channels": 4, "depth": 2}
    meta = ModelMeta(arch_config=config, bands=[1], band_names=["grey"], mean=[0.5], std=[0.25], tile=64, overlap=16)
    save_checkpoint(tmp_path / "grey.pt", build_model("unet", **config), meta)
    result = segment_raster(grey, tmp_path / "out.tif", tmp_path / "grey.pt", backend="torch")
    assert read_out(result.path)[0].shape == (70, 80)


def test_alpha_all_white_and_nan_pixels_give_no_roads(tmp_path, contrast_checkpoint):
    rgba = np.concatenate([scene(100, 100), np.full((1, 100, 100), 255, np.uint8)])
    rgba[3, :30] = 0
    rgba[:3, 60:80, 60:80] = 255
    result = segment_raster(write_tif(tmp_path / "rgba.tif", rgba), tmp_path / "out.tif", contrast_checkpoint,
                            backend="torch")
    prob, mask, _ = read_out(result.path)
    assert (prob[:30] == 0).all() and (mask[:30] == 0).all()
    assert (prob[60:80, 60:80] == 0).all() and (mask[60:80, 60:80] == 0).all()
    assert mask[30:60].all() and prob[30:60].max() > 0

    floats = scene(100, 100).astype(np.float32)
    floats[:, :, :25] = np.nan
    result = segment_raster(write_tif(tmp_path / "f.tif", floats), tmp_path / "f_out.tif", contrast_checkpoint,
                            backend="torch")
    prob, mask, _ = read_out(result.path)
    assert (prob[:, :25] == 0).all() and (mask[:, :25] == 0).all() and mask[:, 25:].all()


def test_uint16_is_stretched_with_a_warning(tmp_path, contrast_checkpoint):
    image = scene(90, 90)
    wide = write_tif(tmp_path / "u16.tif", image.astype(np.uint16) * 40 + 1000)
    result = segment_raster(wide, tmp_path / "out.tif", contrast_checkpoint, backend="torch")
    assert any("uint16 values stretched per band" in w for w in result.warnings)
    prob = read_out(result.path)[0]
    assert prob.std() > 1  # a real picture went in, not a saturated one


def test_unreferenced_png_gives_the_pixel_frame_qgis_draws_it_in_and_a_warning(tmp_path, tiny_checkpoint):
    """x = column, y = -row (as QGIS draws a plain image), not GDAL's y = +row: outputs overlay it."""
    path = write_raster(tmp_path / "photo.png", scene(50, 70))
    result = segment_raster(path, tmp_path / "out.tif", tiny_checkpoint, backend="torch")
    assert any("no georeferencing" in w and "y = -row" in w for w in result.warnings)
    _, _, profile = read_out(result.path)
    assert profile["crs"] is None and profile["transform"] == Affine(1, 0, 0, 0, -1, 0)
    assert (profile["width"], profile["height"]) == (70, 50) and result.gsd_m is None
    cropped = segment_raster(path, tmp_path / "crop.tif", tiny_checkpoint, backend="torch",
                             extent=(10, -40, 50, -20))  # an extent in that frame: columns 10-50, rows 20-40
    _, _, profile = read_out(cropped.path)
    assert (profile["width"], profile["height"]) == (40, 20) and profile["transform"] == Affine(1, 0, 10, 0, -1, -20)


def test_other_gsd_and_geographic_rasters_are_written_on_the_model_grid(tmp_path, tiny_checkpoint):
    fine = write_tif(tmp_path / "fine.tif", scene(120, 100), transform=from_origin(500000.0, 6000000.0, 0.5, 0.5))
    result = segment_raster(fine, tmp_path / "fine_out.tif", tiny_checkpoint, backend="torch")
    _, _, profile = read_out(result.path)
    assert (profile["width"], profile["height"]) == (50, 60) and profile["transform"] == TRANSFORM
    assert any("resampled" in w for w in result.warnings)

    wgs84 = write_tif(tmp_path / "wgs84.tif", scene(40, 50), transform=from_origin(5.0, 45.0, 2e-5, 2e-5),
                      crs="EPSG:4326")
    result = segment_raster(wgs84, tmp_path / "wgs84_out.tif", tiny_checkpoint, backend="torch")
    _, _, profile = read_out(result.path)
    assert profile["crs"] == CRS.from_epsg(4326) and result.gsd_m == pytest.approx(1.0, rel=0.02)
    assert profile["width"] == pytest.approx(50 * 1.574, abs=1)
    assert profile["height"] == pytest.approx(40 * 2.222, abs=1)


def test_binary_mask_uses_the_threshold(tmp_path, contrast_checkpoint):
    src = write_tif(tmp_path / "in.tif", scene(80, 80))
    prob = read_out(segment_raster(src, tmp_path / "p.tif", contrast_checkpoint, backend="torch").path)[0]
    threshold = (float(np.median(prob)) + 0.5) / 255  # between two probability levels
    result = segment_raster(src, tmp_path / "b.tif", contrast_checkpoint, backend="torch", binary=True,
                            threshold=threshold)
    mask = read_out(result.path)[0]
    assert set(np.unique(mask)) == {0, 1} and result.threshold == threshold
    assert ((mask == 1) == (prob / 255 >= threshold)).mean() > 0.999


def test_cancel_leaves_no_file_and_progress_reaches_one(tmp_path, tiny_checkpoint):
    src = write_tif(tmp_path / "in.tif", scene(200, 200))
    calls = []
    with pytest.raises(Cancelled):
        segment_raster(src, tmp_path / "out" / "mask.tif", tiny_checkpoint, backend="torch", batch_size=2,
                       is_cancelled=lambda: calls.append(1) or len(calls) > 2)
    assert list((tmp_path / "out").iterdir()) == []
    seen: list[float] = []
    segment_raster(src, tmp_path / "out" / "mask.tif", tiny_checkpoint, backend="torch", on_progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) > 2
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["mask.tif"]


def test_bad_output_location_is_an_output_error(tmp_path, tiny_checkpoint):
    src = write_tif(tmp_path / "in.tif", scene(40, 40))
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="cannot write here"):
        segment_raster(src, tmp_path / "file" / "out.tif", tiny_checkpoint, backend="torch")
    with pytest.raises(OutputError, match="overwrite the input"):
        segment_raster(src, src, tiny_checkpoint, backend="torch")


class ArrayReader:
    """A minimal RasterReader over an in-memory array, as a QGIS provider reader would be."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        self.count, self.height, self.width = data.shape
        self.crs, self.transform, self.dtype, self.name = CRS.from_epsg(32631), TRANSFORM, "uint8", "memory"

    def read(self, window: Window, bands: list[int]) -> tuple[np.ndarray, np.ndarray]:
        r, c, h, w = int(window.row_off), int(window.col_off), int(window.height), int(window.width)
        padded = np.pad(self.data, ((0, 0), (h, h), (w, w)))
        valid = np.pad(np.ones(self.data.shape[1:], bool), ((h, h), (w, w)))
        return padded[[b - 1 for b in bands], r + h:r + 2 * h, c + w:c + 2 * w], valid[r + h:r + 2 * h, c + w:c + 2 * w]


def test_a_reader_object_is_used_as_is(tmp_path, contrast_checkpoint):
    image = scene(110, 75)
    from_file = segment_raster(write_tif(tmp_path / "in.tif", image), tmp_path / "a.tif", contrast_checkpoint,
                               backend="torch")
    from_reader = segment_raster(ArrayReader(image), tmp_path / "b.tif", contrast_checkpoint, backend="torch")
    assert from_reader.transform == TRANSFORM and from_reader.gsd_m is None
    np.testing.assert_array_equal(read_out(from_file.path)[0], read_out(from_reader.path)[0])


def test_out_of_memory_halves_the_batch_and_carries_on():
    def small_gpu(batch: np.ndarray) -> np.ndarray:
        if len(batch) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return batch[:, 0]

    runner = BatchRunner(small_gpu, 8)
    tiles = np.random.default_rng(0).normal(size=(7, 3, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(runner(tiles), tiles[:, 0])
    assert runner.limit == 2 and len(runner.notes) == 2
    with pytest.raises(RuntimeError, match="other"):
        BatchRunner(lambda b: (_ for _ in ()).throw(RuntimeError("other")), 4)(tiles)


def test_rolling_band_does_not_grow_with_the_raster_height():
    short, tall = RollingBlend(TileGrid(1000, 300, 512, 32)), RollingBlend(TileGrid(50000, 300, 512, 32))
    assert short.acc.shape == tall.acc.shape == (512 + 256, 300)


def test_default_model_is_the_bundled_one(tmp_path):
    from roadseg_plugin.core.checkpoint import BUNDLED_MODEL

    if not BUNDLED_MODEL.is_file():
        pytest.skip(f"bundled model not present at {BUNDLED_MODEL}")
    result = segment_raster(write_tif(tmp_path / "in.tif", scene(96, 80)), tmp_path / "out.tif", backend="torch")
    assert result.tile > 0 and read_out(result.path)[0].shape == (96, 80)


def test_column_strips_give_the_whole_raster_run_exactly(tmp_path, contrast_checkpoint, monkeypatch):
    """Very wide rasters are predicted strip by strip (bounded memory) with the same pixels."""
    from roadseg_plugin.core import engine

    image = scene(150, 700)
    src = write_tif(tmp_path / "wide.tif", image)
    whole = segment_raster(src, tmp_path / "whole.tif", contrast_checkpoint, backend="torch", batch_size=3)
    monkeypatch.setattr(engine, "STRIP_WIDTH", 256)  # 3 strips, borders inside tiles
    assert len(engine.column_strips((0, 150, 0, 700))) == 3
    strips = segment_raster(src, tmp_path / "strips.tif", contrast_checkpoint, backend="torch", batch_size=3)
    (a, mask_a, _), (b, mask_b, _) = read_out(whole.path), read_out(strips.path)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(mask_a, mask_b)


def test_a_direct_call_never_writes_over_its_input_through_a_hard_link(tmp_path, contrast_checkpoint):
    import os

    src = write_tif(tmp_path / "in.tif", scene(64, 64))
    os.link(src, tmp_path / "same.tif")
    before = src.read_bytes()
    with pytest.raises(OutputError, match="overwrite the input raster"):
        segment_raster(src, tmp_path / "same.tif", contrast_checkpoint, backend="torch")
    assert src.read_bytes() == before


def test_a_region_chunk_is_the_engines_own_prediction(tmp_path, contrast_checkpoint):
    """`predict_raster` is the one prediction routine: chunks of a raster predicted by the region
    run's worker function, one tile per batch as the engine here, hold exactly the engine's bytes,
    on the engine's grid."""
    from roadseg_plugin.core.params import InferenceParams, read_model_info
    from roadseg_plugin.core.region.chunk import ChunkTask, segment_chunk
    from roadseg_plugin.core.region.plan import inspect_input, plan_chunks

    src = write_tif(tmp_path / "in.tif", scene(150, 170))
    params = InferenceParams(model=str(contrast_checkpoint), backend="torch", device="cpu", batch_size=1)
    settings = params.resolve(read_model_info(contrast_checkpoint))
    whole = segment_raster(src, tmp_path / "whole.tif", contrast_checkpoint, backend="torch", device="cpu",
                           batch_size=1)
    expected, expected_mask, _ = read_out(whole.path)
    plan = inspect_input(str(src), settings)
    chunks = plan_chunks(plan.height, plan.width, settings.tile, settings.overlap, 64)
    assert len(chunks) >= 4
    got, got_mask = np.zeros_like(expected), np.zeros_like(expected_mask)
    for chunk in chunks:
        info = segment_chunk(ChunkTask(str(src), chunk.window, str(tmp_path / f"{chunk.name}.tif"), settings,
                                       normaliser=plan.normaliser))
        r0, r1, c0, c1 = chunk.window
        got[r0:r1, c0:c1], got_mask[r0:r1, c0:c1], profile = read_out(Path(info["part"]))
        assert profile["transform"] == whole.transform * Affine.translation(c0, r0)
        assert info["threshold"] == whole.threshold == settings.threshold
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got_mask, expected_mask)
