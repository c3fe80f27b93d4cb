"""The Pix2Pix networks: a U-Net generator and a 70x70 PatchGAN discriminator (reference design)."""

from __future__ import annotations

import math

import torch
from torch import nn

from trainer.config import GeneratorConfig

DROPOUT_BLOCKS = 3  # decoder blocks nearest the bottleneck that carry dropout, as in the paper


class UNetBlock(nn.Module):
    """One level of the U-Net: down, the inner levels, up, and the skip connection around them.

    Down convs and the up convs that feed a BatchNorm have no bias (the norm's shift replaces it);
    the reference also leaves the outermost down conv without one, and its parameter count relies on it.
    """

    def __init__(
        self,
        outer: int,
        inner: int,
        sub: nn.Module | None,
        in_channels: int | None = None,
        outermost: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.outermost = outermost
        in_channels = outer if in_channels is None else in_channels
        down_conv = nn.Conv2d(in_channels, inner, 4, stride=2, padding=1, bias=False)
        up_in = inner if sub is None else inner * 2  # inner levels return their input concatenated
        if outermost:
            down = [down_conv]
            up = [nn.ReLU(True), nn.ConvTranspose2d(up_in, outer, 4, stride=2, padding=1), nn.Tanh()]
        else:
            down = [nn.LeakyReLU(0.2, True), down_conv]
            if sub is not None:  # the innermost level reaches 1x1 at 256 px: no norm on a single pixel
                down.append(nn.BatchNorm2d(inner))
            up = [
                nn.ReLU(True),
                nn.ConvTranspose2d(up_in, outer, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(outer),
            ]
            if dropout > 0:
                up.append(nn.Dropout(dropout))
        layers = down + ([sub] if sub is not None else []) + up
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UNetGenerator(nn.Module):
    """log2(size) downsamplings, so the bottleneck is 1x1 at any supported size.

    Dropout (the generator's only noise, as in the paper) sits in the decoder of the innermost block
    and of the two blocks above it: the first three up-convolutions after the bottleneck, the
    paper's "dropout in the first 3 layers of the decoder". junyanz's port counts differently
    (dropout in its `num_downs - 5` 8ngf blocks), which at 256 px puts it in more layers.
    """

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ngf = cfg.ngf
        depth = int(math.log2(cfg.size))
        # Channel widths from the outside in: ngf, 2ngf, 4ngf, then 8ngf down to the bottleneck.
        widths = [ngf * min(2**i, 8) for i in range(depth)]
        block: nn.Module | None = None
        for level in range(depth - 1, 0, -1):  # innermost first; level 0 is the outermost
            from_inside = depth - 1 - level
            block = UNetBlock(
                widths[level - 1],
                widths[level],
                block,
                dropout=cfg.dropout if from_inside < DROPOUT_BLOCKS else 0.0,
            )
        self.model = UNetBlock(cfg.out_channels, ngf, block, in_channels=cfg.in_channels, outermost=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class PatchDiscriminator(nn.Module):
    """70x70 PatchGAN: classifies each overlapping 70x70 patch of concat(A, B) as real or fake."""

    def __init__(self, in_channels: int, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        width = ndf
        for n in range(1, n_layers + 1):
            stride = 2 if n < n_layers else 1
            next_width = ndf * min(2**n, 8)
            layers += [
                nn.Conv2d(width, next_width, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(next_width),
                nn.LeakyReLU(0.2, True),
            ]
            width = next_width
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.model(torch.cat([a, b], 1))


def receptive_field(module: nn.Module) -> int:
    """Receptive field of a stack of convolutions, walking from the output back to the input."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    field = 1
    for conv in reversed(convs):
        field = (field - 1) * conv.stride[0] + conv.kernel_size[0]
    return field


def init_weights(module: nn.Module) -> None:
    """Reference init: conv weights N(0, 0.02), BatchNorm weights N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
