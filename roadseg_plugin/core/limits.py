"""Upper bounds on every size a user or a model file sets, from the memory each needs.

A tile, a batch, a model's width and depth, a vectoriser block, a raster's dimensions: each is
turned into the memory it needs and refused, before any work, when that is over the budget:
half of this machine's physical memory (the rest is the system's, QGIS's and the page cache's).
`ROADSEG_MEMORY_MB` sets another budget. The refusal is one line naming the value, the memory
it needs, the limit and the largest value that fits:
`tile 32768: needs about 137.4 GB of memory (a batch of 2 tiles), over the 11.7 GB limit
(half of this machine's 23.4 GB); at most 3008 here, e.g. 512`.

The overlap of neighbouring tiles is bounded by the tile, not by memory (`check_overlap`); it is
here so that every size has its bound in one module.

The per-pixel figures are measured on the bundled model (CPU, batch 1-2, 512-1024 px tiles):
ONNX Runtime fp32 peaks at 27 bytes per pixel per base channel, torch at 36, int8 at 16;
training (forward, backward, batch norm) at about 4x inference.
This module imports nothing heavy: the dialog and Processing use it while QGIS starts.
"""
from __future__ import annotations

import math
import os

from .errors import ParamError, RasterError

BUDGET_SHARE = 0.5
INFER_BYTES = 40  # per pixel of a tile and per base channel, inference (any backend)
TRAIN_BYTES = 160  # the same for a training crop (forward and backward)
MODEL_OVERHEAD = 600 << 20  # interpreter, libraries, engine buffers: what a run needs besides tiles
BLOCK_INDEX_BYTES = 64  # per 256 x 256 block of a GeoTIFF: its index written and read again, data and mask
BLOCK_PX = 256 * 256
SKELETON_SHARE = 0.05  # at most this share of a band's pixels are road centre line (dense city: 2-3 %)
SKELETON_BYTES = 120  # per centre-line pixel held by the vectoriser (vertices, samples, graph)
MASK_BYTES = 24  # per pixel of a vectoriser block with its halo (mask, labels, skeleton, widths)


