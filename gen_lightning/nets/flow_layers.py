"""Invertible layers of RealNVP (Dinh et al. 2017) and Glow (Kingma & Dhariwal 2018).

Every layer maps `forward(x) -> (z, logdet)` with `logdet = log|det dz/dx|` per example `(B,)`,
and `inverse(z) -> x`. Inputs are images `(B, C, H, W)` or vectors `(B, D)`; for vectors the
features play the role of channels. Log-determinants are summed in float32 even when the
surrounding nets run under bf16 autocast: a bf16 sum over thousands of dimensions loses the
bits that bits/dim is made of.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from gen_lightning.errors import ConfigError

Scale = Literal["tanh", "sigmoid"]


def _per_channel(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A `(C,)` parameter shaped to broadcast over `x`: `(1, C)` for vectors, `(1, C, 1, 1)` for images."""
    return v.view(1, -1, *([1] * (x.dim() - 2)))


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """float32 for half precision tensors, unchanged for float32 and float64."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _spatial_size(x: torch.Tensor) -> int:
    """H*W for images, 1 for vectors: how many times a per-channel log-scale enters the log-det."""
    return math.prod(x.shape[2:])


# ---- masks ---------------------------------------------------------------------------------


def checkerboard_mask(height: int, width: int, parity: int) -> torch.Tensor:
    """`(1, 1, H, W)` with b[h, w] = 1 where (h + w) % 2 == parity (RealNVP, fig. 3 left)."""
    h = torch.arange(height)[:, None]
    w = torch.arange(width)[None, :]
    return ((h + w) % 2 == parity).float()[None, None]


def channel_mask(channels: int, parity: int) -> torch.Tensor:
    """`(1, C, 1, 1)`: the first half of the channels when parity is 0, the second half when 1 (RealNVP, fig. 3 right)."""
    first = (torch.arange(channels) < channels // 2).float()
    return (first if parity == 0 else 1.0 - first).view(1, channels, 1, 1)


def alternating_mask(dim: int, parity: int) -> torch.Tensor:
    """`(1, D)` with b[i] = 1 where i % 2 == parity: the vector form of the checkerboard."""
    return (torch.arange(dim) % 2 == parity).float()[None]


# ---- coupling ------------------------------------------------------------------------------


class AffineCoupling(nn.Module):
    """z = b*x + (1-b) * (x * exp(s(b*x)) + t(b*x)) (RealNVP, eq. 9); log|det| = sum (1-b) * s.

    `mask` b `(1, C, H, W)`-broadcastable (or `(1, D)`) selects the dimensions that pass through
    and condition the rest. `net` maps `b*x` to `2*C` channels (s before scaling, then t); with a
    `context` (a conditional flow, e.g. the variational dequantizer), it maps `cat(b*x, context)`.
    `scale` keeps s bounded for stability: "tanh" is s = a * tanh(h) with a learned per-channel
    a (RealNVP), "sigmoid" is exp(s) = sigmoid(h + 2), so the scale lies in (0, 1) (Glow).
    """

    def __init__(self, mask: torch.Tensor, net: nn.Module, scale: Scale = "tanh"):
        super().__init__()
        if scale not in ("tanh", "sigmoid"):
            raise ConfigError(f"coupling scale must be 'tanh' or 'sigmoid', got {scale!r}")
        self.register_buffer("mask", mask)
        self.net, self.scale = net, scale
        channels = mask.shape[1]
        self.tanh_scale = nn.Parameter(torch.ones(channels)) if scale == "tanh" else None

    def _s_t(self, x_b: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """log-scale s and shift t, zero on the pass-through dimensions, in float32."""
        inputs = x_b if context is None else torch.cat([x_b, context], dim=1)
        h, t = at_least_float32(self.net(inputs)).chunk(2, dim=1)  # (B, 2C, ...) -> 2 x (B, C, ...)
        if self.scale == "tanh":
            s = _per_channel(self.tanh_scale, h) * torch.tanh(h)
        else:
            s = F.logsigmoid(h + 2.0)
        free = 1.0 - self.mask
        return s * free, t * free

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x_b = x * self.mask
        s, t = self._s_t(x_b, context)
        z = x_b + (1.0 - self.mask) * (x * torch.exp(s) + t)
        return z.to(x.dtype), s.flatten(1).sum(1)

    def inverse(self, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        z_b = z * self.mask
        s, t = self._s_t(z_b, context)
        x = z_b + (1.0 - self.mask) * ((z - t) * torch.exp(-s))
        return x.to(z.dtype)


# ---- normalization as a flow ----------------------------------------------------------------


class ActNorm(nn.Module):
    """z = (x + bias) * exp(logs) per channel (Glow, sec. 3.1); log|det| = H*W * sum(logs).

    On the first batch seen in training mode, bias and logs are set from that batch so that z has
    zero mean and unit variance per channel (data-dependent initialization); `initialized` is a
    buffer, so a checkpoint never re-initializes.
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.logs = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.tensor(False))
        self.eps = eps

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        per_channel = at_least_float32(x.transpose(0, 1).flatten(1))  # (B, C, ...) -> (C, B*H*W)
        moments = torch.stack([per_channel.mean(1), per_channel.pow(2).mean(1)])  # (2, C): E[x], E[x^2]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # under DDP every rank must start from the same weights: average the moments over the ranks' batches
            torch.distributed.all_reduce(moments)
            moments /= torch.distributed.get_world_size()
        mean, var = moments[0], (moments[1] - moments[0].pow(2)).clamp_min(0)
        self.bias.copy_(-mean)
        self.logs.copy_(-torch.log(var.sqrt() + self.eps))
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not bool(self.initialized):
            self.initialize(x)
        z = (x + _per_channel(self.bias, x)) * torch.exp(_per_channel(self.logs, x))
        logdet = _spatial_size(x) * at_least_float32(self.logs).sum()
        return z, logdet.expand(x.shape[0])

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return z * torch.exp(-_per_channel(self.logs, z)) - _per_channel(self.bias, z)


