"""The commands `segment`, `vectorise`, `export-onnx` and `quantize`: their parsers and what each
runs (one core function) and prints (a progress bar, then a short summary). Heavy modules are
imported inside the commands, so `--help` stays light.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..core.params import SET_BY_INFERENCE, InferenceParams, VectoriseParams
from .options import add_options, build


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The four commands' parsers, each with its `func`."""
    _segment_parser(sub)
    _vectorise_parser(sub)
    _export_parser(sub)
    _quantize_parser(sub)


def _segment_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="extract road centrelines from an aerial image")
    p.add_argument("raster", help="input image (GeoTIFF, VRT, JPEG, PNG, any GDAL raster name)")
    p.add_argument("--out", type=Path, required=True, help="road lines to write, e.g. roads.gpkg")
    p.add_argument("--mask-out", type=Path, help="also keep the road probability GeoTIFF here")
    add_options(p, InferenceParams)
    add_options(p, VectoriseParams, skip=SET_BY_INFERENCE)  # the threshold: InferenceParams' option
    p.set_defaults(func=cmd_segment)


def _vectorise_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vectorise", help="turn a road mask or probability raster into centrelines")
    p.add_argument("mask", type=Path, help="mask (0/1) or probability (0-255) GeoTIFF")
    p.add_argument("--out", type=Path, required=True, help="road lines to write, e.g. roads.shp")
    add_options(p, VectoriseParams)
    p.set_defaults(func=cmd_vectorise)


def _export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-onnx", help="export a checkpoint to ONNX (for ONNX Runtime, or the Deepness plugin)")
    p.add_argument("model", type=Path, help="RoadSeg checkpoint (.pt)")
    p.add_argument("out", type=Path, help="ONNX file to write")
    p.add_argument("--deepness", action="store_true",
                   help="a model the Deepness QGIS plugin loads: its metadata (Segmentor, class road, resolution, "
                        "tile size, overlap, standardisation, threshold) and the model's tile size fixed")
    p.set_defaults(func=cmd_export_onnx)


def _quantize_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="make the int8 model of a checkpoint (faster on CPUs with fast int8 kernels)",
                       description="Calibrate on tiles of real imagery and write <stem>.<sha12>.int8.onnx "
                                   "beside the checkpoint, where segment finds and uses it on CPU.")
    p.add_argument("model", type=Path, nargs="?", help="RoadSeg checkpoint (.pt; default: the bundled model)")
    p.add_argument("--calibration", type=Path, required=True,
                   help="folder of imagery like what you will segment (a training folder's images/ works)")
    p.add_argument("--crops", type=int, default=64, help="calibration tiles of the model's tile size (64)")
    p.add_argument("--out", type=Path, help="write here instead (then pass it as --model)")
    p.add_argument("--form", default="auto", help="int8 graph form: auto (each candidate form timed on this CPU, "
                   "the fastest that agrees with fp32 kept) or one of qdq-per-channel, qdq-per-tensor, "
                   "qdq-per-channel-int8-stem, qoperator-per-channel, qdq-per-channel-7bit")
    p.set_defaults(func=cmd_quantize)


LONG_RUN_S = 3600  # runs projected to take longer are announced once, with how long they will take
PROJECT_AFTER_S = 60  # ... after this much of the run, when the speed is known


def _progress_bar(label: str):
    import time

    from tqdm import tqdm

    bar = tqdm(total=100, desc=label, unit="%", disable=None, leave=False,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}")
    start, said = time.monotonic(), [False]

    def update(fraction: float) -> None:
        bar.update(round(100 * fraction) - bar.n)
        elapsed = time.monotonic() - start
        if not said[0] and elapsed > PROJECT_AFTER_S and 0 < fraction < 1:
            said[0] = True
            total = elapsed / fraction
            if total > LONG_RUN_S:
                bar.write(f"note: {label}: {100 * fraction:.2g} % done in {elapsed:.0f} s; at this speed the whole "
                          f"run takes about {_duration(total)}; Ctrl-C stops it and keeps earlier outputs",
                          file=sys.stderr)

    return bar, update


def _duration(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.0f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.0f} hours"
    return f"{seconds / 60:.0f} minutes"


def _report(result: Any, binary: bool = False) -> None:
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"wrote {result.n_lines} road lines ({result.length_km:.2f} km) to {result.lines_path}")
    if result.prob_path is not None:
        print(f"road {'mask (0/1)' if binary else 'probability (0-255)'} in {result.prob_path}")


def cmd_segment(args: argparse.Namespace) -> int:
    from ..core.pipeline import extract_roads

    params, vectorise = build(InferenceParams, args), build(VectoriseParams, args)
    bar, update = _progress_bar("segment")
    with bar:
        result = extract_roads(args.raster, args.out, params, vectorise, prob_out=args.mask_out, on_progress=update)
    seg = result.segment
    print(f"segmented {seg.width} x {seg.height} px with {seg.backend} on {seg.device}: "
          f"{seg.width * seg.height / 1e6 / seg.seconds:.2f} Mpx/s ({seg.seconds:.1f} s)")
    _report(result, params.binary)
    return 0


def cmd_vectorise(args: argparse.Namespace) -> int:
    from ..core.pipeline import vectorise_file

    vectorise = build(VectoriseParams, args)
    bar, update = _progress_bar("vectorise")
    with bar:
        result = vectorise_file(args.mask, args.out, vectorise, on_progress=update)
    _report(result)
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from ..core.errors import OutputError
    from ..core.onnx_backend import export_onnx
    from ..core.outputs import check_outputs

    check_outputs({"ONNX model": args.out}, [args.model])
    if args.out.suffix.lower() != ".onnx":
        raise OutputError(args.out, f"the ONNX model cannot be written as {args.out.suffix!r}",
                          "name it something.onnx")
    print(f"wrote {export_onnx(args.model, args.out, deepness=args.deepness)}")
    if args.deepness:
        from ..core.deepness import deepness_notes
        from ..core.params import read_model_info

        for note in deepness_notes(read_model_info(args.out)):
            print(note)
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from ..core.errors import OutputError, ParamError
    from ..core.outputs import check_outputs
    from ..core.params import model_file
    from ..core.quantize import FORMS, calibration_images, quantize_model

    check_outputs({"int8 model": args.out}, [model_file(args.model), *calibration_images(args.calibration)])
    if args.out is not None and args.out.suffix.lower() != ".onnx":
        raise OutputError(args.out, f"the int8 model is an ONNX file and cannot be written as {args.out.suffix!r}",
                          "name it something.onnx")
    if args.form != "auto" and args.form not in FORMS:
        raise ParamError("form", args.form, f"is not one of auto, {', '.join(FORMS)}")
    print(f"wrote {quantize_model(args.model, args.calibration, args.out, args.crops, form=args.form)}")
    return 0
