"""`python -m training train|evaluate|robustness|add-normalisation`: thin commands over `train_model`,
`evaluate_model`, `robustness.run_suite` and the radiometric statistics of a checkpoint.

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

from roadseg_plugin.cli import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_TERMINATED, Terminated
from roadseg_plugin.core.errors import RoadSegError


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a U-Net; writes best.pt, last.pt, plots and logs to --out")
    p.add_argument("--data", type=Path, help="folder with images/ and masks/ (or --source, or both)")
    p.add_argument("--source", dest="sources", action="append", default=[], type=_source, metavar="NAME=DIR[,...]",
                   help="a labelled set with its pixel size, held-out tiles and share of the crops (repeatable): "
                   "NAME=DIR[,gsd=METRES][,val=N][,weight=W][,labels=as-is|centreline][,nodata=white|black]"
                   "[,role=train|val]; role=val sets are validated, never trained on")
    p.add_argument("--p-nodata", type=float, help="share of crops given a synthetic no-data border or hole "
                   "(default: the recipe's, 0; robust 0.3)")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val", type=Path, help="separate validation folder")
    val.add_argument("--val-fraction", type=float, default=0.15, help="tiles held out for validation")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--patience", type=int, default=15)
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16,
                   help="crops per optimiser step over all processes: under torchrun --nproc-per-node N each "
                   "process trains on batch-size / N (a multiple of N), so runs with the same value compare")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--init", type=Path, help="fine-tune from this checkpoint")
    p.add_argument("--resume", action="store_true", help="continue from RUN/last.pt")
    p.add_argument("--seed", type=int, default=0, help="seed of weights init and crops")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train/validation tile split")
    p.add_argument("--max-minutes", type=float, help="stop before this wall-clock budget is spent")
    p.add_argument("--no-augment", dest="augment", action="store_false")
    p.add_argument("--scale-jitter", type=float, help="random zoom range, 0 disables (default: the recipe's, 0.25; "
                   "robust 1.0 = 0.5-2x)")
    p.add_argument("--samples-per-epoch", type=int, help="crops per epoch (default: train area / tile^2)")
    p.add_argument("--workers", type=int, default=1, help="DataLoader worker processes")
    p.add_argument("--base-channels", type=int, default=16)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--infer-tile", type=int, default=512, help="tile size stored for whole-tile prediction")
    p.add_argument("--overlap", type=int, default=32, help="tile overlap for whole-tile prediction")
    p.add_argument("--gsd", type=float, help="metres per pixel of the data (default: from the rasters, else 1.0)")
    p.add_argument("--skip-bad", action="store_true", help="warn about and skip unusable pairs")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (helps on CUDA)")
    p.add_argument("--recipe", default="default", choices=("default", "robust"),
                   help="robust: strong photometric augmentation + style transfer, scale jitter 0.5-2x, "
                   "BCE+Dice+clDice, radiometric normalisation auto (see the model card)")
    p.add_argument("--loss", choices=("bce_dice", "bce_cldice", "bce_lovasz"), help="default: the recipe's")
    p.add_argument("--normalisation", choices=("off", "auto", "always"),
                   help="radiometric normalisation stored in a new model (default: the recipe's, off / robust auto)")
    p.add_argument("--freeze-encoder", action="store_true", help="train only the decoder and head")


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


def _evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="metrics of a model on a folder of images/ and masks/")
    p.add_argument("--model", type=Path, help="checkpoint (default: the bundled model)")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--json", type=Path, help="write the figures to this JSON file")
    p.add_argument("--device", default="auto")
    p.add_argument("--threshold", type=float, help="decision threshold (default: the model's)")
    p.add_argument("--backend", default="auto", help="auto, torch, onnxruntime or onnxruntime-int8")
    p.add_argument("--skip-bad", action="store_true", help="warn about and skip unusable pairs")


def cmd_train(args: argparse.Namespace) -> int:
    from .distributed import is_main
    from .train import RUN_FILES, TrainConfig, train_model

    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k not in ("command", "func", "gsd")},
                      gsd_m=args.gsd)
    trainer = train_model(cfg)  # checks everything first; writes train.log itself
    if is_main():  # under torchrun: the one process that wrote the run folder
        written = [name for name in (*RUN_FILES, "train.log") if (args.out / name).exists()]
        print(f"done: {trainer.epoch} epoch(s); outputs in {args.out}/ ({', '.join(written)})")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from roadseg_plugin.core.outputs import check_outputs
    from roadseg_plugin.core.params import BUNDLED_MODEL, InferenceParams

    from .evaluate import evaluate_model, format_table

    InferenceParams(device=args.device, backend=args.backend, threshold=args.threshold)  # the plugin's checks
    if args.json:  # before the (long) evaluation: never replace an input, never fail at the end
        folders = [args.data / sub for sub in ("images", "masks") if (args.data / sub).is_dir()]
        data_files = [path for folder in folders for path in folder.iterdir()]
        check_outputs({"JSON figures": args.json}, [args.model or BUNDLED_MODEL, *data_files])
    result = evaluate_model(args.model, args.data, args.device, args.threshold, backend=args.backend,
                            skip_bad=args.skip_bad,
                            on_tile=lambda name, row: print(f"  {name}: iou={row['iou']:.4f}", file=sys.stderr))
    print(format_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
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
    from roadseg_plugin.core.params import BUNDLED_MODEL

    from .datasets import load_tiles, radiometry_stats

    source = args.model or BUNDLED_MODEL
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("rasterio").setLevel(logging.WARNING)  # GDAL's errors reach the user in our one line
    warnings.filterwarnings("ignore", message="skipping: ")  # --skip-bad: already logged, once
    for message in LIBRARY_NOISE:  # what libraries say that the user can do nothing about
        warnings.filterwarnings("ignore", message=message)
    previous = signal.signal(signal.SIGTERM, _terminate)  # SIGTERM unwinds like Ctrl-C: files are closed
    try:
        commands = {"train": cmd_train, "evaluate": cmd_evaluate, "robustness": cmd_robustness,
                    "add-normalisation": cmd_add_normalisation}
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
