"""`python -m roadseg_plugin segment|vectorise|export-onnx|quantize`: thin commands over the core.

Each command parses its options, calls one or two library functions and prints a short
summary. Bad input (a RoadSegError or an invalid option value) exits with status 2 and one
line `error: <file>: <what is wrong>; <what to do>`, and leaves no output file behind.
Heavy modules (torch, onnxruntime, geopandas) are imported inside the commands.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from .core.errors import Cancelled, OutputError, RoadSegError

EXIT_BAD_INPUT = 2
EXIT_CANCELLED = 130


def _band_list(text: str) -> list[int]:
    try:
        bands = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of band numbers") from None
    if not bands:
        raise argparse.ArgumentTypeError("give at least one band number, e.g. 1,2,3")
    return bands


def _add_vector_options(p: argparse.ArgumentParser, full: bool) -> None:
    """Clean-up options; left unset they take `VectoriseParams`' defaults."""
    p.add_argument("--threshold", type=float, help="road probability threshold (default: the model's)")
    p.add_argument("--min-length", type=float, help="drop pieces of network shorter than this, metres (20)")
    if full:
        p.add_argument("--spur-length", type=float, help="prune dangling branches shorter than this, metres (10)")
        p.add_argument("--gap", type=float, help="bridge aligned line ends closer than this, metres (15)")
        p.add_argument("--tolerance", type=float, help="simplification tolerance, metres (1)")
        p.add_argument("--smooth", action="store_true", default=None, help="smooth the lines (Chaikin)")
    p.add_argument("--format", help="gpkg, shp, geojson or fgb (default: from the --out extension)")


def _vectorise_params(args: argparse.Namespace):
    from .core.vectorise import VectoriseParams

    names = ("min_length", "spur_length", "gap", "tolerance", "smooth")
    return VectoriseParams(**{n: getattr(args, n) for n in names if getattr(args, n, None) is not None})


def _segment_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="extract road centrelines from an aerial image")
    p.add_argument("raster", type=Path, help="input image (GeoTIFF, VRT, JPEG, PNG, ...)")
    p.add_argument("--out", type=Path, required=True, help="road lines to write, e.g. roads.gpkg")
    p.add_argument("--model", type=Path, help="checkpoint .pt or exported .onnx (default: the bundled model)")
    p.add_argument("--mask-out", type=Path, help="also keep the road probability GeoTIFF here")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--backend", default="auto",
                   help="auto, torch, onnxruntime or onnxruntime-int8 (auto: torch on CUDA; on CPU the int8 "
                        "model when one was made from this checkpoint, else fp32 ONNX Runtime)")
    p.add_argument("--batch-size", type=int, help="tiles per forward pass (default 2 on CPU, 16 on CUDA)")
    p.add_argument("--tile", type=int, help="tile size in pixels (default: the model's)")
    p.add_argument("--overlap", type=int, help="tile overlap in pixels (default: the model's)")
    p.add_argument("--bands", type=_band_list, help="bands to use, e.g. 1,2,3 (default: the first non-alpha)")
    p.add_argument("--tta", action="store_true", help="average the 8 flips/rotations (8x slower)")
    _add_vector_options(p, full=False)
    p.set_defaults(func=cmd_segment)


def _vectorise_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vectorise", help="turn a road mask or probability raster into centrelines")
    p.add_argument("mask", type=Path, help="mask (0/1) or probability (0-255) GeoTIFF")
    p.add_argument("--out", type=Path, required=True, help="road lines to write, e.g. roads.shp")
    _add_vector_options(p, full=True)
    p.set_defaults(func=cmd_vectorise)


def _export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-onnx", help="export a checkpoint to ONNX (for ONNX Runtime)")
    p.add_argument("model", type=Path, help="RoadSeg checkpoint (.pt)")
    p.add_argument("out", type=Path, help="ONNX file to write")
    p.set_defaults(func=cmd_export_onnx)


def _quantize_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="make the int8 model of a checkpoint (about 1.5x faster on CPU)",
                       description="Calibrate on tiles of real imagery and write <stem>.<sha12>.int8.onnx "
                                   "beside the checkpoint, where segment finds and uses it on CPU.")
    p.add_argument("model", type=Path, nargs="?", help="RoadSeg checkpoint (.pt; default: the bundled model)")
    p.add_argument("--calibration", type=Path, required=True,
                   help="folder of imagery like what you will segment (a training folder's images/ works)")
    p.add_argument("--crops", type=int, default=64, help="calibration tiles of the model's tile size (64)")
    p.add_argument("--out", type=Path, help="write here instead (then pass it as --model)")
    p.set_defaults(func=cmd_quantize)