class BatchNormFlow(nn.Module):
    """Batch normalization as an invertible layer (RealNVP, sec. 3.7; MAF, sec. 3.4).

    z = (x - mu) / sqrt(var + eps) * exp(log_gamma) + beta, with the batch's mean and variance in
    training and running averages in eval; log|det| = H*W * sum(log_gamma - 1/2 log(var + eps)).
    The inverse uses the running averages, so it inverts the eval-mode forward.
    """

    def __init__(self, channels: int, momentum: float = 0.05, eps: float = 1e-5):
        super().__init__()
        self.log_gamma = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.momentum, self.eps = momentum, eps

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.training:
            return self.running_mean, self.running_var
        per_channel = at_least_float32(x.transpose(0, 1).flatten(1))  # (B, C, ...) -> (C, B*H*W)
        mean, var = per_channel.mean(1), per_channel.var(1, unbiased=False)
        with torch.no_grad():
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var, self.momentum)
        return mean, var

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, var = self._stats(x)
        x_hat = (x - _per_channel(mean, x)) / torch.sqrt(_per_channel(var, x) + self.eps)
        z = x_hat * torch.exp(_per_channel(self.log_gamma, x)) + _per_channel(self.beta, x)
        logdet = _spatial_size(x) * at_least_float32(self.log_gamma - 0.5 * torch.log(var + self.eps)).sum()
        return z, logdet.expand(x.shape[0])

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        x_hat = (z - _per_channel(self.beta, z)) * torch.exp(-_per_channel(self.log_gamma, z))
        return x_hat * torch.sqrt(_per_channel(self.running_var, z) + self.eps) + _per_channel(self.running_mean, z)


# ---- invertible 1x1 convolution -------------------------------------------------------------


