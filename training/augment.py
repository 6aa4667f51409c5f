"""Augmentations on sample dicts (dict -> dict). Geometry moves image and labels together;
photometric jitter touches the image only. Tuned wide because the shipped model meets
other sensors, seasons and compressions than the Massachusetts training tiles."""
from __future__ import annotations

import numpy as np
import torch

from roadseg_plugin.core.dihedral import dihedral as dihedral_array

GREY = torch.tensor([0.299, 0.587, 0.114])


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
