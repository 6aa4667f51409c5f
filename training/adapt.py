"""How fast RoadSeg learns a new imagery: `python -m training adapt-bench` (`make adapt`).

For each labelled set unlike the model's training survey, a user "digitises" a few tiles: their
masks are traced into centre lines (`vectorise_mask`, as a person draws roads) over
georeferenced copies of the tiles at their true pixel size, and the road half-width the user
would give is measured from those masks. The model is fine-tuned on them with the code path
the QGIS algorithm runs (`finetune.finetune_from_lines`, a training time in minutes), and the
start and the kept model score the set's other tiles through the real engine
(`robustness.score_case`: the raster written as a GeoTIFF, segmented by `segment_raster` with
its resampling and normalisation, the label resampled onto the output grid).

Scored tiles are the base model's held-out tiles of the set when its metadata names some
(the labelled ones then come from the rest), else every tile not labelled.
"""
from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasterio.transform import from_origin
from skimage.morphology import skeletonize

from roadseg_plugin.core.metrics import PixelCounts
from roadseg_plugin.core.params import FINETUNE_MINUTES, ROAD_HALF_WIDTH_M, model_file, read_model_info

from .datasets import Tile, load_tiles
from .robustness import CRS, ORIGIN, Case, score_case, validation_stems, write_case

log = logging.getLogger(__name__)
KEYS = ("iou", "relaxed_f1", "apls")


@dataclass(frozen=True)
class AdaptSet:
    """A labelled set: folder (images/ + masks/), true pixel size, black no-data or not."""

    name: str
    folder: Path
    gsd_m: float
    black_nodata: bool = False


def default_sets(data: Path) -> list[AdaptSet]:
    """The shared out-of-domain sets, and Massachusetts `extra` as a same-survey control."""
    return [AdaptSet("web-basemap-us", data / "web-basemap-us", 0.45),
            AdaptSet("shanghai", data / "spacenet3-shanghai", 0.76, black_nodata=True),
            AdaptSet("japan", data / "gsi-japan-roads", 0.2),
            AdaptSet("mass-extra", data / "massachusetts-roads" / "extra", 1.0)]


def road_half_width_m(tiles: list[Tile], gsd_m: float) -> float:
    """The half-width a user would give for these roads: labelled area / centre-line length / 2,
    to 0.5 m (surfaces of 10 m -> 5.0; Massachusetts' 7 px lines at 1 m -> 3.5)."""
    area = sum(int((t.mask & t.valid).sum()) for t in tiles)
    length = sum(int(skeletonize(t.mask & t.valid).sum()) for t in tiles)
    if not length:
        return ROAD_HALF_WIDTH_M
    # skeleton pixels undercount a diagonal road's length by up to sqrt(2): 1.1 on average
    return max(0.5, round(area / (length * 1.1) * gsd_m / 2 * 2) / 2)


def pick(tiles: list[Tile], held: list[str], labelled: int, seed: int) -> tuple[list[Tile], list[Tile]]:
    """(labelled, scored): scored are the held-out tiles when there are some, else the rest (also
    when every tile is held out: a set the model was only validated on, never trained on)."""
    scored = [t for t in tiles if t.name in set(held)]
    if len(scored) == len(tiles):
        scored = []
    pool = [t for t in tiles if t not in scored and (t.mask & t.valid).any()]
    n = min(labelled, len(pool) if scored else len(pool) // 2)
    order = np.random.default_rng(seed).permutation(len(pool))
    chosen = [pool[i] for i in sorted(order[:n])]
    return chosen, scored or [t for t in tiles if t not in chosen]


def _drawn_lines(tiles: list[Tile], gsd_m: float, folder: Path) -> tuple[list[Path], object]:
    """GeoTIFF copies of `tiles` side by side and their masks traced into lines, as drawn."""
    import geopandas as gpd
    import pandas as pd

    from roadseg_plugin.core.vectorise import vectorise_mask

    rasters, frames, x = [], [], ORIGIN[0]
    for t in tiles:
        path = write_case(folder / f"{t.name}.tif", Case(t.image, gsd_m, t.valid), (x, ORIGIN[1]))
        transform = from_origin(x, ORIGIN[1], gsd_m, gsd_m)
        frames.append(vectorise_mask(t.mask & t.valid, transform, CRS, min_length=3 * gsd_m))
        rasters.append(path)
        x += t.shape[1] * gsd_m + 100
    return rasters, gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=CRS)