class InvConv1x1(nn.Module):
    """z = W x at every pixel (Glow, sec. 3.2); log|det| = H*W * log|det W|.

    W starts as a random rotation. With `lu`, W = P L (U + diag(sign(s) * exp(log|s|))) with P fixed,
    L unit lower- and U strictly upper-triangular (Glow, eq. 10), so log|det W| = sum(log|s|) costs
    O(C) instead of a slogdet. The slogdet and the inverse are taken in float32 (or float64 when the
    weights are), outside any autocast.
    """

    def __init__(self, channels: int, lu: bool = True, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        w = torch.linalg.qr(torch.randn(channels, channels, generator=g))[0]
        self.lu = lu
        if not lu:
            self.weight = nn.Parameter(w)
            return
        p, l, u = torch.linalg.lu(w)
        s = torch.diagonal(u)
        self.register_buffer("p", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.register_buffer("eye", torch.eye(channels))
        self.l = nn.Parameter(l)
        self.u = nn.Parameter(torch.triu(u, 1))
        self.log_s = nn.Parameter(torch.log(s.abs()))

    def weight_and_logdet(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W `(C, C)` and log|det W| (a scalar), never below float32."""
        with torch.autocast(device_type=self.l.device.type if self.lu else self.weight.device.type, enabled=False):
            if not self.lu:
                w = at_least_float32(self.weight)
                return w, torch.linalg.slogdet(w)[1]
            lower = self.l * self.lower_mask + self.eye
            upper = self.u * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
            return self.p @ lower @ upper, self.log_s.sum()

    def _mix(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # a 1x1 convolution is a matrix product over the channel dimension; in float32 even under bf16 autocast,
        # where W^-1 applied in bf16 put errors of ~0.1 into inverse(forward(x)) of a small Glow
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = at_least_float32(x)
            return torch.einsum("ij,bj...->bi...", w.to(x.dtype), x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w, logdet = self.weight_and_logdet()
        return self._mix(x, w), (_spatial_size(x) * logdet).expand(x.shape[0])

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        w, _ = self.weight_and_logdet()
        return self._mix(z, torch.linalg.inv(w))


# ---- squeeze --------------------------------------------------------------------------------


class Squeeze(nn.Module):
    """`(B, C, H, W) -> (B, 4C, H/2, W/2)`: each 2x2 patch becomes 4 channels (RealNVP, fig. 3); log|det| = 0."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        z = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)  # (B, C, H/2, 2, W/2, 2) -> (B, C, 2, 2, H/2, W/2)
        return z.reshape(b, 4 * c, h // 2, w // 2), at_least_float32(x.new_zeros(b))

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        b, c4, h2, w2 = z.shape
        x = z.view(b, c4 // 4, 2, 2, h2, w2).permute(0, 1, 4, 2, 5, 3)  # -> (B, C, H/2, 2, W/2, 2)
        return x.reshape(b, c4 // 4, 2 * h2, 2 * w2)

    @staticmethod
    def out_shape(shape: tuple[int, int, int]) -> tuple[int, int, int]:
        c, h, w = shape
        return (4 * c, h // 2, w // 2)


class FlowSequence(nn.Module):
    """Layers applied in order; log-dets add up. The inverse runs the layers' inverses in reverse."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = at_least_float32(x.new_zeros(x.shape[0]))
        for layer in self.layers:
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        for layer in reversed(self.layers):
            z = layer.inverse(z)
        return z

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        for layer in self.layers:
            if isinstance(layer, Squeeze):
                shape = Squeeze.out_shape(shape)
        return shape


# ---- the networks that give s and t ----------------------------------------------------------


class ResidualBlock(nn.Module):
    """Pre-activation block x + conv(relu(bn(conv(relu(bn(x)))))) (He et al. 2016), as in RealNVP's s/t nets."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNetST(nn.Module):
    """`(B, C + context_channels, H, W) -> (B, 2C, H, W)`: s and t of a coupling from a small ResNet.

    The last convolution starts at zero, so every coupling starts as the identity (Glow, sec. 3.3).
    """

    def __init__(self, channels: int, hidden: int = 64, num_blocks: int = 4, context_channels: int = 0):
        super().__init__()
        if hidden < 1 or num_blocks < 0:
            raise ConfigError(f"the s/t ResNet needs hidden >= 1 and num_blocks >= 0, got {hidden} and {num_blocks}")
        self.net = nn.Sequential(
            nn.Conv2d(channels + context_channels, hidden, 3, padding=1),
            *[ResidualBlock(hidden) for _ in range(num_blocks)],
            nn.BatchNorm2d(hidden), nn.ReLU(),
            nn.Conv2d(hidden, 2 * channels, 3, padding=1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MLPST(nn.Module):
    """`(B, D) -> (B, 2D)`: s and t of a coupling on vectors; the last layer starts at zero."""

    def __init__(self, dim: int, hidden: int = 128, num_layers: int = 2):
        super().__init__()
        if hidden < 1 or num_layers < 1:
            raise ConfigError(f"the s/t MLP needs hidden >= 1 and num_layers >= 1, got {hidden} and {num_layers}")
        widths = [dim] + [hidden] * num_layers
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(hidden, 2 * dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
