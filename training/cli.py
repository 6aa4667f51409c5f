"""`python -m training train|evaluate|robustness|add-normalisation|finetune|adapt-bench|interpolate`:
thin commands over `train_model`, `evaluate_model`, `robustness.run_suite`, the radiometric
statistics of a checkpoint, fine-tuning from drawn lines and weight interpolation.

Bad options or data exit with status 2 and one line `error: <file or option>: <what is wrong>;
<what to do>`, before anything is written; Ctrl-C exits 130 and SIGTERM 143, saying what the
run folder keeps. The checks themselves live in `TrainConfig.validate` and the data readers.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import warnings
from pathlib import Path

from roadseg_plugin.cli.options import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_TERMINATED, Terminated
from roadseg_plugin.core.errors import RoadSegError
from roadseg_plugin.core.params import FINETUNE_MINUTES, ROAD_HALF_WIDTH_M, InferenceParams, model_file


def _train_parser(sub: argparse._SubParsersAction) -> None:
    """`train`'s options, generated from `TrainConfig`'s fields: their one default, help and choices."""
    from .config import cli_options

    p = sub.add_parser("train", help="train a U-Net; writes best.pt, last.pt, plots and logs to --out")
    for flag, f in cli_options():
        kind, meta = str(f.type), f.metadata
        plain = f.default is None or isinstance(f.default, bool) or f.default == "" or "list" in kind
        shown = "" if plain else f" (default {f.default})"
        kw: dict = {"dest": f.name, "help": meta["help"] + shown, "default": argparse.SUPPRESS}
        if kind == "bool":
            if f.default:  # on by default: the flag turns it off
                flag, kw["action"] = f"--no-{f.name.replace('_', '-')}", "store_false"
            else:
                kw["action"] = "store_true"
        elif "list" in kind:
            kw.update(action="append", type=_source, metavar="NAME=DIR[,...]")
        else:
            kw["type"] = Path if "Path" in kind else int if kind.startswith("int") else \
                float if kind.startswith("float") else str
            if meta["choices"]:
                kw["choices"] = meta["choices"]()
            if meta["required"]:
                kw["required"] = True
        p.add_argument(flag, **kw)


def _source(text: str) -> object:
    from .sources import parse_source

    try:
        return parse_source(text)
    except RoadSegError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _robustness_parser(sub: argparse._SubParsersAction) -> None:
    from .robustness import SHIFTS

    p = sub.add_parser("robustness", help="metrics of a model on held-out tiles under real-raster shifts, "
                       "through the engine, and on out-of-domain sets")
    p.add_argument("--data", type=Path, required=True, help="folder with images/ and masks/ at the model's GSD")
    p.add_argument("--model", type=Path, help="checkpoint or .onnx (default: the bundled model)")
    p.add_argument("--backend", default="auto", help="auto, torch, onnxruntime or onnxruntime-int8")
    p.add_argument("--json", type=Path, help="write the figures to this JSON file")
    p.add_argument("--only", help="comma-separated tile stems (default: the model's own validation tiles "
                   "when its metadata names them and --data holds them, else all)")
    p.add_argument("--tiles", type=int, help="at most this many tiles per set")
    p.add_argument("--shifts", help=f"comma-separated, default all: {', '.join(SHIFTS)}")
    p.add_argument("--ood", action="append", default=[], metavar="NAME=DIR:GSD",
                   help="an out-of-domain set and its true pixel size in metres (repeatable)")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown (for the model card)")


def _normalisation_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("add-normalisation", help="store a radiometric normalisation in a copy of a checkpoint")
    p.add_argument("--model", type=Path, help="checkpoint (default: the bundled model)")
    p.add_argument("--data", type=Path, required=True, help="the model's training dataset folder")
    p.add_argument("--exclude", help="comma-separated stems left out (e.g. the validation tiles)")
    p.add_argument("--mode", default="auto", choices=("off", "auto", "always"))
    p.add_argument("--out", type=Path, required=True, help="the checkpoint to write (never the input)")


def _interpolate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("interpolate", help="blend a start model and one trained from it: "
                       "alpha * tuned + (1 - alpha) * start (see training/interpolate.py)")
    p.add_argument("--start", type=Path, help="the start model (default: the bundled model)")
    p.add_argument("--tuned", type=Path, required=True, help="a model trained from the start model")
    p.add_argument("--alpha", type=float, required=True, help="share of the tuned model, 0..1")
    p.add_argument("--threshold", type=float, help="the blend's road threshold (default: the tuned model's)")
    p.add_argument("--out", type=Path, required=True, help="the checkpoint to write (never an input)")


def _evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="metrics of a model on a folder of images/ and masks/")
    p.add_argument("--model", type=Path, help="checkpoint (default: the bundled model)")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", type=Path, help="folder with images/ and masks/: every tile")
    data.add_argument("--source", dest="sources", action="append", type=_source, metavar="NAME=DIR[,...]",
                      help="a labelled set as `train --source` takes it (repeatable): its held-out tiles "
                      "(val=N, split as training splits them) or, for role=val, all its tiles")
    p.add_argument("--json", type=Path, help="write the figures to this JSON file")
    p.add_argument("--device", default="auto")
    p.add_argument("--threshold", type=float, help="decision threshold (default: the model's)")
    p.add_argument("--backend", default="auto", help="auto, torch, onnxruntime or onnxruntime-int8")
    p.add_argument("--skip-bad", action="store_true", help="warn about and skip unusable pairs")


def _finetune_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="teach a model your imagery from road lines drawn over it, within a "
                       "training time; keeps the start model when the result is not better (as the QGIS algorithm)")
    p.add_argument("--images", type=Path, nargs="+", required=True, help="the rasters the lines were drawn over")
    p.add_argument("--lines", type=Path, required=True, help="road centre lines (any OGR format, any CRS)")
    p.add_argument("--out", type=Path, required=True, help="run folder; receives finetuned.pt")
    p.add_argument("--model", type=Path, help="start model (default: the bundled one)")
    p.add_argument("--minutes", type=float, default=FINETUNE_MINUTES,
                   help=f"training time in minutes (default {FINETUNE_MINUTES:g})")
    p.add_argument("--half-width", type=float, default=ROAD_HALF_WIDTH_M,
                   help=f"road half-width in metres the lines are buffered by (default {ROAD_HALF_WIDTH_M:g})")
    p.add_argument("--aoi", type=Path, help="polygons where every road was drawn (default: the images' extent)")
    p.add_argument("--replay", type=Path, help="the start model's training data (images/ + masks/), mixed in")
    p.add_argument("--keep-worse", action="store_true", help="keep the fine-tuned model even when it is worse")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)


def _adapt_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("adapt-bench", help="fine-tune on a few digitised tiles of each out-of-domain set and "
                       "score the rest through the engine, before and after")
    p.add_argument("--data", type=Path, default=Path("../shared/data"), help="the shared data folder")
    p.add_argument("--model", type=Path, help="start model (default: the bundled one)")
    p.add_argument("--minutes", type=float, default=FINETUNE_MINUTES)
    p.add_argument("--labelled", type=int, default=8, help="tiles digitised per set")
    p.add_argument("--sets", help="comma-separated names (default all: web-basemap-us, shanghai, japan, mass-extra)")
    p.add_argument("--json", type=Path, help="write the rows to this JSON file")


def cmd_finetune(args: argparse.Namespace) -> int:
    import geopandas as gpd

    from .finetune import FinetuneConfig, finetune_from_lines

    for path in (*args.images, args.lines, *([args.aoi] if args.aoi else [])):
        if not path.exists():
            raise RoadSegError(path, "not found", "check the path")
    result = finetune_from_lines(FinetuneConfig(
        rasters=list(args.images), lines=gpd.read_file(args.lines), out=args.out, init=args.model,
        aoi=gpd.read_file(args.aoi) if args.aoi else None, buffer_m=args.half_width, minutes=args.minutes,
        replay=args.replay, keep_worse=args.keep_worse, device=args.device, seed=args.seed))
    print(f"done: kept the {result.kept} model in {result.model}")
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    from .adapt import default_sets, format_rows, run_bench

    sets = default_sets(args.data)
    if args.sets:
        wanted = args.sets.split(",")
        unknown = sorted(set(wanted) - {s.name for s in sets})
        if unknown:
            raise RoadSegError("--sets", f"unknown set(s) {', '.join(unknown)}",
                               f"choose from {', '.join(s.name for s in sets)}")
        sets = [s for s in sets if s.name in wanted]
    rows = run_bench(sets, args.model, args.minutes, args.labelled,
                     on_row=lambda r: print(format_rows([r]).splitlines()[-1], flush=True))
    print(format_rows(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .distributed import is_main
    from .train import RUN_FILES, TrainConfig, train_model

    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k not in ("command", "func")})
    trainer = train_model(cfg)  # checks everything first; writes train.log itself
    if is_main():  # under torchrun: the one process that wrote the run folder
        written = [name for name in (*RUN_FILES, "train.log") if (args.out / name).exists()]
        print(f"done: {trainer.epoch} epoch(s); outputs in {args.out}/ ({', '.join(written)})")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from roadseg_plugin.core.outputs import check_outputs

    from .evaluate import evaluate_model, format_table

    # the plugin's options, with its checks: a bad device, backend or threshold is refused before any work
    params = InferenceParams(model=args.model, device=args.device, backend=args.backend, threshold=args.threshold)
    if args.sources:
        return _evaluate_sources(args, params)
    if args.json:  # before the (long) evaluation: never replace an input, never fail at the end
        folders = [args.data / sub for sub in ("images", "masks") if (args.data / sub).is_dir()]
        data_files = [path for folder in folders for path in folder.iterdir()]
        check_outputs({"JSON figures": args.json}, [params.model_path, *data_files])
    result = evaluate_model(params, args.data, skip_bad=args.skip_bad,
                            on_tile=lambda name, row: print(f"  {name}: iou={row['iou']:.4f}", file=sys.stderr))
    print(format_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


def _evaluate_sources(args: argparse.Namespace, params: InferenceParams) -> int:
    from roadseg_plugin.core.pipeline import check_outputs

    from .evaluate import evaluate_sources

    if args.json:
        check_outputs({"JSON figures": args.json}, [params.model_path, *(s.path for s in args.sources)])
    results = evaluate_sources(params, args.sources)
    print(f"{'set':<16}{'tiles':>6}{'iou':>8}{'f1':>8}{'rel_f1':>8}{'apls':>8}")
    for name, r in results.items():
        print(f"{name:<16}{r['tiles']:>6}{r['iou']:>8.4f}{r['f1']:>8.4f}{r['relaxed_f1']:>8.4f}{r['apls']:>8.4f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def cmd_robustness(args: argparse.Namespace) -> int:
    from roadseg_plugin.core.errors import ParamError

    from .robustness import SHIFTS, format_table, parse_ood, run_suite

    shifts = args.shifts.split(",") if args.shifts else None
    unknown = [s for s in shifts or [] if s not in SHIFTS]
    if unknown:
        raise ParamError("shifts", ",".join(unknown), "unknown shift", f"choose from {', '.join(SHIFTS)}")
    try:
        ood = parse_ood(args.ood)
    except ValueError as exc:
        raise ParamError("ood", args.ood, str(exc)) from None

    def show(row: dict) -> None:
        print(f"  {row['set']} {row['shift']}: iou={row['iou']:.3f} relaxed_f1={row['relaxed_f1']:.3f} "
              f"apls={row['apls']:.3f} ({row['seconds']:.0f}s)", file=sys.stderr)

    result = run_suite(args.data, args.model, args.backend, shifts, args.only.split(",") if args.only else None,
                       args.tiles, ood, on_row=show)
    print(format_table(result, markdown=args.markdown))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


def cmd_add_normalisation(args: argparse.Namespace) -> int:
    from roadseg_plugin.core.atomic import same_file
    from roadseg_plugin.core.checkpoint import load_model, save_checkpoint
    from roadseg_plugin.core.errors import OutputError
    from roadseg_plugin.core.normalise import NORMALISATION_KEY

    from .datasets import load_tiles, radiometry_stats

    source = model_file(args.model)
    if args.out.exists() and same_file(args.out, source):
        raise OutputError(args.out, "is the input model", "write the copy elsewhere")
    model, meta = load_model(source)
    excluded = set(args.exclude.split(",")) if args.exclude else set()
    tiles = [t for t in load_tiles(args.data, bands=meta.in_channels) if t.name not in excluded]
    stats = radiometry_stats(tiles, args.mode, f"{len(tiles)} training tiles of {args.data.name} (median 2-98 % range)")
    meta.extra = {**meta.extra, NORMALISATION_KEY: stats}
    save_checkpoint(args.out, model, meta)
    print(f"wrote {args.out}: normalisation {args.mode}, training range "
          + ", ".join(f"{lo:g}-{hi:g}" for lo, hi in stats["target"]) + f", tolerance {stats['tolerance']} "
          f"({len(tiles)} tiles)")
    return 0


def cmd_interpolate(args: argparse.Namespace) -> int:
    from roadseg_plugin.core.params import BUNDLED_MODEL

    from .interpolate import write_interpolated

    meta = write_interpolated(args.start or BUNDLED_MODEL, args.tuned, args.alpha, args.out, args.threshold)
    print(f"wrote {args.out}: {meta.extra['blend']}, threshold {meta.threshold:g}")
    return 0


def _interrupted(args: argparse.Namespace, how: str) -> str:
    if args.command != "train":
        return f"{how}; nothing was written"
    if (args.out / "last.pt").is_file():
        return f"{how}; best.pt and last.pt so far are kept in {args.out}; --resume continues"
    return f"{how} before the first epoch ended; no model was written"


# Plain PNG tiles have no georeferencing (RoadSeg reads them as pixels and says so once);
# matplotlib warns when Debian's and pip's copies are both installed (no 3-D plots are made);
# pyogrio notes a missing CRS RoadSeg already reports.
LIBRARY_NOISE = ("Dataset has no geotransform", "Unable to import Axes3D", "'crs' was not provided")


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    _evaluate_parser(sub)
    _robustness_parser(sub)
    _normalisation_parser(sub)
    _finetune_parser(sub)
    _adapt_parser(sub)
    _interpolate_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("rasterio").setLevel(logging.WARNING)  # GDAL's errors reach the user in our one line
    warnings.filterwarnings("ignore", message="skipping: ")  # --skip-bad: already logged, once
    for message in LIBRARY_NOISE:  # what libraries say that the user can do nothing about
        warnings.filterwarnings("ignore", message=message)
    previous = signal.signal(signal.SIGTERM, _terminate)  # SIGTERM unwinds like Ctrl-C: files are closed
    try:
        commands = {"train": cmd_train, "evaluate": cmd_evaluate, "robustness": cmd_robustness,
                    "add-normalisation": cmd_add_normalisation, "finetune": cmd_finetune, "adapt-bench": cmd_adapt,
                    "interpolate": cmd_interpolate}
        return commands[args.command](args)
    except RoadSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(_interrupted(args, "interrupted"), file=sys.stderr)
        return EXIT_CANCELLED
    except Terminated:
        print(_interrupted(args, "terminated"), file=sys.stderr)
        return EXIT_TERMINATED
    finally:
        signal.signal(signal.SIGTERM, previous)
