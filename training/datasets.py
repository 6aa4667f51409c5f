"""Image/mask folders: pairing, loading with rasterio, no-data masks and random training crops.

A dataset folder holds `images/` and `masks/` paired by file stem. Samples are dicts with
`image` (float32, C x H x W, 0..1), `mask` (float32, H x W, 1 = road) and `valid`
(float32, H x W, 0 where the image is no-data: all-white pixels or the raster's own mask).

Reads are strict: a truncated or damaged file is an error naming it (or, with `skip_bad`, a
warning and the file is left out), never pixels made up by the decoder.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from torch.nn import functional as F  # noqa: N812 - PyTorch's own convention
from torch.utils.data import Dataset

from roadseg_plugin.core.errors import DatasetError
from roadseg_plugin.core.gsd import mean_gsd_m
from roadseg_plugin.core.model_meta import ModelMeta
from roadseg_plugin.core.normalise import Radiometry, fill_nodata, remap_image, training_radiometry
from roadseg_plugin.core.readers import STRICT_READ  # truncated PNGs raise instead of giving made-up rows

from .augment import augment

log = logging.getLogger(__name__)
MIN_VALID = 0.5  # crops with less valid area carry too little signal


@dataclass
class Tile:
    """One decoded image/mask pair held in memory."""

    name: str
    image: np.ndarray  # uint8 (C, H, W)
    mask: np.ndarray  # bool (H, W)
    valid: np.ndarray  # bool (H, W)
    gsd_m: float | None = None
    source: str = ""  # the set it came from (`sources.Source.name`), for per-set figures

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape


def find_pairs(root: str | Path, skip_bad: bool = False) -> list[tuple[str, Path, Path]]:
    """(stem, image path, mask path) for every pair under `root/images` and `root/masks`."""
    root = Path(root)
    img_dir, mask_dir = root / "images", root / "masks"
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            raise DatasetError(d, "folder not found",
                               "a dataset folder needs images/ and masks/ paired by file stem")
    images = {p.stem: p for p in sorted(img_dir.iterdir()) if p.is_file() and not p.name.startswith(".")}
    masks = {p.stem: p for p in sorted(mask_dir.iterdir()) if p.is_file() and not p.name.startswith(".")}
    pairs = []
    for stem in sorted(images.keys() | masks.keys()):
        if stem not in masks or stem not in images:
            lonely = images.get(stem) or masks.get(stem)
            other = "masks/" if stem not in masks else "images/"
            _bad(DatasetError(lonely, f"has no partner in {other}", f"add {other}{stem}.* or remove it"), skip_bad)
            continue
        pairs.append((stem, images[stem], masks[stem]))
    if not pairs:
        raise DatasetError(root, "no image/mask pairs found", "put images in images/ and masks in masks/")
    return pairs


def _bad(error: DatasetError, skip: bool) -> None:
    if not skip:
        raise error
    warnings.warn(f"skipping: {error}", stacklevel=3)
    log.warning("skipping: %s", error)


def _colour_bands(src: rasterio.DatasetReader, count: int) -> list[int]:
    bands = [i + 1 for i, ci in enumerate(src.colorinterp) if ci != ColorInterp.alpha]
    if len(bands) < count:
        raise DatasetError(src.name, f"has {len(bands)} image band(s), the model needs {count}",
                           "use images with the model's bands")
    return bands[:count]


@contextmanager
def _open_strict(path: Path) -> Iterator[rasterio.DatasetReader]:
    with warnings.catch_warnings(), rasterio.Env(**STRICT_READ):
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            yield src


def read_image(path: Path, bands: int = 3) -> tuple[np.ndarray, np.ndarray, float | None]:
    """uint8 (C, H, W) image, its valid mask and its ground sampling distance in metres (None without a CRS).

    Raises:
        RasterioIOError: the file cannot be opened or decoded (truncated, damaged).
    """
    with _open_strict(path) as src:
        idx = _colour_bands(src, bands)
        image = src.read(idx)
        valid = src.dataset_mask() > 0
        gsd = mean_gsd_m(src.crs, src.transform, src.width, src.height)  # CRS units -> metres (feet, degrees)
    if image.dtype != np.uint8:
        raise DatasetError(path, f"is {image.dtype}, training reads 8-bit images", "convert it to 8-bit")
    valid &= ~np.all(image == 255, axis=0)  # white no-data areas (see the data README)
    return image, valid, gsd


def read_mask(path: Path) -> np.ndarray:
    """Road (True) / not road of band 1: value 1 in a mask of only 0s and 1s, else value > 127.

    0/1 masks (label tools, numpy exports) would be all background under the 0/255 rule.
    """
    with _open_strict(path) as src:
        values = src.read(1)
    return values == 1 if values.max(initial=0) <= 1 else values > 127


def _unreadable(path: Path, exc: RasterioIOError) -> DatasetError:
    reason = exc.__cause__ or exc  # GDAL's own words ("Error while reading row 37 ...")
    return DatasetError(path, f"cannot be read ({reason})",
                        "replace or remove the file, or pass --skip-bad to leave it out")


def load_tiles(root: str | Path, bands: int = 3, skip_bad: bool = False) -> list[Tile]:
    """Decode every pair of a dataset folder once; errors name the offending file."""
    tiles = []
    for stem, img_path, mask_path in find_pairs(root, skip_bad):
        try:
            image, valid, gsd = read_image(img_path, bands)
            try:
                mask = read_mask(mask_path)
            except RasterioIOError as exc:
                raise _unreadable(mask_path, exc) from None
        except RasterioIOError as exc:
            _bad(_unreadable(img_path, exc), skip_bad)
            continue
        except DatasetError as exc:
            _bad(exc, skip_bad)
            continue
        if mask.shape != valid.shape:
            _bad(DatasetError(mask_path, f"is {mask.shape[1]}x{mask.shape[0]} but its image is "
                              f"{valid.shape[1]}x{valid.shape[0]}", "masks must match their image size"), skip_bad)
            continue
        tiles.append(Tile(stem, image, mask, valid, gsd))
    if not tiles:
        raise DatasetError(root, "no usable image/mask pairs", "fix the files named above")
    return tiles


def split_tiles(tiles: list[Tile], val_fraction: float, seed: int) -> tuple[list[Tile], list[Tile]]:
    """Split by whole tile (never by crop), reproducibly."""
    order = np.random.default_rng(seed).permutation(len(tiles))
    n_val = max(1, round(len(tiles) * val_fraction)) if len(tiles) > 1 else 0
    val = [tiles[i] for i in sorted(order[:n_val])]
    train = [tiles[i] for i in sorted(order[n_val:])]
    return train, val


def radiometry_stats(tiles: list[Tile], mode: str, source: str = "") -> dict:
    """`meta.extra["normalisation"]` for a model trained on `tiles`: the per-band median of their
    2-98 percentile ranges and how far the tiles themselves go (`normalise.training_radiometry`)."""
    return training_radiometry(((t.image, t.valid) for t in tiles), mode,
                               source=source or f"{len(tiles)} training tiles (median 2-98 % range)").to_dict()


def band_stats(tiles: list[Tile], scale: float = 1 / 255) -> tuple[list[float], list[float]]:
    """Per-band mean and std over valid pixels (sub-sampled), in model input units."""
    samples = [t.image[:, t.valid][:, ::97].astype(np.float64) * scale for t in tiles]
    pixels = np.concatenate(samples, axis=1)
    return pixels.mean(axis=1).tolist(), np.maximum(pixels.std(axis=1), 1e-3).tolist()


def normalised_tiles(tiles: list[Tile], meta: ModelMeta, announce: bool = True) -> list[Tile]:
    """`tiles` as the model's radiometric normalisation maps them, each tile from its own
    statistics, exactly as the engine maps a raster (`normalise.remap_image`); the same tiles
    when the model has none ("off", every older checkpoint). Training crops are cut from these,
    so training and inference agree; validation maps whole tiles itself (`normalise.normalise`)."""
    if Radiometry.from_meta(meta).mode == "off":
        return tiles
    mapped = []
    for t in tiles:
        image = remap_image(t.image, meta, t.valid)
        mapped.append(t if image is t.image else replace(t, image=image))
    changed = sum(m is not t for m, t in zip(mapped, tiles, strict=True))
    if announce:
        log.info("radiometric normalisation %r: %d of %d training tiles mapped onto the training range",
                 Radiometry.from_meta(meta).mode, changed, len(tiles))
    return mapped


class RandomCropDataset(Dataset):
    """`length` random crops per epoch, tiles chosen by `weights` (default: by valid area);
    deterministic per (seed, epoch, index).

    `augment` is True (the default augmentation), False, or a callable (sample, rng) -> sample.
    No-data reaches the model as the engine gives it: every invalid pixel of a crop takes the
    normalised values of the nearest valid one (`normalise.fill_nodata`), and a crop that runs past a
    small tile's edge is padded as the engine pads a raster (reflected) or as no-data. With
    `p_nodata`, a crop also gets a synthetic no-data border or hole (an orthophoto's collar),
    so roads beside no-data are learnt as roads.
    """

    def __init__(self, tiles: list[Tile], tile: int, length: int, mean: list[float], std: list[float],
                 augment: bool | Callable[[dict, np.random.Generator], dict] = True, scale_jitter: float = 0.0,
                 seed: int = 0, weights: np.ndarray | None = None, p_nodata: float = 0.0) -> None:
        self.tiles, self.tile, self.length = tiles, tile, length
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]
        self.augment, self.scale_jitter, self.seed, self.p_nodata = augment, scale_jitter, seed, p_nodata
        self.epoch = 0
        if weights is None:
            areas = np.array([t.valid.sum() for t in tiles], dtype=np.float64)
            weights = areas / areas.sum()
        self.weights = np.asarray(weights, dtype=np.float64)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def crop(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        size = self.tile
        if self.augment and self.scale_jitter > 0:
            size = int(round(self.tile * np.exp(rng.uniform(-1, 1) * np.log1p(self.scale_jitter))))
        for attempt in range(20):
            t = self.tiles[rng.choice(len(self.tiles), p=self.weights)]
            h, w = t.shape
            sh, sw = min(size, h), min(size, w)
            r, c = rng.integers(0, h - sh + 1), rng.integers(0, w - sw + 1)
            valid = t.valid[r:r + sh, c:c + sw]
            if valid.mean() >= MIN_VALID or attempt == 19:
                break
        image, mask, shown = t.image[:, r:r + sh, c:c + sw], t.mask[r:r + sh, c:c + sw], valid
        if (sh, sw) != (size, size):  # a tile smaller than the crop: padded where it ends
            image, mask, valid, shown = pad_crop(image, mask, valid, size, rng)
        sample = {
            "image": torch.from_numpy(image.astype(np.float32) / 255.0),
            "mask": torch.from_numpy(mask.astype(np.float32)),
            "valid": torch.from_numpy(valid.astype(np.float32)),
            "shown": torch.from_numpy(shown.astype(np.float32)),
        }
        return resize_sample(sample, self.tile) if size != self.tile else sample

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        sample = self.crop(rng)
        if self.augment:
            sample = self.augment(sample, rng) if callable(self.augment) else augment(sample, rng)
        shown = sample.pop("shown")
        if self.p_nodata and rng.random() < self.p_nodata:
            hole = torch.from_numpy(nodata_shape(self.tile, rng))
            sample["valid"], shown = sample["valid"] * hole, shown * hole
        image = (sample["image"] - self.mean) / self.std
        # no-data as the engine feeds it: filled from the nearest shown pixel
        sample["image"] = torch.from_numpy(fill_nodata(image.numpy().copy(), shown.numpy() > 0))
        return sample


def pad_crop(image: np.ndarray, mask: np.ndarray, valid: np.ndarray, size: int,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A crop of a tile smaller than `size` placed at a random offset in a `size` square: the
    rest reflected (as the engine pads a raster's edges) or no-data, and never trained on.
    Returns image, mask, valid (where the loss counts) and shown (where the image is kept)."""
    h, w = mask.shape
    top, left = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
    pad = ((top, size - h - top), (left, size - w - left))
    mode = "reflect" if rng.random() < 0.5 and min(h, w) > max(max(pad[0]), max(pad[1])) else "constant"
    image = np.pad(image, ((0, 0), *pad), mode=mode)
    mask = np.pad(mask, pad, mode=mode)
    shown = np.pad(valid, pad, mode=mode) if mode == "reflect" else np.pad(valid, pad)
    valid = np.pad(valid, pad)  # padding is never valid: its labels are made up
    return image, mask, valid, shown


def nodata_shape(size: int, rng: np.random.Generator) -> np.ndarray:
    """A (size, size) float32 mask, 0 on a random no-data border (a collar on one or two sides)
    or hole (a rectangle, maybe rotated by the dihedral augmentation already applied), else 1."""
    keep = np.ones((size, size), np.float32)
    if rng.random() < 0.6:
        for _ in range(int(rng.integers(1, 3))):
            width = int(rng.integers(8, size // 3))
            side = int(rng.integers(0, 4))
            if side == 0:
                keep[:width] = 0
            elif side == 1:
                keep[-width:] = 0
            elif side == 2:
                keep[:, :width] = 0
            else:
                keep[:, -width:] = 0
    else:
        hh, ww = (int(v) for v in rng.integers(size // 8, size // 2, 2))
        r, c = int(rng.integers(0, size - hh)), int(rng.integers(0, size - ww))
        keep[r:r + hh, c:c + ww] = 0
    return keep


def resize_sample(sample: dict[str, torch.Tensor], size: int) -> dict[str, torch.Tensor]:
    """Resize a crop to `size`: bilinear image; labels re-thresholded so they stay binary."""
    image = F.interpolate(sample["image"][None], size=(size, size), mode="bilinear", align_corners=False)[0]
    keys = [k for k in ("mask", "valid", "shown") if k in sample]
    labels = torch.stack([sample[k] for k in keys])[None]
    labels = F.interpolate(labels, size=(size, size), mode="bilinear", align_corners=False)[0]
    out = {"image": image, **{k: (labels[i] > (0.5 if k == "mask" else 0.99)).float() for i, k in enumerate(keys)}}
    return out
