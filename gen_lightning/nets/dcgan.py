"""DCGAN generator and discriminator (Radford et al. 2016) for 28x28, 32x32 and 64x64 images.

Generator: z (+ label embedding) -> ConvTranspose to (C0, s, s) -> [ConvTranspose stride 2,
BatchNorm, ReLU] ... -> ConvTranspose to the image -> tanh, so samples lie in [-1, 1].
Discriminator: [strided Conv, norm, LeakyReLU(0.2)] ... with no norm after the first conv,
then a linear score of the flattened features (a projection head when conditional). Weights
start from N(0, 0.02) as in the paper (sec. 4). Spectral normalization (Miyato et al. 2018)
and layer norm are options of the discriminator; WGAN-GP needs a discriminator without
BatchNorm, since its gradient penalty is per example. `minibatch_std: G` (0: off) appends,
before the head, one feature map holding the average standard deviation of the features over groups of G
examples (Karras et al. 2018, sec. 3): D sees how varied a batch is, so a generator that
collapses onto a few modes is told apart from the data. `pack: m` (1: off) is PacGAN (Lin et al. 2018): D
scores packs of m examples stacked along the channels (consecutive examples of the batch form a pack, a
remainder of fewer than m is dropped), so it judges m samples jointly and a generator that over-produces some
modes is told apart from the data by the packs' make-up; unconditional discriminators only.

Feature maps by image size, with width w:
  28: G 7x7x2w -> 14x14xw -> 28x28xC;       D 28 -> 14x14xw -> 7x7x2w
  32: G 4x4x4w -> 8 -> 16 -> 32x32xC;        D 32 -> 16x16xw -> 8x8x2w -> 4x4x4w
  64: G 4x4x8w -> 8 -> 16 -> 32 -> 64x64xC;  D 64 -> 32x32xw -> ... -> 4x4x8w
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as sn

from gen_lightning.errors import ConfigError
from gen_lightning.nets.conditioning import LabelConcat, ProjectionHead

ImageSize = Literal[28, 32, 64]
START_SIZE = {28: 7, 32: 4, 64: 4}  # side of the smallest feature map
UPSAMPLINGS = {28: 2, 32: 3, 64: 4}  # stride-2 layers between it and the image


def _check(image_size: int, channels: int, width: int) -> None:
    if image_size not in START_SIZE:
        raise ConfigError(f"DCGAN image_size must be one of {sorted(START_SIZE)}, got {image_size}")
    if channels < 1 or width < 1:
        raise ConfigError(f"DCGAN channels and width must be >= 1, got {channels} and {width}")


def _dcgan_init(module: nn.Module) -> nn.Module:
    """N(0, 0.02) weights for (transposed) convolutions, N(1, 0.02) scales for norms (Radford et al. 2016, sec. 4)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
    return module


class DCGANGenerator(nn.Module):
    """`z (B, latent_dim), labels (B,) or None -> x (B, channels, image_size, image_size)` in [-1, 1]."""

    def __init__(
        self,
        latent_dim: int = 100,
        channels: int = 1,
        image_size: ImageSize = 28,
        width: int = 64,
        num_classes: int | None = None,
        embed_dim: int = 50,
    ):
        super().__init__()
        _check(image_size, channels, width)
        if latent_dim < 1:
            raise ConfigError(f"latent_dim must be >= 1, got {latent_dim}")
        self.latent_dim, self.num_classes = latent_dim, num_classes
        self.condition = LabelConcat(num_classes, embed_dim)
        k = UPSAMPLINGS[image_size]
        widths = [width * 2**i for i in reversed(range(k))]  # e.g. [4w, 2w, w] for 32x32
        layers = [nn.ConvTranspose2d(latent_dim + self.condition.extra_dim, widths[0], START_SIZE[image_size], 1, 0, bias=False),
                  nn.BatchNorm2d(widths[0]), nn.ReLU()]
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers += [nn.ConvTranspose2d(w_in, w_out, 4, 2, 1, bias=False), nn.BatchNorm2d(w_out), nn.ReLU()]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers).apply(_dcgan_init)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.condition(z, labels)  # (B, L) -> (B, L + E)
        return self.net(h[:, :, None, None])  # (B, L + E) -> (B, L + E, 1, 1) -> (B, C, H, W)


