"""Several labelled sets in one run: each at its true pixel size, brought to the model's, with
its own held-out tiles and its share of the crops.

A source is one dataset folder (`images/` + `masks/`, see `datasets`) with what the files do not
say: the pixel size, how many whole tiles it holds back for validation, its share of the
training crops, whether its labels are road surfaces or centre lines of another width (then
they are redrawn: skeleton buffered to the model's label width, so that every set means the same
road width at the model's resolution), and whether pure-black pixels are no-data (satellite
wedges). `--source` on the training CLI takes the same fields:

    NAME=DIR[,gsd=METRES][,val=N][,weight=W][,labels=as-is|centreline][,nodata=white|black][,role=train|val]

`role=val` sets are validated every epoch but never trained on (imagery whose licence forbids
training, such as the web-basemap tiles); they are left out of the figure that picks best.pt.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from skimage.morphology import skeletonize
from torch.nn import functional as F  # noqa: N812 - PyTorch's own convention

from roadseg_plugin.core.errors import ParamError
from roadseg_plugin.core.params import ROAD_HALF_WIDTH_M
from roadseg_plugin.core.readers import GSD_TOLERANCE

from .datasets import Tile, load_tiles, split_tiles

LABEL_STYLES = ("as-is", "centreline")
NODATA_STYLES = ("white", "black")
ROLES = ("train", "val")
# The road width every label means at the model's resolution: the drawn-lines labels' default
# half-width, which is also the width of the Massachusetts labels (their skeleton buffered by
# 3 px at 1 m keeps their pixel count, 0.999).
LABEL_HALF_WIDTH_M = ROAD_HALF_WIDTH_M


@dataclass(frozen=True)
class Source:
    """One labelled set: where, at what pixel size, how much held back, how much of the crops."""

    name: str
    path: Path
    gsd_m: float | None = None  # metres per pixel of the files; None: from the rasters (else the model's)
    val: int = 0  # whole tiles held back for validation (never trained on)
    weight: float = 1.0  # share of the training crops, relative to the other sources
    labels: str = "as-is"  # "centreline": redrawn as skeleton + LABEL_HALF_WIDTH_M
    nodata: str = "white"  # "black": pure-black pixels are no-data too
    role: str = "train"  # "val": validated, never trained on

    def check(self) -> None:
        """Refuse a bad field with its value and a fix (before anything is read)."""
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ParamError("source", self.name, "needs a name of letters, digits, - or _", "e.g. japan=DIR")
        if self.gsd_m is not None and not (math.isfinite(self.gsd_m) and 0.01 <= self.gsd_m <= 1000):
            raise ParamError(f"source {self.name} gsd", self.gsd_m, "must be a pixel size in metres, 0.01-1000",
                             "e.g. gsd=0.5")
        if not isinstance(self.val, int) or self.val < 0:
            raise ParamError(f"source {self.name} val", self.val, "must be a whole number of tiles, 0 or more")
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ParamError(f"source {self.name} weight", self.weight, "must be a number, 0 or more", "e.g. 1")
        for key, value, valid in (("labels", self.labels, LABEL_STYLES), ("nodata", self.nodata, NODATA_STYLES),
                                  ("role", self.role, ROLES)):
            if value not in valid:
                raise ParamError(f"source {self.name} {key}", value, f"is not one of {', '.join(valid)}")
        if self.role == "val" and self.val:
            raise ParamError(f"source {self.name} val", self.val, "is for training sets; a role=val set is "
                             "validated whole", "drop val=")


def parse_source(text: str) -> Source:
    """`NAME=DIR[,key=value...]` (see the module notes) -> Source; ParamError names a bad part."""
    name, sep, rest = text.partition("=")
    if not sep or not rest:
        raise ParamError("source", text, "must look like NAME=DIR[,gsd=G][,val=N][,weight=W]",
                         "e.g. japan=../data/gsi-japan-roads,gsd=0.2,val=8")
    path, *options = rest.split(",")
    fields: dict = {}
    for option in options:
        key, _, value = option.partition("=")
        try:
            if key == "gsd":
                fields["gsd_m"] = float(value)
            elif key == "val":
                fields["val"] = int(value)
            elif key == "weight":
                fields["weight"] = float(value)
            elif key in ("labels", "nodata", "role"):
                fields[key] = value
            else:
                raise ParamError("source", option, "is not one of gsd=, val=, weight=, labels=, nodata=, role=")
        except ValueError:
            raise ParamError(f"source {name} {key}", value, "is not a number") from None
    source = Source(name.strip(), Path(path), **fields)
    source.check()
    return source


def resample_tile(tile: Tile, factor: float) -> Tile:
    """`tile` on a grid `factor` times coarser (factor > 1) or finer: the image averaged
    (downsampling) or bilinear (upsampling) as the engine resamples a raster; a pixel is road
    where at least half of it was road, valid where all of it was."""
    h, w = tile.shape
    size = (max(1, round(h / factor)), max(1, round(w / factor)))
    image = torch.from_numpy(tile.image.astype(np.float32))[None]
    labels = torch.from_numpy(np.stack([tile.mask, tile.valid]).astype(np.float32))[None]
    if factor > 1:
        image = F.interpolate(image, size=size, mode="area")
        labels = F.interpolate(labels, size=size, mode="area")
    else:
        image = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        labels = F.interpolate(labels, size=size, mode="bilinear", align_corners=False)
    out = np.clip(np.rint(image[0].numpy()), 0, 255).astype(np.uint8)
    gsd = tile.gsd_m * factor if tile.gsd_m else None
    return replace(tile, image=out, mask=labels[0, 0].numpy() >= 0.5, valid=labels[0, 1].numpy() >= 0.999,
                   gsd_m=gsd)


def centreline_labels(mask: np.ndarray, gsd_m: float, half_width_m: float = LABEL_HALF_WIDTH_M) -> np.ndarray:
    """Road surfaces or lines of any width -> their skeleton buffered to `half_width_m`: the
    width every label means (pixel centres within half_width - half a pixel of the skeleton,
    which keeps the Massachusetts labels' pixel count at 1 m)."""
    if not mask.any():
        return mask.copy()
    skeleton = skeletonize(mask)
    return ndimage.distance_transform_edt(~skeleton) <= max(0.0, half_width_m / gsd_m - 0.5)


def prepare_tiles(tiles: list[Tile], source: Source, model_gsd_m: float, label_half_width_m: float) -> list[Tile]:
    """A source's tiles as training sees them: black no-data, the model's pixel size (when the
    files' differs by more than the engine's tolerance), labels in the common width."""
    out = []
    for t in tiles:
        t = replace(t, source=source.name, gsd_m=source.gsd_m or t.gsd_m or model_gsd_m)
        if source.nodata == "black":
            t = replace(t, valid=t.valid & ~np.all(t.image == 0, axis=0))
        factor = model_gsd_m / t.gsd_m
        if abs(1 / factor - 1) > GSD_TOLERANCE:
            t = resample_tile(t, factor)
        if source.labels == "centreline":
            t = replace(t, mask=centreline_labels(t.mask, t.gsd_m, label_half_width_m) & t.valid)
        out.append(t)
    return out


def load_sources(sources: list[Source], model_gsd_m: float, split_seed: int = 0, skip_bad: bool = False,
                 label_half_width_m: float = LABEL_HALF_WIDTH_M) -> tuple[list[Tile], list[Tile]]:
    """(train tiles, validation tiles) of every source, each tile tagged with its source name;
    the held-out tiles of a source are the same for the same `split_seed` (as `split_tiles`)."""
    train: list[Tile] = []
    val: list[Tile] = []
    for source in sources:
        tiles = load_tiles(source.path, skip_bad=skip_bad)
        if source.role == "val":
            part_train, part_val = [], tiles
        elif source.val:
            if source.val >= len(tiles):
                raise ParamError(f"source {source.name} val", source.val,
                                 f"must leave training tiles: the set has {len(tiles)}", f"e.g. val={len(tiles) // 4}")
            part_train, part_val = split_tiles(tiles, source.val / len(tiles), split_seed)
        else:
            part_train, part_val = tiles, []
        train += prepare_tiles(part_train, source, model_gsd_m, label_half_width_m)
        val += prepare_tiles(part_val, source, model_gsd_m, label_half_width_m)
    return train, val


def crop_weights(tiles: list[Tile], sources: list[Source]) -> np.ndarray:
    """Probability of drawing each tile: a source's `weight` shared among its tiles by valid area."""
    weight = {s.name: s.weight for s in sources}
    areas = np.array([t.valid.sum() for t in tiles], dtype=np.float64)
    out = np.zeros(len(tiles))
    for name in {t.source for t in tiles}:
        mine = np.array([t.source == name for t in tiles])
        if areas[mine].sum() > 0:
            out[mine] = weight.get(name, 1.0) * areas[mine] / areas[mine].sum()
    if out.sum() <= 0:
        raise ParamError("source weight", 0, "every training source has weight 0", "give one a weight above 0")
    return out / out.sum()
