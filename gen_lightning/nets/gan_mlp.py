"""Fully connected GAN networks for low-dimensional data such as 2-D Gaussian mixtures.

`MLPGenerator`: z (+ label embedding) -> hidden Linear + activation layers -> x of `data_shape`,
with a linear output (GMM data is unbounded). Its layers start from He et al. (2015) init with
zero biases, so the first samples spread at unit scale; with PyTorch's default init every layer
shrinks the signal, and the first samples sit on a short segment near one point, from which
the generator unfolds slowly and tends to collapse.

`MLPDiscriminator`: x -> hidden layers -> one logit, through a projection head when
conditional (see conditioning.py). With `pack` = m > 1 it scores m samples at once, concatenated
(PacGAN, Lin et al. 2018), which penalizes a generator that drops modes: `(B, *data_shape) ->
(B/m,)`, so batches must divide by m.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as sn

from gen_lightning.errors import ConfigError
from gen_lightning.nets.conditioning import LabelConcat, ProjectionHead

Activation = Literal["relu", "leaky_relu"]


def _activation(name: Activation) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "leaky_relu":
        return nn.LeakyReLU(0.2)
    raise ConfigError(f"activation must be 'relu' or 'leaky_relu', got {name!r}")


def _check_widths(name: str, sizes: list[int]) -> None:
    if not sizes or any(int(s) < 1 for s in sizes):
        raise ConfigError(f"{name} must be a non-empty list of sizes >= 1, got {list(sizes)}")


def _hidden_layers(
    d_in: int, hidden: list[int], activation: Activation, batch_norm: bool = False, spectral_norm: bool = False
) -> nn.Sequential:
    """[Linear, (BatchNorm), activation] for each width in `hidden`."""
    widths = [d_in, *(int(h) for h in hidden)]
    layers: list[nn.Module] = []
    for w_in, w_out in zip(widths[:-1], widths[1:]):
        linear = nn.Linear(w_in, w_out)
        layers.append(sn(linear) if spectral_norm else linear)
        layers += [nn.BatchNorm1d(w_out)] if batch_norm else []
        layers.append(_activation(activation))
    return nn.Sequential(*layers)


def _he_init(body: nn.Sequential, out: nn.Linear, activation: Activation) -> None:
    """He et al. (2015) init for the hidden layers, unit-variance fan-in init for the output, zero biases."""
    for layer in body:
        if isinstance(layer, nn.Linear):
            nn.init.kaiming_normal_(layer.weight, a=0.2 if activation == "leaky_relu" else 0.0, nonlinearity=activation)
            nn.init.zeros_(layer.bias)
    nn.init.normal_(out.weight, 0.0, out.in_features**-0.5)
    nn.init.zeros_(out.bias)


class MLPGenerator(nn.Module):
    """`z (B, latent_dim), labels (B,) or None -> x (B, *data_shape)`."""

    def __init__(
        self,
        latent_dim: int = 8,
        data_shape: list[int] = [2],
        hidden: list[int] = [256, 256, 256, 256],
        activation: Activation = "relu",
        batch_norm: bool = False,
        num_classes: int | None = None,
        embed_dim: int = 16,
    ):
        super().__init__()
        _check_widths("data_shape", data_shape)
        _check_widths("hidden", hidden)
        if latent_dim < 1:
            raise ConfigError(f"latent_dim must be >= 1, got {latent_dim}")
        self.latent_dim, self.num_classes = latent_dim, num_classes
        self.data_shape = tuple(int(s) for s in data_shape)
        self.condition = LabelConcat(num_classes, embed_dim)
        self.body = _hidden_layers(latent_dim + self.condition.extra_dim, hidden, activation, batch_norm)
        self.out = nn.Linear(int(hidden[-1]), math.prod(self.data_shape))
        _he_init(self.body, self.out, activation)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.body(self.condition(z, labels))  # (B, L) -> (B, L + E) -> (B, hidden[-1])
        return self.out(h).view(z.shape[0], *self.data_shape)  # (B, prod(data_shape)) -> (B, *data_shape)


class MLPDiscriminator(nn.Module):
    """`x (B, *data_shape), labels (B,) or None -> logit (B,)`."""

    def __init__(
        self,
        data_shape: list[int] = [2],
        hidden: list[int] = [256, 256, 256, 256],
        activation: Activation = "leaky_relu",
        spectral_norm: bool = False,
        pack: int = 1,
        num_classes: int | None = None,
    ):
        super().__init__()
        _check_widths("data_shape", data_shape)
        _check_widths("hidden", hidden)
        if pack < 1:
            raise ConfigError(f"pack must be >= 1 (samples scored together), got {pack}")
        if pack > 1 and num_classes is not None:
            raise ConfigError("a packed discriminator (pack > 1) takes no labels; use pack: 1 for a conditional GAN")
        self.num_classes, self.pack = num_classes, pack
        self.data_shape = tuple(int(s) for s in data_shape)
        self.body = _hidden_layers(pack * math.prod(self.data_shape), hidden, activation, spectral_norm=spectral_norm)
        self.head = ProjectionHead(int(hidden[-1]), num_classes, spectral_norm)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[0] % self.pack:
            raise ConfigError(
                f"a batch of {x.shape[0]} does not split into packs of {self.pack}; make the batch size and the "
                "split sizes divisible by the discriminator's pack"
            )
        h = x.reshape(x.shape[0] // self.pack, -1)  # (B, *data_shape) -> (B/m, m*prod(data_shape))
        return self.head(self.body(h), labels)  # (B/m, hidden[-1]) -> (B/m,)
