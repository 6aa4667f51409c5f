"""Augmentations on sample dicts (dict -> dict). Geometry moves image and labels together;
photometric jitter touches the image only. Tuned wide because the shipped model meets
other sensors, seasons and compressions than the Massachusetts training tiles.

`augment` is the default policy. `RobustAugment` is the robust recipe's (`--recipe robust`):
the same geometry, then a random subset of the shifts a real raster brings, in random order:
per-channel gain (colour cast), gamma, hue rotation, saturation, contrast, haze, blur, sensor
noise, JPEG compression, and histogram matching onto another training tile (style transfer).
Images are float (C, H, W) in 0..1 and stay in 0..1; every random choice comes from the numpy
generator passed in, so a seed gives the same result.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile
from torch.nn import functional as F  # noqa: N812 - PyTorch's own convention

from roadseg_plugin.core.dihedral import dihedral as dihedral_array

GREY = torch.tensor([0.299, 0.587, 0.114])
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_RGB = torch.linalg.inv(_YIQ)
QUANTILES = np.linspace(0, 100, 21)  # histogram matching: 5 % steps


def dihedral(sample: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """One of the 8 flips/rotations (k in 0..7), applied to every array in the sample
    (the same transform as test-time augmentation, `roadseg_plugin.core.dihedral`)."""
    return {key: dihedral_array(x, k) for key, x in sample.items()}


def colour_jitter(image: torch.Tensor, rng: np.random.Generator, strength: float = 0.3) -> torch.Tensor:
    """Brightness, contrast, saturation and gamma jitter on a (C, H, W) image in 0..1."""
    brightness = 1 + rng.uniform(-strength, strength)
    contrast = 1 + rng.uniform(-strength, strength)
    saturation = 1 + rng.uniform(-strength, strength)
    gamma = float(np.exp(rng.uniform(-strength, strength)))
    image = image * brightness
    mean = image.mean()
    image = (image - mean) * contrast + mean
    if image.shape[0] == 3:
        grey = (image * GREY[:, None, None]).sum(0, keepdim=True)
        image = (image - grey) * saturation + grey
    return image.clamp(0, 1) ** gamma


def augment(sample: dict[str, torch.Tensor], rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Random dihedral transform, colour jitter and, sometimes, sensor noise."""
    sample = dihedral(sample, int(rng.integers(0, 8)))
    image = colour_jitter(sample["image"], rng)
    if rng.random() < 0.3:
        gen = torch.Generator().manual_seed(int(rng.integers(0, 2**31)))
        image = (image + torch.randn(image.shape, generator=gen) * rng.uniform(0.005, 0.03)).clamp(0, 1)
    return {**sample, "image": image.contiguous(), "mask": sample["mask"].contiguous(),
            "valid": sample["valid"].contiguous()}


# ---------------------------------------------------------------- photometric shifts (image only)

def channel_gain(image: torch.Tensor, rng: np.random.Generator, strength: float = 0.25) -> torch.Tensor:
    """A colour cast: each band times its own gain in [1 - strength, 1 + strength]."""
    gains = torch.tensor(rng.uniform(1 - strength, 1 + strength, image.shape[0]), dtype=image.dtype)
    return (image * gains[:, None, None]).clamp(0, 1)


def gamma(image: torch.Tensor, rng: np.random.Generator, low: float = 0.5, high: float = 2.0) -> torch.Tensor:
    """x ** g with g log-uniform in [low, high] (g > 1 darkens, g < 1 brightens)."""
    g = float(np.exp(rng.uniform(math.log(low), math.log(high))))
    return image.clamp(0, 1) ** g


def hue_rotate(image: torch.Tensor, rng: np.random.Generator, max_degrees: float = 30.0) -> torch.Tensor:
    """Rotate the chroma of an RGB image by up to `max_degrees` (YIQ), keeping its luma."""
    if image.shape[0] != 3:
        return image
    a = math.radians(rng.uniform(-max_degrees, max_degrees))
    rot = torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]],
                       dtype=image.dtype)
    matrix = _RGB.to(image.dtype) @ rot @ _YIQ.to(image.dtype)
    return torch.einsum("ij,jhw->ihw", matrix, image).clamp(0, 1)


def saturation(image: torch.Tensor, rng: np.random.Generator, low: float = 0.3, high: float = 1.6) -> torch.Tensor:
    """Blend an RGB image with its grey by a factor in [low, high] (0: grey)."""
    if image.shape[0] != 3:
        return image
    grey = (image * GREY.to(image.dtype)[:, None, None]).sum(0, keepdim=True)
    return ((image - grey) * rng.uniform(low, high) + grey).clamp(0, 1)


def contrast(image: torch.Tensor, rng: np.random.Generator, low: float = 0.4, high: float = 1.4) -> torch.Tensor:
    """Scale the deviations from the image mean by a factor in [low, high], then shift the mean
    by up to +-0.15 (a different exposure)."""
    mean = image.mean()
    shift = rng.uniform(-0.15, 0.15)
    return ((image - mean) * rng.uniform(low, high) + mean + shift).clamp(0, 1)


def haze(image: torch.Tensor, rng: np.random.Generator, max_alpha: float = 0.5) -> torch.Tensor:
    """Blend towards a light, slightly blue veil by up to `max_alpha` (atmospheric haze)."""
    alpha = rng.uniform(0.1, max_alpha)
    level = rng.uniform(0.6, 0.95)
    veil = torch.full((image.shape[0], 1, 1), level, dtype=image.dtype)
    if image.shape[0] == 3:
        veil[2] = min(1.0, level + rng.uniform(0, 0.08))
    return image * (1 - alpha) + veil * alpha