def physical_memory() -> int:
    """Bytes of RAM on this machine (8 GiB when it cannot be told)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):  # Windows
        try:
            import psutil

            return int(psutil.virtual_memory().total)
        except ImportError:
            return 8 << 30


def memory_budget() -> int:
    """Bytes a run may plan to use: `ROADSEG_MEMORY_MB`, else half the physical memory."""
    text = os.environ.get("ROADSEG_MEMORY_MB", "").strip()
    if text:
        try:
            return max(1, int(float(text))) << 20
        except ValueError:
            pass
    return int(physical_memory() * BUDGET_SHARE)


def gigabytes(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def _limit_text() -> str:
    if os.environ.get("ROADSEG_MEMORY_MB", "").strip():
        return f"the {gigabytes(memory_budget())} limit (ROADSEG_MEMORY_MB)"
    return f"the {gigabytes(memory_budget())} limit (half of this machine's {gigabytes(physical_memory())})"


def refuse_over_budget(name: str, value: object, need: float, what: str, fix: str) -> None:
    """ParamError when `need` bytes exceed the budget: `name value: needs about X (what), over ...`."""
    if need > memory_budget():
        raise ParamError(name, value, f"needs about {gigabytes(need)} of memory ({what}), over {_limit_text()}", fix)


def unet_parameters(in_channels: int, base: int, depth: int) -> int:
    """Weights of `unet.UNet` (3x3 convolutions; batch norm and the head are negligible)."""
    widths = [base * 2**i for i in range(depth + 1)]
    count = 9 * (in_channels * widths[0] + widths[0] ** 2)
    for i in range(depth):
        count += 9 * (widths[i] * widths[i + 1] + widths[i + 1] ** 2)  # encoder stage
        count += 9 * ((widths[i + 1] + widths[i]) * widths[i] + widths[i] ** 2)  # decoder block
    return count


def check_model_size(in_channels: int, base: int, depth: int, training: bool = False) -> None:
    """Refuse a U-Net whose weights (with gradients and Adam's moments when training) do not fit."""
    per_weight = 16 if training else 4
    need = unet_parameters(in_channels, base, depth) * per_weight
    refuse_over_budget("base_channels", base, need, f"the weights of a depth-{depth} U-Net",
                       "e.g. 16 (the bundled model's)")
    if depth > 12:  # 2**depth-pixel tiles at the least, whatever the width
        raise ParamError("depth", depth, "must be at most 12 (tiles of 4096 px at the least)", "e.g. 4")


def largest_tile(batch: int, base: int, multiple: int, per_px: int = INFER_BYTES) -> int:
    """The largest tile (a multiple of `multiple`) whose batch fits the budget."""
    room = max(memory_budget() - MODEL_OVERHEAD, 0) / max(batch * base * per_px, 1)
    return max(multiple, int(math.sqrt(room)) // multiple * multiple)


def check_tile(tile: int, batch: int, base: int, multiple: int, name: str = "tile", training: bool = False,
               example: int = 512) -> None:
    """Refuse a tile size whose batch of activations does not fit the budget."""
    per_px = TRAIN_BYTES if training else INFER_BYTES
    need = MODEL_OVERHEAD + batch * base * per_px * float(tile) ** 2
    what = f"a batch of {batch} tile{'s' if batch > 1 else ''} of {tile} px"
    refuse_over_budget(name, tile, need, what,
                       f"at most {largest_tile(batch, base, multiple, per_px)} here, e.g. {example}")


def check_overlap(overlap: int, tile: int, tile_name: str = "tile") -> None:
    """The one rule of overlap against tile size (options, model files, the tile grid, training):
    neighbouring tiles share under half a tile, so a tile's two blend ramps never meet.

    Raises:
        ParamError: naming the overlap and the tile it is measured against.
    """
    if overlap < 0:
        raise ParamError("overlap", overlap, "must not be negative", f"e.g. {tile // 16}")
    if not overlap < tile // 2:
        raise ParamError("overlap", overlap, f"must be less than half the {tile_name} ({tile})", f"e.g. {tile // 16}")


def check_batch(batch: int, tile: int, base: int, name: str = "batch_size", training: bool = False) -> None:
    """Refuse a batch size whose activations do not fit the budget."""
    per_px = TRAIN_BYTES if training else INFER_BYTES
    per_tile = base * per_px * float(tile) ** 2
    need = MODEL_OVERHEAD + batch * per_tile
    most = max(1, int((memory_budget() - MODEL_OVERHEAD) // max(per_tile, 1)))
    refuse_over_budget(name, batch, need, f"{batch} tiles of {tile} px at once", f"at most {most} here")


def raster_bytes(width: int, height: int) -> float:
    """Memory a run needs for a grid of this size besides its tiles: the probability GeoTIFF's
    block index (written, then read by the vectoriser)."""
    return MODEL_OVERHEAD + math.ceil(width / 256) * math.ceil(height / 256) * BLOCK_INDEX_BYTES


def check_raster_size(name: object, width: int, height: int, how: str = "") -> None:
    """Refuse a grid (as the model sees it: cropped, resampled) too large for this machine.

    Raises:
        RasterError: naming the size, what it needs and the limit.
    """
    need = raster_bytes(width, height)
    if width >= 2**31 or height >= 2**31 or need > memory_budget():
        raise RasterError(name, f"{how}{width} x {height} px needs about {gigabytes(need)} of memory (the "
                          f"probability raster's block index), over {_limit_text()}",
                          "process part of it (--extent), split it into tiles (segment-region), or check --gsd")


def vectorise_bytes(width: int, height: int, block: int, halo: int, context_rows: int) -> float:
    """Memory of the vectoriser on a raster of this size: a block with its halo, and the centre
    lines of the band of rows it cleans at a time (`road_stream`)."""
    band_rows = min(block + 2 * context_rows, height)
    return MODEL_OVERHEAD + MASK_BYTES * (block + 2 * halo) ** 2 + SKELETON_SHARE * SKELETON_BYTES * band_rows * width


def check_vectorise(width: int, height: int, block: int, halo: int, context_rows: int, context_from: str,
                    value: object) -> None:
    """Refuse vectoriser settings whose memory on a raster of this size does not fit.

    `context_from`, `value`: the option that sets the band's context rows (gap or spur length).
    """
    need = vectorise_bytes(width, height, block, halo, context_rows)
    if need <= memory_budget():
        return
    if MASK_BYTES * (block + 2 * halo) ** 2 > memory_budget() / 2:
        name, value, fix = ("block_size", block, "e.g. 1024") if block >= halo else ("halo", halo, "e.g. 64")
    else:
        name, fix = context_from, "a smaller value, or vectorise a part of the raster"
    refuse_over_budget(name, value, need, f"vectorising {width} px wide rows with {context_rows} rows of context",
                       fix)
