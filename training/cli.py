"""`python -m training train|evaluate`: thin commands over `train_model` and `evaluate_model`.

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
    p.add_argument("--data", type=Path, required=True, help="folder with images/ and masks/")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val", type=Path, help="separate validation folder")
    val.add_argument("--val-fraction", type=float, default=0.15, help="tiles held out for validation")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--patience", type=int, default=15)
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--init", type=Path, help="fine-tune from this checkpoint")
    p.add_argument("--resume", action="store_true", help="continue from RUN/last.pt")
    p.add_argument("--seed", type=int, default=0, help="seed of weights init and crops")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train/validation tile split")
    p.add_argument("--max-minutes", type=float, help="stop before this wall-clock budget is spent")
    p.add_argument("--no-augment", dest="augment", action="store_false")
    p.add_argument("--scale-jitter", type=float, default=0.25, help="random zoom range, 0 disables")
    p.add_argument("--samples-per-epoch", type=int, help="crops per epoch (default: train area / tile^2)")
    p.add_argument("--workers", type=int, default=1, help="DataLoader worker processes")
    p.add_argument("--base-channels", type=int, default=16)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--infer-tile", type=int, default=512, help="tile size stored for whole-tile prediction")
    p.add_argument("--overlap", type=int, default=32, help="tile overlap for whole-tile prediction")
    p.add_argument("--gsd", type=float, help="metres per pixel of the data (default: from the rasters, else 1.0)")
    p.add_argument("--skip-bad", action="store_true", help="warn about and skip unusable pairs")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (helps on CUDA)")


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
    from .train import RUN_FILES, TrainConfig, train_model

    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k not in ("command", "func", "gsd")},
                      gsd_m=args.gsd)
    trainer = train_model(cfg)  # checks everything first; writes train.log itself
    written = [name for name in (*RUN_FILES, "train.log") if (args.out / name).exists()]
    print(f"done: {trainer.epoch} epoch(s); outputs in {args.out}/ ({', '.join(written)})")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from roadseg_plugin.core.params import BUNDLED_MODEL, InferenceParams
    from roadseg_plugin.core.pipeline import check_outputs

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


def _interrupted(args: argparse.Namespace, how: str) -> str:
    if args.command != "train":
        return f"{how}; nothing was written"
    if (args.out / "last.pt").is_file():
        return f"{how}; best.pt and last.pt so far are kept in {args.out}; --resume continues"
    return f"{how} before the first epoch ended; no model was written"


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    _evaluate_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("rasterio").setLevel(logging.WARNING)  # GDAL's errors reach the user in our one line
    warnings.filterwarnings("ignore", message="skipping: ")  # --skip-bad: already logged, once
    previous = signal.signal(signal.SIGTERM, _terminate)  # SIGTERM unwinds like Ctrl-C: files are closed
    try:
        return {"train": cmd_train, "evaluate": cmd_evaluate}[args.command](args)
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
