"""Energy networks: one energy per example, no coupling between the examples of a batch, spectral norm."""

import pytest
import torch

from gen_lightning.errors import ConfigError
from gen_lightning.nets.energy import ConvEnergy, MLPEnergy


@pytest.mark.parametrize(
    "channels, size, widths, final_side",
    [(1, 28, [8, 16, 32], 7), (3, 32, [8, 16, 32, 32], 4), (3, 32, [8, 16, 32], 8)],
)
def test_conv_energy_gives_one_energy_per_image(channels, size, widths, final_side):
    net = ConvEnergy(in_channels=channels, image_size=size, channels=widths)
    assert net.final_side == final_side  # image_size / 2^(len(channels) - 1)
    assert net(torch.randn(5, channels, size, size)).shape == (5,)


def test_mlp_energy_gives_one_energy_per_point():
    assert MLPEnergy([2], [16, 16])(torch.randn(7, 2)).shape == (7,)
    assert MLPEnergy([1, 4, 4], [16])(torch.randn(3, 1, 4, 4)).shape == (3,)


@pytest.mark.parametrize("net, x", [
    (ConvEnergy(1, 28, [4, 8, 8]), torch.randn(3, 1, 28, 28)),
    (MLPEnergy([2], [16, 16]), torch.randn(3, 2)),
])  # fmt: skip
def test_energy_of_one_example_ignores_the_others(net, x):
    # No BatchNorm: dE(x_0)/dx_j = 0 for j != 0, so SGLD chains in a batch are independent.
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(net(x)[0], x)
    assert grad[0].abs().sum() > 0
    assert torch.all(grad[1:] == 0)


def test_spectral_norm_makes_each_layer_1_lipschitz():
    torch.manual_seed(0)
    net = MLPEnergy([2], [32, 32], spectral_norm=True)
    for _ in range(50):  # each training-mode forward runs one power iteration
        net(torch.randn(4, 2))
    net.eval()
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3
    for layer in linears:
        assert torch.linalg.matrix_norm(layer.weight.detach(), ord=2).item() == pytest.approx(1.0, abs=1e-3)


def test_conv_energy_with_spectral_norm_is_parametrized():
    net = ConvEnergy(3, 32, [4, 8, 8, 8], spectral_norm=True)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5 and all(hasattr(m, "parametrizations") for m in convs)


@pytest.mark.parametrize("kwargs", [
    {"image_size": 28, "channels": [4, 8, 8, 8]},  # 28 -> 14 -> 7 -> 3.5
    {"image_size": 28, "channels": []},
    {"in_channels": 0},
])  # fmt: skip
def test_conv_energy_refuses_bad_sizes(kwargs):
    with pytest.raises(ConfigError):
        ConvEnergy(**kwargs)


def test_mlp_energy_refuses_empty_hidden():
    with pytest.raises(ConfigError, match="hidden"):
        MLPEnergy([2], [])