def score_tiles(tiles: list[Tile], gsd_m: float, model: Path, work: Path) -> dict[str, float]:
    """Pooled IoU / relaxed F1 and mean APLS of `model` over `tiles` through the engine."""
    threshold = read_model_info(model).threshold
    total, rows = PixelCounts(), []
    for t in tiles:
        counts, row, _ = score_case(t, Case(t.image, gsd_m, t.valid), gsd_m, work, model, "auto", threshold)
        total = total + counts
        rows.append(row)
    return {**total.metrics(), "apls": float(np.mean([r["apls"] for r in rows])) if rows else 0.0}


def adapt_set(adapt: AdaptSet, model: Path, minutes: float, labelled: int = 8, seed: int = 0,
              work: Path | None = None) -> dict:
    """Fine-tune on `labelled` tiles of one set and score the others, before and after."""
    from .finetune import FinetuneConfig, finetune_from_lines

    tiles = load_tiles(adapt.folder)
    if adapt.black_nodata:
        for t in tiles:
            t.valid &= ~np.all(t.image == 0, axis=0)
    chosen, scored = pick(tiles, validation_stems(read_model_info(model)), labelled, seed)
    half = road_half_width_m(chosen, adapt.gsd_m)
    with tempfile.TemporaryDirectory(prefix=f"roadseg_adapt_{adapt.name}_", dir=work) as tmp:
        folder = Path(tmp)
        rasters, lines = _drawn_lines(chosen, adapt.gsd_m, folder)
        t0 = time.monotonic()
        result = finetune_from_lines(FinetuneConfig(rasters=rasters, lines=lines, out=folder / "run", init=model,
                                                    buffer_m=half, minutes=minutes, seed=seed))
        seconds = time.monotonic() - t0
        start = score_tiles(scored, adapt.gsd_m, model, folder)
        tuned = score_tiles(scored, adapt.gsd_m, result.model, folder)
    log.info("%s: %s", adapt.name, result.summary())
    return {"set": adapt.name, "labelled": len(chosen), "lines": len(lines), "half_width_m": half,
            "scored": len(scored), "minutes": round(seconds / 60, 1), "kept": result.kept,
            "rounds": result.rounds, "steps": result.steps, "start": start, "tuned": tuned,
            "val_start": result.start, "val_tuned": result.tuned}


def run_bench(sets: list[AdaptSet], model: Path | None = None, minutes: float = FINETUNE_MINUTES, labelled: int = 8,
              seed: int = 0, on_row: Callable[[dict], None] | None = None) -> list[dict]:
    rows = []
    for adapt in sets:
        rows.append(adapt_set(adapt, model_file(model), minutes, labelled, seed))
        if on_row:
            on_row(rows[-1])
    return rows


def format_rows(rows: list[dict]) -> str:
    """The Markdown table the model card carries."""
    head = ("set | tiles labelled (lines, half-width) | tiles scored | minutes | start IoU / rel. F1 / APLS | "
            "tuned IoU / rel. F1 / APLS | kept")
    lines = [f"| {head} |", "|" + " --- |" * 7]
    for r in rows:
        s, t = (" / ".join(f"{r[k][m]:.3f}" for m in KEYS) for k in ("start", "tuned"))
        lines.append(f"| {r['set']} | {r['labelled']} ({r['lines']} lines, {r['half_width_m']:g} m) | {r['scored']} "
                     f"| {r['minutes']:g} | {s} | {t} | {r['kept']} |")
    return "\n".join(lines)
