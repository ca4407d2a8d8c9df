"""A fully connected network between two tensor shapes.

`MLP` flattens its input, applies hidden Linear layers with an activation, and reshapes the
output, so one class serves as a VAE encoder (`in_shape [1, 28, 28] -> out_shape [2*latent]`),
a decoder (`[latent] -> [P*C, H, W]`), or a small net on 2-D points (`[2] -> [2*P]`).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from gen_lightning.errors import ConfigError

Activation = Literal["relu", "leaky_relu", "elu", "gelu", "silu", "tanh", "softplus"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
}


def make_activation(name: Activation) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; use one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def _check_sizes(name: str, sizes: list[int]) -> None:
    if any(int(s) < 1 for s in sizes):
        raise ConfigError(f"{name} must hold sizes >= 1, got {list(sizes)}")


class MLP(nn.Module):
    """`(B, *in_shape) -> (B, *out_shape)` through Linear layers of widths `hidden`."""

    def __init__(
        self,
        in_shape: list[int],
        out_shape: list[int],
        hidden: list[int] = [512, 512],
        activation: Activation = "relu",
    ):
        super().__init__()
        for name, sizes in (("in_shape", in_shape), ("out_shape", out_shape), ("hidden", hidden)):
            _check_sizes(name, sizes)
        if not in_shape or not out_shape:
            raise ConfigError(f"MLP needs non-empty in_shape and out_shape, got {list(in_shape)} and {list(out_shape)}")
        self.in_shape = tuple(int(s) for s in in_shape)
        self.out_shape = tuple(int(s) for s in out_shape)
        widths = [math.prod(self.in_shape), *(int(h) for h in hidden)]
        layers: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(w_in, w_out), make_activation(activation)]
        layers.append(nn.Linear(widths[-1], math.prod(self.out_shape)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(f"MLP expects input (B, {', '.join(map(str, self.in_shape))}), got {tuple(x.shape)}")
        h = self.net(x.flatten(1))  # (B, *in_shape) -> (B, prod(in_shape)) -> (B, prod(out_shape))
        return h.view(x.shape[0], *self.out_shape)  # (B, prod(out_shape)) -> (B, *out_shape)
