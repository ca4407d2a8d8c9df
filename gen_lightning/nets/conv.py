"""DCGAN-style convolutional encoder and decoder (Radford et al. 2016).

`ConvEncoder`: stride-2 4x4 convolutions, each followed by a normalization and an activation,
halve the image `len(channels)` times; a Linear layer maps the flattened feature map to
`out_features`. `ConvDecoder` mirrors it: a Linear layer to the encoder's smallest feature
map, then stride-2 4x4 transposed convolutions that retrace the encoder's sizes exactly
(28 -> 14 -> 7 -> 3 is undone as 3 -> 7 -> 14 -> 28 through `output_padding`). The decoder's
output is left unsquashed by default (logits or likelihood parameters); a GAN generator sets
`out_activation: tanh`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from gen_lightning.errors import ConfigError
from gen_lightning.nets.mlp import Activation, make_activation

Norm = Literal["batch", "group", "none"]
OutActivation = Literal["none", "tanh", "sigmoid"]


def make_norm(norm: Norm, channels: int) -> nn.Module:
    """BatchNorm (DCGAN), GroupNorm (independent of the batch, e.g. for likelihood evaluation) or nothing."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    if norm == "none":
        return nn.Identity()
    raise ConfigError(f"unknown norm {norm!r}; use 'batch', 'group' or 'none'")


def _out_activation(name: OutActivation) -> nn.Module:
    modules = {"none": nn.Identity, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
    if name not in modules:
        raise ConfigError(f"unknown out_activation {name!r}; use 'none', 'tanh' or 'sigmoid'")
    return modules[name]()


def feature_map_sizes(image_size: int, num_layers: int) -> list[int]:
    """Spatial sizes after each 4x4 stride-2 padding-1 convolution: floor(s / 2) each time."""
    sizes = [image_size]
    for _ in range(num_layers):
        sizes.append(sizes[-1] // 2)
    return sizes


def _check_conv_args(image_size: int, channels: list[int]) -> list[int]:
    if not channels or any(c < 1 for c in channels):
        raise ConfigError(f"channels must be a non-empty list of sizes >= 1, got {list(channels)}")
    sizes = feature_map_sizes(image_size, len(channels))
    if sizes[-1] < 1:
        raise ConfigError(
            f"image_size={image_size} is too small for {len(channels)} stride-2 layers (sizes {sizes}); "
            "use fewer channels entries or a larger image_size"
        )
    return sizes


class ConvEncoder(nn.Module):
    """`(B, in_channels, S, S) -> (B, out_features)` for S = image_size."""

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        channels: list[int] = [64, 128, 256],
        out_features: int = 128,
        norm: Norm = "batch",
        activation: Activation = "leaky_relu",
    ):
        super().__init__()
        if in_channels < 1 or out_features < 1:
            raise ConfigError(f"in_channels and out_features must be >= 1, got {in_channels} and {out_features}")
        sizes = _check_conv_args(image_size, channels)
        self.in_shape = (in_channels, image_size, image_size)
        layers: list[nn.Module] = []
        for c_in, c_out in zip([in_channels, *channels[:-1]], channels):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), make_norm(norm, c_out), make_activation(activation)]
        self.convs = nn.Sequential(*layers)
        self.head = nn.Linear(channels[-1] * sizes[-1] ** 2, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(f"ConvEncoder expects input (B, {', '.join(map(str, self.in_shape))}), got {tuple(x.shape)}")
        h = self.convs(x)  # (B, C, S, S) -> (B, channels[-1], s, s)
        return self.head(h.flatten(1))  # (B, channels[-1], s, s) -> (B, channels[-1]*s*s) -> (B, out_features)


class ConvDecoder(nn.Module):
    """`(B, in_features) -> (B, out_channels, S, S)`, the mirror of `ConvEncoder` with the same `channels`."""

    def __init__(
        self,
        in_features: int,
        out_channels: int,
        image_size: int,
        channels: list[int] = [64, 128, 256],
        norm: Norm = "batch",
        activation: Activation = "relu",
        out_activation: OutActivation = "none",
    ):
        super().__init__()
        if in_features < 1 or out_channels < 1:
            raise ConfigError(f"in_features and out_channels must be >= 1, got {in_features} and {out_channels}")
        sizes = _check_conv_args(image_size, channels)
        self.in_features = in_features
        self.start_shape = (channels[-1], sizes[-1], sizes[-1])
        self.stem = nn.Sequential(nn.Linear(in_features, math.prod(self.start_shape)), make_activation(activation))
        # walk the encoder backwards: channels[-1] -> ... -> channels[0] -> out_channels, sizes[-1] -> ... -> image_size
        c_outs = [*channels[-2::-1], out_channels]
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(channels[::-1], c_outs)):
            s_in, s_out = sizes[-1 - i], sizes[-2 - i]
            # a 4x4 stride-2 padding-1 transposed conv doubles the size; output_padding adds the odd pixel back
            layers.append(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, output_padding=s_out - 2 * s_in))
            if i < len(channels) - 1:
                layers += [make_norm(norm, c_out), make_activation(activation)]
        layers.append(_out_activation(out_activation))
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.in_features:
            raise ValueError(f"ConvDecoder expects input (B, {self.in_features}), got {tuple(z.shape)}")
        h = self.stem(z).view(z.shape[0], *self.start_shape)  # (B, in_features) -> (B, channels[-1], s, s)
        return self.deconvs(h)  # (B, channels[-1], s, s) -> (B, out_channels, S, S)

