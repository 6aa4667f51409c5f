"""The U-Net: encoder, decoder with skip connections, 1x1 segmentation head.

`build_model(arch, **config)` is the only way the rest of RoadSeg creates a model, so a
checkpoint's (arch, config) pair rebuilds exactly the network that was trained.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _conv_block(cin: int, cout: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_in in (cin, cout):
        layers.append(nn.Conv2d(c_in, cout, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """`depth` down-sampling stages; returns the feature map of every level."""

    def __init__(self, in_channels: int, base_channels: int, depth: int, batch_norm: bool) -> None:
        super().__init__()
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.out_channels = widths
        self.stem = _conv_block(in_channels, widths[0], batch_norm)
        self.stages = nn.ModuleList(
            _conv_block(widths[i], widths[i + 1], batch_norm) for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.stem(x)]
        for stage in self.stages:
            features.append(stage(F.max_pool2d(features[-1], 2)))
        return features


class DecoderBlock(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int, upsampling: str, batch_norm: bool) -> None:
        super().__init__()
        if upsampling == "transpose":
            self.up: nn.Module = nn.ConvTranspose2d(cin, cin // 2, 2, stride=2)
            cin = cin // 2
        else:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.conv = _conv_block(cin + cskip, cout, batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class Decoder(nn.Module):
    def __init__(self, widths: list[int], upsampling: str, batch_norm: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            DecoderBlock(widths[i + 1], widths[i], widths[i], upsampling, batch_norm)
            for i in reversed(range(len(widths) - 1))
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for block, skip in zip(self.blocks, reversed(features[:-1]), strict=True):
            x = block(x, skip)
        return x


class UNet(nn.Module):
    """U-Net for binary road segmentation; returns logits of shape (N, 1, H, W).

    Args:
        in_channels: number of input bands.
        base_channels: width of the first level; each level doubles it.
        depth: number of down-sampling stages; inputs must be multiples of 2**depth.
        upsampling: "bilinear" or "transpose".
        batch_norm: batch normalisation after every convolution.
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 16, depth: int = 4,
                 upsampling: str = "bilinear", batch_norm: bool = True) -> None:
        super().__init__()
        if upsampling not in ("bilinear", "transpose"):
            raise ValueError(f"upsampling must be 'bilinear' or 'transpose', not {upsampling!r}")
        self.depth = depth
        self.encoder = Encoder(in_channels, base_channels, depth, batch_norm)
        self.decoder = Decoder(self.encoder.out_channels, upsampling, batch_norm)
        self.head = nn.Conv2d(base_channels, 1, 1)

    @property
    def multiple(self) -> int:
        return 2**self.depth

    def check_input_shape(self, x: torch.Tensor) -> None:
        h, w = x.shape[-2:]
        m = self.multiple
        if h % m or w % m:
            ph, pw = -(-h // m) * m, -(-w // m) * m
            raise RuntimeError(
                f"U-Net of depth {self.depth} needs height and width divisible by {m}; "
                f"got {h}x{w}, pad the input to {ph}x{pw}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input_shape(x)
        return self.head(self.decoder(self.encoder(x)))

    @torch.inference_mode()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities in eval mode, without autograd."""
        self.eval()
        return torch.sigmoid(self(x))


MODELS: dict[str, type[nn.Module]] = {"unet": UNet}


def build_model(arch: str, **config: object) -> nn.Module:
    """Create a model by architecture name; unknown names list the valid ones."""
    try:
        cls = MODELS[arch.lower()]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; valid: {', '.join(sorted(MODELS))}") from None
    return cls(**config)