class MinibatchStd(nn.Module):
    """`(B, C, H, W) -> (B, C + 1, H, W)`: appends the mean over (C, H, W) of the per-feature standard deviation
    within groups of `group_size` examples (Karras et al. 2018, sec. 3), the same value for each group's members.
    When B is not a multiple of the group size (an epoch's last batch), the groups shrink to the largest divisor of B
    below it."""

    def __init__(self, group_size: int = 4):
        super().__init__()
        if group_size < 2:
            raise ConfigError(f"minibatch_std group_size must be >= 2 (a standard deviation needs two examples), got {group_size}")
        self.group_size = group_size

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, c, height, width = h.shape
        g = min(self.group_size, b)
        while b % g:
            g -= 1
        groups = h.view(g, b // g, c, height, width)  # member i of group j is example i * (b // g) + j
        std = (groups.var(dim=0, unbiased=False) + 1e-8).sqrt()  # (B/g, C, H, W); a group of one gives 1e-4
        stat = std.mean(dim=(1, 2, 3))  # (B/g,)
        stat = stat.repeat(g)[:, None, None, None].expand(b, 1, height, width)  # back to each member: (B, 1, H, W)
        return torch.cat([h, stat], dim=1)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)  # one group: normalizes each example over (C, H, W)
    return nn.Identity()


class DCGANDiscriminator(nn.Module):
    """`x (B, channels, image_size, image_size), labels (B,) or None -> logit (B,)`; `(B // pack,)` with packs."""

    def __init__(
        self,
        channels: int = 1,
        image_size: ImageSize = 28,
        width: int = 64,
        norm: Literal["batch", "layer", "none"] = "batch",
        spectral_norm: bool = False,
        num_classes: int | None = None,
        minibatch_std: int = 0,
        pack: int = 1,
    ):
        super().__init__()
        _check(image_size, channels, width)
        if pack < 1:
            raise ConfigError(f"DCGAN discriminator pack is the number of examples D scores jointly (1: off), got {pack}")
        if pack > 1 and num_classes is not None:
            raise ConfigError("DCGAN discriminator pack (PacGAN) applies to unconditional discriminators; set pack: 1 "
                              "or num_classes: null")
        self.pack = pack
        if norm not in ("batch", "layer", "none"):
            raise ConfigError(f"DCGAN discriminator norm must be 'batch', 'layer' or 'none', got {norm!r}")
        self.num_classes = num_classes

        def conv(c_in: int, c_out: int) -> nn.Module:
            layer = _dcgan_init(nn.Conv2d(c_in, c_out, 4, 2, 1))
            return sn(layer) if spectral_norm else layer

        k = UPSAMPLINGS[image_size]
        widths = [width * 2**i for i in range(k)]  # e.g. [w, 2w, 4w] for 32x32
        layers = [conv(channels * pack, widths[0]), nn.LeakyReLU(0.2)]  # no norm on the first layer (Radford et al. 2016)
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers += [conv(w_in, w_out), _dcgan_init(_norm(norm, w_out)), nn.LeakyReLU(0.2)]
        if minibatch_std < 0:
            raise ConfigError(f"DCGAN discriminator minibatch_std is a group size (0: off), got {minibatch_std}")
        if minibatch_std:
            layers.append(MinibatchStd(minibatch_std))
        self.features = nn.Sequential(*layers)
        out_channels = widths[-1] + (1 if minibatch_std else 0)
        self.head = ProjectionHead(out_channels * START_SIZE[image_size] ** 2, num_classes, spectral_norm)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.pack > 1:  # (B, C, H, W) -> (B // m, m C, H, W): examples m k .. m k + m - 1 form pack k
            b, c, h, w = x.shape
            x = x[: b - b % self.pack].reshape(b // self.pack, self.pack * c, h, w)
        phi = self.features(x).flatten(1)  # (B, C, H, W) -> (B, C', s, s) -> (B, C'*s*s)
        return self.head(phi, labels)
