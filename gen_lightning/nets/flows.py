"""Normalizing-flow networks built from the layers in flow_layers.py.

- `RealNVP` (Dinh et al. 2017): multi-scale; at each scale 3 checkerboard couplings, a squeeze,
  3 channel couplings, then half the channels are factored out; the last scale has 4
  checkerboard couplings. A normalization layer (actnorm, batch norm, or none) precedes each
  coupling.
- `Glow` (Kingma & Dhariwal 2018): multi-scale; each level is a squeeze, then K steps of
  ActNorm -> invertible 1x1 convolution -> affine coupling, then half the channels are factored out.
- `VectorRealNVP`: couplings with alternating masks on vectors `(B, D)`, for 2-D data.
- `VariationalDequantizer`: a conditional flow q(u | x) for the dequantization noise (Flow++), optional.

Every network maps `forward(x) -> (z, logdet)` with z of x's shape (the factored-out latents and
the last scale's output, flattened and concatenated in that order, then reshaped), so the base
density is N(0, I) over all D dimensions; `inverse(z) -> x`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from gen_lightning.errors import ConfigError
from gen_lightning.nets.flow_layers import (
    ActNorm,
    AffineCoupling,
    BatchNormFlow,
    FlowSequence,
    InvConv1x1,
    MLPST,
    ResNetST,
    Scale,
    Squeeze,
    alternating_mask,
    at_least_float32,
    channel_mask,
    checkerboard_mask,
)

Norm = Literal["actnorm", "batchnorm", "none"]


def make_norm(norm: Norm, channels: int) -> list[nn.Module]:
    """The normalization layer before a coupling, as a list (empty for "none")."""
    if norm == "actnorm":
        return [ActNorm(channels)]
    if norm == "batchnorm":
        return [BatchNormFlow(channels)]
    if norm == "none":
        return []
    raise ConfigError(f"norm must be 'actnorm', 'batchnorm' or 'none', got {norm!r}")


def _check_image(name: str, in_channels: int, image_size: int, squeezes: int) -> None:
    if in_channels < 1:
        raise ConfigError(f"{name} in_channels must be >= 1, got {in_channels}")
    if image_size < 2 or image_size % (2**squeezes) != 0:
        raise ConfigError(
            f"{name} squeezes the image {squeezes} times, so image_size must be a multiple of {2**squeezes}, "
            f"got {image_size}; lower num_scales/num_levels"
        )


class SplitPrior(nn.Module):
    """Glow's learned prior of a factored-out part: z_i ~ N(mu(h), exp(log_sigma(h))^2) given the rest h.

    Written as a flow, eps_i = (z_i - mu(h)) * exp(-log_sigma(h)) ~ N(0, I) with log|det| = -sum log_sigma,
    so the base density stays N(0, I). mu and log_sigma come from a 3x3 convolution of h that starts at zero
    (Glow's "split" with a learned prior, Kingma & Dhariwal 2018, sec. 3 and its code).
    """

    def __init__(self, rest_channels: int, factored_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(rest_channels, 2 * factored_channels, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def _mu_log_sigma(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_sigma = at_least_float32(self.conv(h)).chunk(2, dim=1)  # (B, 2k, H, W) -> 2 x (B, k, H, W)
        return mu, log_sigma

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_sigma = self._mu_log_sigma(h)
        return ((z - mu) * torch.exp(-log_sigma)).to(z.dtype), -log_sigma.flatten(1).sum(1)

    def inverse(self, eps: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        mu, log_sigma = self._mu_log_sigma(h)
        return (eps * torch.exp(log_sigma) + mu).to(eps.dtype)


class MultiScaleFlow(nn.Module):
    """Levels of flow layers on images; after each level but the last, half the channels are factored out.

    `levels[i]` maps `(C_i, H_i, W_i)` to the shape its squeezes give; the first half of its output
    channels becomes z_i and leaves the flow (RealNVP, sec. 3.6), the rest goes on to level i+1.
    With `split_priors`, each z_i is first standardized by a learned prior given the rest (Glow).
    """

    def __init__(self, in_shape: tuple[int, int, int], levels: list[FlowSequence], split_priors: bool = False):
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.levels = nn.ModuleList(levels)
        self.out_shapes, self.factored_shapes = [], []  # each level's output, and the part factored out after it
        shape = self.in_shape
        for i, level in enumerate(levels):
            c, h, w = level.out_shape(shape)
            self.out_shapes.append((c, h, w))
            if i < len(levels) - 1:
                self.factored_shapes.append((c // 2, h, w))
                shape = (c - c // 2, h, w)
        self.priors = nn.ModuleList(
            SplitPrior(self.out_shapes[i][0] - k[0], k[0]) for i, k in enumerate(self.factored_shapes)
        ) if split_priors else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zs, logdet, h = [], 0.0, x
        for i, level in enumerate(self.levels):
            h, ld = level(h)
            logdet = logdet + ld
            if i < len(self.levels) - 1:
                k = self.factored_shapes[i][0]
                z_i, h = h[:, :k], h[:, k:]
                if self.priors is not None:
                    z_i, ld = self.priors[i](z_i, h)
                    logdet = logdet + ld
                zs.append(z_i.flatten(1))  # (B, k, H_i, W_i) -> (B, k*H_i*W_i)
        zs.append(h.flatten(1))
        return torch.cat(zs, dim=1).view_as(x), logdet  # (B, D) -> (B, C, H, W)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        b = z.shape[0]
        sizes = [math.prod(s) for s in self.factored_shapes] + [math.prod(self.out_shapes[-1])]
        parts = z.flatten(1).split(sizes, dim=1)  # (B, D) -> z_0, z_1, ..., the last level's output
        h = self.levels[-1].inverse(parts[-1].view(b, *self.out_shapes[-1]))
        for i in reversed(range(len(self.levels) - 1)):
            z_i = parts[i].view(b, *self.factored_shapes[i])
            if self.priors is not None:
                z_i = self.priors[i].inverse(z_i, h)
            h = torch.cat([z_i, h], dim=1)
            h = self.levels[i].inverse(h)
        return h


class RealNVP(MultiScaleFlow):
    """RealNVP on `(in_channels, image_size, image_size)` images with `num_scales` scales.

    Each coupling's s and t come from a ResNet with `hidden` channels and `num_blocks` residual
    blocks (RealNVP: 64 channels, 8 blocks on CIFAR-10). Scales 1..num_scales-1 squeeze once each.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        num_scales: int = 3,
        hidden: int = 64,
        num_blocks: int = 4,
        scale: Scale = "tanh",
        norm: Norm = "actnorm",
    ):
        if num_scales < 1:
            raise ConfigError(f"RealNVP num_scales must be >= 1, got {num_scales}")
        _check_image("RealNVP", in_channels, image_size, num_scales - 1)
        levels, c, size = [], in_channels, image_size
        for i in range(num_scales):
            last = i == num_scales - 1
            layers = self._couplings([checkerboard_mask(size, size, p % 2) for p in range(4 if last else 3)], c,
                                     hidden, num_blocks, scale, norm)
            if not last:
                c, size = 4 * c, size // 2
                layers += [Squeeze()]
                layers += self._couplings([channel_mask(c, p % 2) for p in range(3)], c, hidden, num_blocks, scale, norm)
                c = c - c // 2
            levels.append(FlowSequence(layers))
        super().__init__((in_channels, image_size, image_size), levels)

    @staticmethod
    def _couplings(masks, channels, hidden, num_blocks, scale, norm) -> list[nn.Module]:
        layers: list[nn.Module] = []
        for mask in masks:
            layers += make_norm(norm, channels)
            layers.append(AffineCoupling(mask, ResNetST(channels, hidden, num_blocks), scale))
        return layers


