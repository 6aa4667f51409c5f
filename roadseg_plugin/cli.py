"""`python -m roadseg_plugin segment|vectorise|export-onnx|quantize`: thin commands over the core.

Each command builds `InferenceParams` / `VectoriseParams` from its options (generated from those
dataclasses, so every option, default and help text has one home), calls one core function and
prints a short summary. Bad input exits with status 2 and one line `error: <file or option>:
<what is wrong>; <what to do>`, before any work where it can be known then; Ctrl-C exits 130 and
SIGTERM 143, both leaving the previous outputs as they were. A file size limit (`ulimit -f`)
makes writes fail instead of killing the process (SIGXFSZ ignored), so it is reported like a
full disk. That line is all the user sees of a failure: GDAL's messages (rasterio and pyogrio log
them) are dropped, since what matters is raised and reworded, and what C libraries print
straight to the terminal (libtiff's write errors, ONNX Runtime) is held back and shown only with
a traceback, when a command fails unexpectedly. Heavy modules are imported inside the commands.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

from .core.errors import Cancelled, RoadSegError
from .core.params import SET_BY_INFERENCE, InferenceParams, VectoriseParams, describe

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
    from .core.pipeline import extract_roads

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
    from .core.pipeline import vectorise_file

    vectorise = build(VectoriseParams, args)
    bar, update = _progress_bar("vectorise")
    with bar:
        result = vectorise_file(args.mask, args.out, vectorise, on_progress=update)
    _report(result)
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from .core.errors import OutputError
    from .core.onnx_backend import export_onnx
    from .core.outputs import check_outputs

    check_outputs({"ONNX model": args.out}, [args.model])
    if args.out.suffix.lower() != ".onnx":
        raise OutputError(args.out, f"the ONNX model cannot be written as {args.out.suffix!r}",
                          "name it something.onnx")
    print(f"wrote {export_onnx(args.model, args.out, deepness=args.deepness)}")
    if args.deepness:
        from .core.deepness import deepness_notes
        from .core.params import read_model_info

        for note in deepness_notes(read_model_info(args.out)):
            print(note)
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from .core.errors import OutputError, ParamError
    from .core.outputs import check_outputs
    from .core.params import model_file
    from .core.quantize import FORMS, calibration_images, quantize_model

    check_outputs({"int8 model": args.out}, [model_file(args.model), *calibration_images(args.calibration)])
    if args.out is not None and args.out.suffix.lower() != ".onnx":
        raise OutputError(args.out, f"the int8 model is an ONNX file and cannot be written as {args.out.suffix!r}",
                          "name it something.onnx")
    if args.form != "auto" and args.form not in FORMS:
        raise ParamError("form", args.form, f"is not one of auto, {', '.join(FORMS)}")
    print(f"wrote {quantize_model(args.model, args.calibration, args.out, args.crops, form=args.form)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m roadseg_plugin",
                                     description="Road network extraction from aerial imagery.")
    sub = parser.add_subparsers(dest="command", required=True)
    _segment_parser(sub)
    _vectorise_parser(sub)
    _export_parser(sub)
    _quantize_parser(sub)
    from .region_cli import add_parser as region_parser  # imports this module: here, not at the top
    region_parser(sub)
    return parser


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


QUIET_LOGGERS = ("rasterio", "pyogrio", "fiona")  # GDAL messages; their errors are raised anyway
NATIVE_REPLAY_BYTES = 20000


@contextmanager
def _signals() -> Iterator[None]:
    """SIGTERM raises `Terminated`; SIGXFSZ (file size limit) is ignored so the write fails with
    EFBIG and is reported, instead of the process dying with the temporaries left."""
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _terminate)}
    if hasattr(signal, "SIGXFSZ"):
        previous[signal.SIGXFSZ] = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Drop GDAL's logged messages, hold back what C code prints on file descriptor 2 and the
    libraries' Python warnings (rasterio's NotGeoreferencedWarning, pyogrio's missing-CRS note:
    RoadSeg says what matters in its own `warning:` lines).

    Python's own stderr (the error line, RoadSeg's warnings, the progress bar) still reaches the
    terminal: when it is descriptor 2 it is moved to a copy of it. The held-back text is written
    out only when an exception escapes (a bug: the traceback follows it).
    """
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    saved_loggers = [(lg.propagate, lg.handlers[:]) for lg in loggers]
    for lg in loggers:
        lg.handlers, lg.propagate = [logging.NullHandler()], False
    capture = saved_fd = None
    python_stderr = sys.stderr
    caught_warnings = warnings.catch_warnings(record=True)
    held = caught_warnings.__enter__()  # Python warnings (rasterio's NotGeoreferencedWarning, pyogrio's ...)
    warnings.simplefilter("always")
    try:
        python_stderr.flush()
        own_fd = python_stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # not a file (a test's capture, an embedding host)
        own_fd = False
    try:
        capture, saved_fd = tempfile.TemporaryFile(), os.dup(2)
        os.dup2(capture.fileno(), 2)
        if own_fd:
            sys.stderr = open(os.dup(saved_fd), "w", encoding=python_stderr.encoding or "utf-8",
                              errors="backslashreplace", buffering=1)
    except OSError:  # no descriptor 2 at all: nothing to hold back
        pass
    try:
        yield
    except BaseException:
        _restore_stderr(python_stderr, saved_fd, capture, replay=True)
        capture = saved_fd = None
        for w in held[-20:]:  # a bug: what the libraries warned about may explain it
            print(warnings.formatwarning(w.message, w.category, w.filename, w.lineno).rstrip(), file=sys.stderr)
        raise
    finally:
        caught_warnings.__exit__(None, None, None)
        _restore_stderr(python_stderr, saved_fd, capture, replay=False)
        for lg, (propagate, handlers) in zip(loggers, saved_loggers, strict=True):
            lg.propagate, lg.handlers = propagate, handlers


def _restore_stderr(python_stderr: Any, saved_fd: int | None, capture: Any, replay: bool) -> None:
    if sys.stderr is not python_stderr:
        sys.stderr.close()
        sys.stderr = python_stderr
    if saved_fd is not None:
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
    if capture is not None:
        if replay:
            capture.seek(0, os.SEEK_END)
            capture.seek(max(0, capture.tell() - NATIVE_REPLAY_BYTES))
            sys.stderr.write(capture.read().decode("utf-8", "replace"))
            sys.stderr.flush()
        capture.close()


class _WarningLines(logging.Handler):
    """RoadSeg's logged warnings as `warning: ...` lines on stderr (the one shape users see)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"warning: {record.getMessage()}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the process exit status."""
    args = build_parser().parse_args(argv)
    own = logging.getLogger("roadseg_plugin")
    handler = _WarningLines(logging.WARNING)
    own.addHandler(handler)
    with _signals(), _quiet_libraries():
        try:
            return args.func(args)
        except (RoadSegError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except OSError as exc:  # what no check foresaw (a file vanished, a device error): still one line
            where = f"{exc.filename}: " if exc.filename else ""
            print(f"error: {where}{exc.strerror or exc}; check the path, its permissions and free disk space",
                  file=sys.stderr)
            return EXIT_BAD_INPUT
        except (Cancelled, KeyboardInterrupt):
            print("error: cancelled; earlier outputs are unchanged", file=sys.stderr)
            return EXIT_CANCELLED
        except Terminated:
            print("error: terminated; earlier outputs are unchanged", file=sys.stderr)
            return EXIT_TERMINATED
        finally:
            own.removeHandler(handler)