def blur(image: torch.Tensor, rng: np.random.Generator, max_sigma: float = 2.0) -> torch.Tensor:
    """Gaussian blur with sigma in [0.5, max_sigma] pixels (defocus, a coarser sensor)."""
    sigma = rng.uniform(0.5, max_sigma)
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype)
    kernel = torch.exp(-x**2 / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = image.shape[0]
    out = F.pad(image[None], (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    out = F.conv2d(out, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return out[0].clamp(0, 1)


def noise(image: torch.Tensor, rng: np.random.Generator, max_sigma: float = 0.06) -> torch.Tensor:
    """Additive Gaussian noise, sigma in [0.005, max_sigma] (in 0..1 units)."""
    gen = torch.Generator().manual_seed(int(rng.integers(0, 2**31)))
    sigma = rng.uniform(0.005, max_sigma)
    return (image + torch.randn(image.shape, generator=gen, dtype=image.dtype) * sigma).clamp(0, 1)


def jpeg(image: torch.Tensor, rng: np.random.Generator, low: int = 20, high: int = 90) -> torch.Tensor:
    """JPEG round trip (GDAL's encoder) at a quality in [low, high]: blocks and colour bleeding."""
    quality = int(rng.integers(low, high + 1))
    levels = (image.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return torch.from_numpy(jpeg_array(levels, quality).astype(np.float32) / 255).to(image.dtype)


def jpeg_array(levels: np.ndarray, quality: int) -> np.ndarray:
    """A uint8 (C, H, W) array after a JPEG round trip at `quality` (1 or 3 bands)."""
    c, h, w = levels.shape
    with warnings.catch_warnings(), rasterio.Env(GDAL_PAM_ENABLED="NO"), MemoryFile() as mem:
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with mem.open(driver="JPEG", width=w, height=h, count=c, dtype="uint8", quality=quality) as dst:
            dst.write(levels)
        with mem.open() as src:
            return src.read()


def band_quantiles(image: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """(C, len(QUANTILES)) per-band quantiles of a (C, H, W) image's valid pixels, in 0..1 units
    for uint8 images: what `histogram_match` maps onto."""
    ok = np.ones(image.shape[1:], bool) if valid is None else valid.astype(bool)
    if not ok.any():
        ok = np.ones_like(ok)
    scale = 1 / 255 if image.dtype == np.uint8 else 1.0
    return np.percentile(image[:, ok].astype(np.float32) * scale, QUANTILES, axis=1).T.astype(np.float32)


def histogram_match(image: torch.Tensor, reference: np.ndarray, strength: float = 1.0) -> torch.Tensor:
    """Map each band's quantiles onto `reference` ((C, len(QUANTILES)), see `band_quantiles`),
    blended with the original by `strength`: the crop takes another tile's colours and contrast."""
    src = band_quantiles(image.numpy())
    out = np.empty(image.shape, np.float32)
    values = image.numpy()
    for c in range(image.shape[0]):
        xp = np.maximum.accumulate(src[c] + np.arange(len(QUANTILES)) * 1e-6)  # strictly increasing
        out[c] = np.interp(values[c], xp, reference[c])
    mapped = torch.from_numpy(out).to(image.dtype)
    return (image * (1 - strength) + mapped * strength).clamp(0, 1)


Shift = Callable[[torch.Tensor, np.random.Generator], torch.Tensor]
PHOTOMETRIC: dict[str, Shift] = {
    "gain": channel_gain, "gamma": gamma, "hue": hue_rotate, "saturation": saturation, "contrast": contrast,
    "haze": haze, "blur": blur, "noise": noise, "jpeg": jpeg}


class RobustAugment:
    """The robust recipe's policy: dihedral geometry on every array, then each photometric shift
    with probability `p` (in random order), and with `p_style` histogram matching onto one of the
    `references` (per-band quantiles of the training tiles, `band_quantiles`) first.

    Args:
        references: style references, one (C, len(QUANTILES)) array per training tile.
        p: probability of each photometric shift.
        p_style: probability of the histogram-matching style transfer.
        shifts: names in `PHOTOMETRIC` to draw from.
    """

    def __init__(self, references: Sequence[np.ndarray] = (), p: float = 0.3, p_style: float = 0.3,
                 shifts: Sequence[str] = tuple(PHOTOMETRIC)) -> None:
        unknown = set(shifts) - set(PHOTOMETRIC)
        if unknown:
            raise ValueError(f"unknown shift(s) {sorted(unknown)}; valid: {', '.join(PHOTOMETRIC)}")
        self.references, self.p, self.p_style, self.shifts = list(references), p, p_style, list(shifts)

    def __call__(self, sample: dict[str, torch.Tensor], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        sample = dihedral(sample, int(rng.integers(0, 8)))
        image = sample["image"]
        if self.references and rng.random() < self.p_style:
            reference = self.references[int(rng.integers(0, len(self.references)))]
            image = histogram_match(image, reference, rng.uniform(0.5, 1.0))
        for i in rng.permutation(len(self.shifts)):
            if rng.random() < self.p:
                image = PHOTOMETRIC[self.shifts[i]](image, rng)
        return {**sample, "image": image.contiguous(), "mask": sample["mask"].contiguous(),
                "valid": sample["valid"].contiguous()}