class _ActNormNoLogdet(ActNorm):
    """ActNorm inside a coupling's s/t net, where no log-det is needed (Glow's NN)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[0]


class GlowST(nn.Module):
    """Glow's s/t net `(B, C, H, W) -> (B, 2C, H, W)`: conv3x3 -> actnorm -> ReLU -> conv1x1 -> actnorm -> ReLU
    -> conv3x3 starting at zero (Kingma & Dhariwal 2018, sec. 3.3)."""

    def __init__(self, channels: int, hidden: int = 512):
        super().__init__()
        if hidden < 1:
            raise ConfigError(f"Glow hidden must be >= 1, got {hidden}")
        self.net = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1, bias=False), _ActNormNoLogdet(hidden), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1, bias=False), _ActNormNoLogdet(hidden), nn.ReLU(),
            nn.Conv2d(hidden, 2 * channels, 3, padding=1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Glow(MultiScaleFlow):
    """Glow on `(in_channels, image_size, image_size)` images: `num_levels` levels of `steps_per_level` steps.

    A step is ActNorm -> InvConv1x1 (LU-decomposed with `lu`) -> affine coupling on half the channels
    (alternating halves, `scale` "sigmoid" as in Glow). Glow used K = 32 steps, 3 levels and 512 hidden channels.
    `split_priors`: learned priors of the factored-out parts (SplitPrior), as in Glow; off gives N(0, I).
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        num_levels: int = 2,
        steps_per_level: int = 8,
        hidden: int = 128,
        lu: bool = True,
        scale: Scale = "sigmoid",
        split_priors: bool = False,
    ):
        if num_levels < 1 or steps_per_level < 1:
            raise ConfigError(f"Glow needs num_levels >= 1 and steps_per_level >= 1, got {num_levels} and {steps_per_level}")
        _check_image("Glow", in_channels, image_size, num_levels)
        levels, c = [], in_channels
        for i in range(num_levels):
            c = 4 * c
            layers: list[nn.Module] = [Squeeze()]
            for k in range(steps_per_level):
                layers += [ActNorm(c), InvConv1x1(c, lu=lu, seed=1000 * i + k),
                           AffineCoupling(channel_mask(c, k % 2), GlowST(c, hidden), scale)]
            levels.append(FlowSequence(layers))
            c = c - c // 2
        super().__init__((in_channels, image_size, image_size), levels, split_priors)


