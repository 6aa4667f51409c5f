"""`python -m roadseg_plugin segment|vectorise|export-onnx|quantize|segment-region` (the `roadseg`
command): the parser of every command (`segment`, `region`) and `main`, which runs one.

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
from typing import Any

from ..core.errors import Cancelled, RoadSegError
from . import region, segment
from .options import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_TERMINATED, Terminated


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m roadseg_plugin",
                                     description="Road network extraction from aerial imagery.")
    sub = parser.add_subparsers(dest="command", required=True)
    segment.add_parsers(sub)
    region.add_parser(sub)
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
