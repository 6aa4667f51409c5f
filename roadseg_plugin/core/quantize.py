"""int8 ONNX models: static quantisation of an exported checkpoint, calibrated on real imagery,
in the form that runs fastest on the CPU that makes it.

How fast an int8 graph runs depends on the CPU's instruction sets (AVX2, AVX-512 VNNI) and on
the form of the graph: QDQ pairs or QOperator nodes, per-channel or per-tensor weight scales,
which layers stay in float (`Form`, `FORMS`). `quantize_model` calibrates once, makes each
candidate form, checks it against fp32 on held-back tiles and times it on this CPU, and keeps
the fastest that agrees (`_pick_form`); the file records the form, the CPU and the figures.
Whether int8 is used at all on a given CPU is decided when the model runs (`backends.choice`).
Calibration runs on tiles read by the engine itself; 64 of them gave the fp32 model's APLS
on the validation tiles where 32 lost 0.03.

The file is `<stem>.<sha12>.int8.onnx` beside the checkpoint, so an int8 model is only ever
used with the exact checkpoint it was made from (`onnx_backend.find_int8`, which the backends
use without importing this module); retraining or replacing the checkpoint makes the engine fall
back to fp32 until `quantize_model` is run again.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import temporary_sibling
from .checkpoint import ModelMeta
from .errors import OutputError, RasterError
from .model_meta import read_onnx_meta
from .onnx_backend import DIGEST_KEY, META_KEY, PRECISION_KEY, export_onnx, int8_path
from .params import model_file

RASTER_SUFFIXES = {".tif", ".tiff", ".png", ".jpg", ".jpeg", ".jp2", ".vrt", ".img"}
CHECK_TILES = 4  # tiles beyond the calibration crops on which each form is compared with fp32


def calibration_images(folder: str | os.PathLike) -> list[Path]:
    """Rasters under `folder` (or `folder/images` for a training dataset folder).

    Raises:
        RasterError: the folder holds no raster files.
    """
    folder = Path(folder)
    root = folder / "images" if (folder / "images").is_dir() else folder
    images = sorted(p for p in root.iterdir() if p.suffix.lower() in RASTER_SUFFIXES) if root.is_dir() else []
    if not images:
        raise RasterError(folder, "holds no raster images to calibrate on",
                          "pass a folder of imagery like the imagery you will segment (GeoTIFF, PNG, JPEG)")
    return images


def calibration_tiles(images: list[Path], meta: ModelMeta, crops: int = 64, seed: int = 0) -> list[np.ndarray]:
    """`crops` model inputs (1, C, tile, tile) from random places in random images, read,
    resampled and normalised by the engine's own reader (`iter_tile_batches`), so the int8 ranges
    are calibrated on exactly what `segment_raster` feeds the model; mostly no-data tiles skipped."""
    from .engine import iter_tile_batches, make_normaliser
    from .readers import choose_bands, open_raster
    from .tiling import TileGrid

    rng = np.random.default_rng(seed)
    per_image = -(-crops // len(images))
    chosen: list[np.ndarray] = []
    for index in rng.permutation(len(images)):
        with open_raster(images[index], gsd_m=meta.gsd_m) as reader:
            if min(reader.height, reader.width) < meta.tile:
                continue
            bands = choose_bands(reader, meta.in_channels)
            normaliser, _ = make_normaliser(reader, meta, bands)
            grid = TileGrid(reader.height, reader.width, meta.tile, meta.overlap)
            wanted = set(rng.permutation(grid.n_tiles)[:2 * per_image].tolist())
            kept = _keep_tiles(iter_tile_batches(reader, grid, bands, normaliser, 4), wanted, per_image)
        chosen += kept
        if len(chosen) >= crops:
            break
    return chosen[:crops]


def _keep_tiles(batches: Iterator, wanted: set[int], limit: int) -> list[np.ndarray]:
    """Copies of the wanted tiles (by row-major index) that are mostly valid, at most `limit`."""
    kept, index = [], 0
    for batch in batches:
        for tile, valid in zip(batch.tiles, batch.valid, strict=True):
            if index in wanted and valid.mean() > 0.5:
                kept.append(tile[None].copy())
            index += 1
        if len(kept) >= limit:
            break
    return kept[:limit]


@dataclass(frozen=True)
class Form:
    """How a model is quantised. Activations are always uint8 and weights int8 (u8s8): ONNX
    Runtime's x86 kernels are built for that pair; u8u8 and s8s8 ran 2-3x slower than u8s8 on
    the bundled model with AVX2 and with AVX-512 VNNI alike. The head (last convolution, sigmoid)
    always stays in float: a uint8 pair on the probabilities capped them at their calibrated
    maximum (0.8 on real tiles), so thresholds above it found no roads.

    Attributes:
        name: what `--form` takes and the file's metadata records.
        operators: "qdq" (QuantizeLinear/DequantizeLinear pairs that ONNX Runtime fuses into its
            int8 kernels) or "qoperator" (QLinearConv and friends written out).
        per_channel: one weight scale per output channel (else one per tensor).
        reduce_range: 7-bit weights, which cannot saturate the 16-bit sums of AVX2's u8s8
            instruction (VNNI has none).
        float_stem: the first convolution, which sees the raw normalised colours, stays in float.
    """

    name: str
    operators: str
    per_channel: bool
    reduce_range: bool = False
    float_stem: bool = True


FORMS = {form.name: form for form in (
    Form("qdq-per-channel", "qdq", per_channel=True),
    Form("qdq-per-tensor", "qdq", per_channel=False),
    Form("qdq-per-channel-int8-stem", "qdq", per_channel=True, float_stem=False),
    Form("qoperator-per-channel", "qoperator", per_channel=True),
    Form("qdq-per-channel-7bit", "qdq", per_channel=True, reduce_range=True),
)}
DEFAULT_FORM = "qdq-per-channel"
# What "auto" measures on the CPU it runs on: every form above was within 0.003 IoU of fp32 on the
# bundled model's held-out tiles with AVX2 and with AVX-512 VNNI kernels; the 7-bit one lost
# 0.04 APLS and is never faster, so it is only made when asked for.
AUTO_FORMS = ("qdq-per-channel", "qdq-per-tensor", "qdq-per-channel-int8-stem", "qoperator-per-channel")
MIN_AGREEMENT = 0.98  # road-mask IoU against fp32 on held-back tiles: the others > 0.99; the int8 stem with
# AVX2 kernels 0.967 (its u8s8 sums saturate on raw colours), which cost 0.04 APLS on the held-out tiles
SAME_SPEED = 0.02  # a form must be this much faster than the default form to replace it


def _float_nodes(prepared: Path, form: Form) -> list[str]:
    """Names of the nodes `form` keeps in float: the head and everything after it, and the stem."""
    import onnx

    nodes = list(onnx.load(str(prepared)).graph.node)  # topologically sorted
    convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
    return ([nodes[convs[0]].name] if form.float_stem else []) + [n.name for n in nodes[convs[-1]:]]


def _quantize(prepared: Path, form: Form, crops: list[np.ndarray], ranges: Path, out: Path) -> None:
    """Write `prepared` quantised in `form`. The activation ranges are calibrated on `crops` by the
    first call and read back from the file `ranges` by the next ones (ONNX Runtime 1.20 and later;
    older ones calibrate again)."""
    import inspect

    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.crops = iter(crops)

        def get_next(self) -> dict[str, np.ndarray] | None:
            crop = next(self.crops, None)
            return None if crop is None else {"image": crop}

    cached = {}
    if "calibration_cache_path" in inspect.signature(quantize_static).parameters:
        cached["calibration_cache_path"] = str(ranges)
    quantize_static(str(prepared), str(out), None if ranges.is_file() and cached else Reader(),
                    quant_format=QuantFormat.QDQ if form.operators == "qdq" else QuantFormat.QOperator,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=form.per_channel,
                    reduce_range=form.reduce_range, nodes_to_exclude=_float_nodes(prepared, form),
                    calibrate_method=CalibrationMethod.MinMax, extra_options={"CalibMovingAverage": True},
                    **cached)


def _agreement(reference: np.ndarray, probs: np.ndarray, threshold: float) -> float:
    """IoU of the road masks of two predictions (1 when neither has a road)."""
    a, b = reference > threshold, probs > threshold
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _pick_form(fp32: Path, made: dict[str, Path], check: np.ndarray) -> tuple[str, dict]:
    """The fastest of the `made` forms on this CPU among those whose road masks agree with fp32's
    on the `check` tiles; the default form unless another is faster by more than `SAME_SPEED`.

    Returns:
        (form name, {"cpu", "tiles_per_s", "agreement"} for the file's metadata).
    """
    from .backends.choice import measure
    from .backends.cpu import describe_cpu
    from .backends.onnxruntime_backend import OnnxRuntimeBackend

    reference = OnnxRuntimeBackend(fp32, "cpu")
    loaded = {name: OnnxRuntimeBackend(path, "cpu") for name, path in made.items()}
    expected = reference.predict(check)
    threshold = reference.meta.threshold
    agreement = {name: round(_agreement(expected, b.predict(check), threshold), 4) for name, b in loaded.items()}
    speeds = measure(loaded, batch=2, rounds=5) if len(loaded) > 1 else {name: 0.0 for name in loaded}
    passing = [name for name in made if agreement[name] >= MIN_AGREEMENT] or [max(made, key=lambda n: agreement[n])]
    best = max(speeds[name] for name in passing)
    chosen = next(name for name in passing if speeds[name] >= best * (1 - SAME_SPEED))
    return chosen, {"cpu": describe_cpu(), "tiles_per_s": {k: round(v, 3) for k, v in speeds.items()},
                    "agreement": agreement}


def _copy_metadata(source: Path, target: Path, crops: int, form: str, picked: dict) -> None:
    import onnx

    props = {p.key: p.value for p in onnx.load(str(source)).metadata_props}
    graph = onnx.load(str(target))
    del graph.metadata_props[:]
    precision = {"precision": "int8", "calibration_crops": crops, "form": form, **picked}
    for key, value in ((META_KEY, props[META_KEY]), (DIGEST_KEY, props[DIGEST_KEY]),
                       (PRECISION_KEY, json.dumps(precision))):
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, str(target))


def quantize_model(checkpoint: str | os.PathLike | None, calibration: str | os.PathLike,
                   out: str | os.PathLike | None = None, crops: int = 64, seed: int = 0,
                   form: str = "auto") -> Path:
    """Write the int8 ONNX model of `checkpoint`, calibrated on crops of the rasters in `calibration`.

    Args:
        checkpoint: a .pt checkpoint; None means the bundled model.
        calibration: a folder of imagery like the imagery the model will segment.
        out: where to write; default `int8_path(checkpoint)`, which the engine finds by itself.
        crops: calibration crops of the model's tile size.
        form: a name in `FORMS`, or "auto": each of `AUTO_FORMS` is made (one calibration for
            all), checked against fp32 on held-back tiles and timed on this CPU; the fastest
            that agrees with fp32 is kept (see `_pick_form`).

    Raises:
        CheckpointError, RasterError, OutputError: bad model, no usable imagery, unwritable output.
        ValueError: unknown form.
    """
    if form != "auto" and form not in FORMS:
        raise ValueError(f"unknown int8 form {form!r}; use auto or one of {', '.join(FORMS)}")
    checkpoint = model_file(checkpoint)
    images = calibration_images(calibration)
    fp32 = export_onnx(checkpoint)
    meta = read_onnx_meta(fp32)
    target = Path(out) if out is not None else int8_path(checkpoint)
    try:
        tmp = temporary_sibling(target)
    except OSError as exc:
        raise OutputError(target, f"cannot write here ({exc.strerror})", "choose a writable folder") from None
    try:
        made = calibration_tiles(images, meta, crops + CHECK_TILES, seed)
        if not made:
            raise RasterError(Path(calibration), f"has no image of at least {meta.tile}x{meta.tile} px with "
                              f"{meta.in_channels} bands and mostly valid pixels", "add larger or fuller images")
        # held back from calibration to check each form against fp32 (none when imagery is scarce)
        check = made[crops:] or made[:CHECK_TILES]
        made = made[:crops]
        with tempfile.TemporaryDirectory(prefix="roadseg-int8-") as work:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            prepared, ranges = Path(work) / "prepared.onnx", Path(work) / "ranges.json"
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
            names = AUTO_FORMS if form == "auto" else (form,)
            files = {name: Path(work) / f"{name}.onnx" for name in names}
            for name, path in files.items():
                _quantize(prepared, FORMS[name], made, ranges, path)
            chosen, picked = _pick_form(fp32, files, np.concatenate(check))
            os.replace(files[chosen], tmp)
        _copy_metadata(fp32, tmp, len(made), chosen, picked)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
