"""`python -m roadseg_plugin segment-region INPUTS... --out DIR`: region-scale runs on Dask.

A thin command over `core.region.segment_region`, registered by `main.build_parser`: the options
of `segment` (generated from `InferenceParams` / `VectoriseParams`) plus where it runs
(`--scheduler tcp://HOST:8786` or `--workers N` local processes), `--chunk`, `--resume` and
`--skip-bad`. Progress is a tqdm bar over chunks (line groups in its postfix); the Dask dashboard
link and notes are printed as they come, a summary at the end. Bad input exits 2 with one
`error:` line before any work; Ctrl-C stops the local cluster, keeps every finished part and
exits 130 saying how to resume.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..core.errors import Cancelled
from ..core.params import SET_BY_INFERENCE, InferenceParams, VectoriseParams
from .options import EXIT_CANCELLED, add_options, build

DEFAULT_CHUNK = 8192  # = core.region.plan.DEFAULT_CHUNK (not imported: --help stays light)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment-region", help="segment roads over many or huge rasters on a Dask cluster (local or remote)",
        description="Cut every input into chunks, segment them on Dask workers (a local cluster, or the workers "
                    "of --scheduler, which must reach the model and inputs at the same paths), and write one "
                    "line layer of the whole region (field source names the input), one probability VRT per "
                    "input over its parts, and region.json, the manifest --resume continues from.")
    p.add_argument("inputs", nargs="+", help="rasters, VRTs, folders of rasters or quoted globs ('tiles/*.tif'); "
                                             "their CRS and pixel size may differ")
    p.add_argument("--out", type=Path, required=True, help="output folder (created when missing)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="a running Dask scheduler, e.g. tcp://10.0.0.5:8786 "
                                                          "[default: start a local cluster]")
    p.add_argument("--workers", type=int, help="worker processes of the local cluster [default: one per physical "
                                               "core, each with one model thread]")
    p.add_argument("--chunk", type=int, default=DEFAULT_CHUNK,
                   help=f"chunk side in pixels of the model's grid, rounded to whole tiles [default: {DEFAULT_CHUNK}]")
    p.add_argument("--resume", action="store_true", help="finish the run in --out: its finished parts are kept")
    p.add_argument("--skip-bad", action="store_true", help="leave unreadable inputs out instead of refusing to start")
    add_options(p, InferenceParams)
    add_options(p, VectoriseParams, skip=SET_BY_INFERENCE)  # the threshold: InferenceParams' option
    p.set_defaults(func=cmd_segment_region)


class _Bar:
    """tqdm over chunks; line groups in the postfix; notes printed above it."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=0, desc="chunks", unit="chunk", disable=None, leave=False, dynamic_ncols=True)

    def progress(self, p: Any) -> None:
        self.bar.total = p.chunks_total
        self.bar.n = p.chunks_done
        self.bar.set_postfix_str(f"line groups {p.groups_done}/{p.groups_total}", refresh=False)
        self.bar.refresh()

    def message(self, text: str) -> None:
        self.bar.write(text, file=sys.stdout)

    def close(self) -> None:
        self.bar.close()


def cmd_segment_region(args: argparse.Namespace) -> int:
    from ..core.region import segment_region

    params, vectorise = build(InferenceParams, args), build(VectoriseParams, args)
    bar = _Bar()
    try:
        result = segment_region(args.inputs, args.out, params, vectorise, scheduler=args.scheduler,
                                workers=args.workers, chunk=args.chunk, resume=args.resume, skip_bad=args.skip_bad,
                                on_progress=bar.progress, on_message=bar.message)
    except (KeyboardInterrupt, Cancelled):
        bar.close()
        print(f"error: cancelled; the finished parts stay in {args.out}: run the same command with --resume "
              "to finish", file=sys.stderr)
        return EXIT_CANCELLED
    finally:
        bar.close()
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    resumed = result.chunks - result.chunks_run
    print(f"segmented {result.chunks} chunk(s) of {len(result.rasters)} input(s) on {result.workers} worker(s)"
          + (f", {resumed} finished before" if resumed else "") + f": {result.pixels_run / 1e6:.1f} Mpx at "
          f"{result.mpx_s:.2f} Mpx/s ({result.segment_seconds:.1f} s; {result.seconds:.1f} s in all); "
          f"{result.reruns or 0} task(s) re-run after a lost worker or an error")
    print(f"wrote {result.n_lines} road lines ({result.length_km:.2f} km) to {result.lines_path}")
    print(f"road {'mask (0/1)' if params.binary else 'probability (0-255)'} in "
          + ", ".join(str(r) for r in result.rasters))
    return 0