class VectorRealNVP(FlowSequence):
    """RealNVP on vectors `(B, dim)`: `num_couplings` couplings with alternating masks, each preceded by `norm`.

    s and t come from MLPs of `num_layers` hidden layers of width `hidden`.
    """

    def __init__(
        self,
        dim: int = 2,
        num_couplings: int = 8,
        hidden: int = 128,
        num_layers: int = 2,
        scale: Scale = "tanh",
        norm: Norm = "actnorm",
    ):
        if dim < 2 or num_couplings < 1:
            raise ConfigError(f"VectorRealNVP needs dim >= 2 and num_couplings >= 1, got {dim} and {num_couplings}")
        layers: list[nn.Module] = []
        for k in range(num_couplings):
            layers += make_norm(norm, dim)
            layers.append(AffineCoupling(alternating_mask(dim, k % 2), MLPST(dim, hidden, num_layers), scale))
        super().__init__(layers)
        self.in_shape = (dim,)


class VariationalDequantizer(nn.Module):
    """q(u | x) for dequantization noise u in (0, 1)^D (Flow++, Ho et al. 2019, sec. 3.1).

    eps ~ N(0, I), h = f(eps; x) through `num_couplings` affine couplings with alternating checkerboard
    masks whose s/t ResNets also see the image x (shifted to [-1/2, 1/2]), and u = sigmoid(h). Then
    log q(u | x) = log N(eps; 0, I) - log|det dh/deps| - sum log sigmoid'(h), and
    log P(x) >= E_q[log p(y) - log q(u | x)] - D ln 256 with y = (k + u) / 256 (Flow++, eq. 12).
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_couplings: int = 4, hidden: int = 32, num_blocks: int = 1):
        super().__init__()
        if in_channels < 1 or image_size < 2 or num_couplings < 1:
            raise ConfigError(
                f"VariationalDequantizer needs in_channels >= 1, image_size >= 2 and num_couplings >= 1, "
                f"got {in_channels}, {image_size} and {num_couplings}"
            )
        self.in_shape = (in_channels, image_size, image_size)
        self.couplings = nn.ModuleList(
            AffineCoupling(checkerboard_mask(image_size, image_size, k % 2),
                           ResNetST(in_channels, hidden, num_blocks, context_channels=in_channels), "tanh")
            for k in range(num_couplings)
        )

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """u ~ q(u | x) `(B, C, H, W)` in (0, 1) and log q(u | x) `(B,)`, for 8-bit images x in [0, 1]."""
        eps = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        return self.transform(eps, x)

    def transform(self, eps: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The map eps -> u given x, and log q(u | x) by the change of variables."""
        context, h, logdet = x - 0.5, eps, 0.0
        for coupling in self.couplings:
            h, ld = coupling(h, context)
            logdet = logdet + ld
        log_sigmoid_grad = F.logsigmoid(h) + F.logsigmoid(-h)  # log sigmoid'(h) = log sigmoid(h) + log sigmoid(-h)
        log_normal = -0.5 * (eps.pow(2) + math.log(2 * math.pi)).flatten(1).sum(1)
        return torch.sigmoid(h), log_normal - logdet - log_sigmoid_grad.flatten(1).sum(1)
