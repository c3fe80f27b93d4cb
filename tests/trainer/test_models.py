"""The networks against the reference Pix2Pix design: golden parameter counts, receptive field, shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainer.config import GeneratorConfig
from trainer.models import PatchDiscriminator, UNetGenerator, count_parameters, init_weights, receptive_field

# Golden values of the reference implementation (pytorch-CycleGAN-and-pix2pix, unet_256 / basic D).
REFERENCE_G_PARAMETERS = 54_413_955  # 256 px, 3 -> 3 channels, ngf 64
REFERENCE_D_PARAMETERS = 2_768_705  # 6 input channels (A and B concatenated), ndf 64


def test_generator_has_the_reference_parameter_count() -> None:
    G = UNetGenerator(GeneratorConfig(in_channels=3, out_channels=3, size=256))
    assert count_parameters(G) == REFERENCE_G_PARAMETERS


def test_discriminator_has_the_reference_parameter_count() -> None:
    assert count_parameters(PatchDiscriminator(6)) == REFERENCE_D_PARAMETERS


def test_discriminator_sees_70x70_patches() -> None:
    assert receptive_field(PatchDiscriminator(6)) == 70


def test_discriminator_scores_30x30_patches_at_256px() -> None:
    D = PatchDiscriminator(6).eval()
    with torch.no_grad():
        logits = D(torch.zeros(1, 3, 256, 256), torch.zeros(1, 3, 256, 256))
    assert logits.shape == (1, 1, 30, 30)


@pytest.mark.parametrize("size", [32, 64, 128, 256])
@pytest.mark.parametrize(("in_channels", "out_channels"), [(1, 1), (1, 3), (3, 1), (3, 3)])
def test_shapes_at_every_size(size: int, in_channels: int, out_channels: int) -> None:
    G = UNetGenerator(GeneratorConfig(in_channels, out_channels, size, ngf=8)).eval()
    D = PatchDiscriminator(in_channels + out_channels, ndf=8).eval()
    a = torch.rand(2, in_channels, size, size) * 2 - 1
    with torch.no_grad():
        fake = G(a)
        logits = D(a, fake)
    assert fake.shape == (2, out_channels, size, size)
    assert fake.abs().max() <= 1  # tanh output, the [-1, 1] range of the data
    patches = size // 8 - 2  # three stride-2 convs, then two 4x4 stride-1 convs
    assert logits.shape == (2, 1, patches, patches)


def test_bottleneck_is_1x1_at_any_size() -> None:
    for size in (32, 512):
        G = UNetGenerator(GeneratorConfig(1, 1, size, ngf=2))
        innermost = [m for m in G.modules() if isinstance(m, nn.Conv2d)][-1]
        seen: list[torch.Size] = []
        innermost.register_forward_hook(lambda _m, _i, out, seen=seen: seen.append(out.shape))
        G.eval()(torch.zeros(1, 1, size, size))
        assert seen[0][2:] == (1, 1)


def test_dropout_sits_in_the_three_innermost_decoder_blocks_only() -> None:
    def dropouts(dropout: float) -> list[float]:
        G = UNetGenerator(GeneratorConfig(3, 3, 256, ngf=8, dropout=dropout))
        return [m.p for m in G.modules() if isinstance(m, nn.Dropout)]

    assert dropouts(0.5) == [0.5, 0.5, 0.5]
    assert dropouts(0.0) == []


def test_init_weights_follows_the_reference() -> None:
    torch.manual_seed(0)
    G = UNetGenerator(GeneratorConfig(3, 3, 64, ngf=16))
    init_weights(G)
    conv_weights = torch.cat([m.weight.detach().flatten() for m in G.modules() if isinstance(m, nn.Conv2d)])
    norm_weights = torch.cat([m.weight.detach() for m in G.modules() if isinstance(m, nn.BatchNorm2d)])
    assert abs(conv_weights.mean().item()) < 1e-3
    assert conv_weights.std().item() == pytest.approx(0.02, rel=0.05)
    assert norm_weights.mean().item() == pytest.approx(1.0, abs=0.01)
    assert norm_weights.std().item() == pytest.approx(0.02, rel=0.2)
    assert all(m.bias is None or not m.bias.any() for m in G.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)))
