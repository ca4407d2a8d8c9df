"""Energy networks E(x): data -> one scalar per example, with p(x) proportional to exp(-E(x)).

`ConvEnergy` for images (28x28x1 MNIST, 32x32x3 CIFAR-10): the small convolutional energy of
short-run/IGEBM-style EBMs (Du & Mordatch 2019; Nijkamp et al. 2019), with swish (SiLU)
activations, which keep the energy smooth so that its input gradient, which drives SGLD, is
smooth too (Grathwohl et al. 2020 use the same reasoning). Spectral normalization
(Miyato et al. 2018), optional, bounds each layer's Lipschitz constant and so the size of
SGLD's gradient steps (Du & Mordatch 2019, sec. 3.3).

Feature maps, with channels [c0, c1, ..., ck]:
  conv3x3 (C -> c0) at full size, then one conv4x4 stride 2 per further width, then one conv
  whose kernel covers the whole remaining map (valid padding) to a single energy:
  28: 28x28xc0 -> 14x14xc1 -> 7x7xc2 -> 1;   32: 32x32xc0 -> 16 -> 8 -> 4x4xc3 -> 1.

`MLPEnergy` for low-dimensional data such as 2-D Gaussian mixtures.

Neither has BatchNorm: SGLD takes gradients per example, and batch statistics would couple
the chains of a batch.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as sn

from gen_lightning.errors import ConfigError


def _maybe_sn(layer: nn.Module, spectral_norm: bool) -> nn.Module:
    return sn(layer) if spectral_norm else layer


def _check_widths(name: str, sizes: list[int]) -> list[int]:
    if not sizes or any(int(s) < 1 for s in sizes):
        raise ConfigError(f"{name} must be a non-empty list of sizes >= 1, got {list(sizes)}")
    return [int(s) for s in sizes]


class ConvEnergy(nn.Module):
    """`(B, C, H, W) -> (B,)` energies; see the module docstring for the layers."""

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        channels: list[int] = (32, 64, 128),
        spectral_norm: bool = False,
    ):
        super().__init__()
        channels = _check_widths("ConvEnergy channels", channels)
        if in_channels < 1:
            raise ConfigError(f"ConvEnergy in_channels must be >= 1, got {in_channels}")
        side = image_size // 2 ** (len(channels) - 1)  # each further width halves the map
        if side < 1 or image_size % 2 ** (len(channels) - 1):
            raise ConfigError(
                f"ConvEnergy: image_size {image_size} cannot be halved {len(channels) - 1} times; "
                "use fewer channels entries (28: 3, 32: 3 or 4)"
            )
        self.in_channels, self.image_size, self.final_side = in_channels, image_size, side
        layers: list[nn.Module] = [_maybe_sn(nn.Conv2d(in_channels, channels[0], 3, 1, 1), spectral_norm), nn.SiLU()]
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [_maybe_sn(nn.Conv2d(c_in, c_out, 4, 2, 1), spectral_norm), nn.SiLU()]
        layers.append(_maybe_sn(nn.Conv2d(channels[-1], 1, side, 1, 0), spectral_norm))  # (B, ck, s, s) -> (B, 1, 1, 1)
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten()  # (B, 1, 1, 1) -> (B,)


class MLPEnergy(nn.Module):
    """`(B, *data_shape) -> (B,)`: [Linear, SiLU] per hidden width, then a linear energy."""

    def __init__(self, data_shape: list[int] = (2,), hidden: list[int] = (128, 128, 128), spectral_norm: bool = False):
        super().__init__()
        hidden = _check_widths("MLPEnergy hidden", hidden)
        d_in = 1
        for s in _check_widths("MLPEnergy data_shape", data_shape):
            d_in *= s
        self.data_shape = tuple(int(s) for s in data_shape)
        widths = [d_in, *hidden]
        layers: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers += [_maybe_sn(nn.Linear(w_in, w_out), spectral_norm), nn.SiLU()]
        layers.append(_maybe_sn(nn.Linear(widths[-1], 1), spectral_norm))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.flatten(1)).squeeze(1)  # (B, *data_shape) -> (B, D) -> (B,)