def _check_vector_output(out: Path, fmt: str | None) -> None:
    """Fail before any work when the lines could not be written."""
    from .core.vector_io import driver_for

    driver_for(out, fmt)
    if not out.parent.is_dir():
        raise OutputError(out, f"the folder {out.parent} does not exist", "create it first or choose another folder")


def _progress_bar(label: str):
    from tqdm import tqdm

    bar = tqdm(total=100, desc=label, unit="%", disable=None, leave=False,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}")

    def update(fraction: float) -> None:
        bar.update(round(100 * fraction) - bar.n)

    return bar, update


def _write_vectors(mask: Path, out: Path, fmt: str | None, threshold: float, params) -> tuple[int, float]:
    from .core.vector_io import write_lines
    from .core.vectorise import vectorise_raster

    bar, update = _progress_bar("vectorise")
    with bar:
        gdf = vectorise_raster(mask, threshold=threshold, on_progress=update, **params.kwargs())
    write_lines(gdf, out, driver=fmt)
    length = float(gdf["length_m"].sum()) / 1000 if len(gdf) else 0.0
    return len(gdf), length


def cmd_segment(args: argparse.Namespace) -> int:
    from .core.engine import segment_raster

    _check_vector_output(args.out, args.format)
    with tempfile.TemporaryDirectory(prefix=".roadseg-", dir=args.out.parent) as work:  # beside the output: room
        mask = args.mask_out or Path(work) / "probability.tif"
        bar, update = _progress_bar("segment")
        with bar:
            result = segment_raster(args.raster, mask, args.model, device=args.device, backend=args.backend,
                                    tile=args.tile, overlap=args.overlap, batch_size=args.batch_size,
                                    bands=args.bands, threshold=args.threshold, tta=args.tta, on_progress=update)
        for warning in result.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        mpx = result.width * result.height / 1e6
        print(f"segmented {result.width} x {result.height} px with {result.backend} on {result.device}: "
              f"{mpx / result.seconds:.2f} Mpx/s ({result.seconds:.1f} s)")
        try:
            lines, km = _write_vectors(mask, args.out, args.format, result.threshold, _vectorise_params(args))
        except BaseException:
            if args.mask_out is not None:
                args.mask_out.unlink(missing_ok=True)  # all or nothing
            raise
    print(f"wrote {lines} road lines ({km:.2f} km) to {args.out}")
    if args.mask_out is not None:
        print(f"road probability (0-255) in {args.mask_out}")
    return 0


def _stored_threshold(mask: Path) -> float | None:
    """The threshold `segment_raster` recorded in a probability raster's tags, if any."""
    import rasterio

    try:
        with rasterio.open(mask) as src:
            value = src.tags().get("ROADSEG_THRESHOLD")
    except rasterio.errors.RasterioError:
        return None  # the vectoriser reports unreadable files
    try:
        return float(value) if value else None
    except ValueError:
        return None


def cmd_vectorise(args: argparse.Namespace) -> int:
    _check_vector_output(args.out, args.format)
    threshold = args.threshold if args.threshold is not None else _stored_threshold(args.mask)
    threshold = 0.5 if threshold is None else threshold
    lines, km = _write_vectors(args.mask, args.out, args.format, threshold, _vectorise_params(args))
    print(f"wrote {lines} road lines ({km:.2f} km) to {args.out}")
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from .core.onnx_backend import export_onnx

    print(f"wrote {export_onnx(args.model, args.out)}")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from .core.quantize import quantize_model

    print(f"wrote {quantize_model(args.model, args.calibration, args.out, args.crops)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m roadseg_plugin",
                                     description="Road network extraction from aerial imagery.")
    sub = parser.add_subparsers(dest="command", required=True)
    _segment_parser(sub)
    _vectorise_parser(sub)
    _export_parser(sub)
    _quantize_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (RoadSegError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (Cancelled, KeyboardInterrupt):
        print("error: cancelled; no output written", file=sys.stderr)
        return EXIT_CANCELLED
