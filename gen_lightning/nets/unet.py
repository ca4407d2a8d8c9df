"""The DDPM U-Net (Ho et al. 2020, appendix B; the PixelCNN++-style backbone), sized by config.

- Residual blocks: GroupNorm -> SiLU -> 3x3 conv, plus the projected time (and class) embedding,
  then GroupNorm -> SiLU -> dropout -> 3x3 conv, with a 1x1 shortcut when channels change.
- Time conditioning: continuous time `t` in [0, 1], a float tensor of shape (B,) (the convention
  of every time-conditioned net here, see `timestep_embedding`), embedded sinusoidally
  (Transformer positional encoding) and passed through a 2-layer MLP; the result is added in every
  residual block. DDPM passes its step index i as i / T, NCSN the fraction of the log-sigma range,
  flow matching its own t.
- Optional class conditioning: `num_classes + 1` embeddings; index `num_classes` is the "no
  label" null token used for classifier-free guidance (Ho & Salimans 2022). The class embedding
  is added to the time embedding. Its rows start at N(0, `label_embed_std`^2): 1, PyTorch's and ADM's
  default, suits a few classes, whose rows train on every step; with many (a self-guided model's 200
  clusters, each in a quarter of the batches of 64) a unit-scale random row drowns the time embedding
  for hundreds of steps, so those recipes start small (0.02, DiT's label embedding).
- Self-attention (single head, with GroupNorm and a residual) at each resolution listed in
  `attention_resolutions`, down- and upsampling with skip connections, and a zero-initialized
  final conv so that the untrained network outputs 0.

Resolutions halve at each level after the first: 28 -> 14 -> 7 with `channel_mults=[1, 2, 2]`,
32 -> 16 -> 8 -> 4 with `[1, 2, 2, 2]`. Every resolution but the last must be even.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gen_lightning.errors import ConfigError


TIME_RESOLUTION = 1000.0  # the embedding reads 1000 t: its periods resolve the 1000 steps of Ho et al.'s T = 1000


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of continuous time t in [0, 1]: (B,) -> (B, dim) = [cos(1000 t w_i), sin(1000 t w_i)],
    w_i = max_period^(-i/half). This is the one time convention of the nets (UNet, DenoiserMLP): each family maps its
    own time onto [0, 1] (DDPM: step i of T as i / T), and none scales it for the net."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (TIME_RESOLUTION * t.float())[:, None] * freqs[None]  # (B, 1) * (1, half) -> (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def check_labels(num_classes: int | None, labels: torch.Tensor | None, who: str) -> None:
    """A class-conditional net needs labels (num_classes = the null token) and an unconditional one refuses them."""
    if num_classes is None and labels is not None:
        raise ValueError(f"{who} was built without num_classes, so it takes no labels")
    if num_classes is not None and labels is None:
        raise ValueError(f"{who} was built with num_classes={num_classes}; pass labels (use {num_classes} for 'no label')")


def _norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with at least 4 channels a group where possible: 32 groups of 4 at DDPM's 128 channels, 4 groups at 16.

    The time embedding is added per channel just before `norm2`; with one channel a group (the old rule,
    gcd(32, C) groups, at C = 16 or 32) that normalization subtracted it again and the net could not see t.
    """
    return nn.GroupNorm(math.gcd(32, max(channels // 4, 1)), channels)


class ResBlock(nn.Module):
    """x (B, C_in, H, W), emb (B, E) -> (B, C_out, H, W)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_ch)
        self.norm2 = _norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # the block starts as the identity (shortcut)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb_proj(F.silu(emb))[:, :, None, None]  # (B, C_out) -> (B, C_out, 1, 1)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions, with a residual connection."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        # the 1x1 convolutions applied as matrix products over the tokens (same weights, faster on CPUs)
        q, k, v = F.linear(tokens, self.qkv.weight.flatten(1), self.qkv.bias).chunk(3, dim=2)  # each (B, HW, C)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, HW, C)
        out = F.linear(out, self.proj.weight.flatten(1), self.proj.bias)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """The residual blocks (each optionally followed by attention) of one resolution."""

    def __init__(self, in_chs: list[int], out_ch: int, emb_dim: int, dropout: float, attention: bool):
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(c, out_ch, emb_dim, dropout) for c in in_chs)
        self.attns = nn.ModuleList(AttentionBlock(out_ch) if attention else nn.Identity() for _ in in_chs)


class UNet(nn.Module):
    """`forward(x (B, C, H, W), t (B,) float, labels (B,) long | None) -> (B, C, H, W)`.

    `t` is continuous time in [0, 1] (`timestep_embedding`; DDPM passes step i of T as i / T, NCSN
    its log-sigma fraction). With `num_classes` set, `labels` are required; the index `num_classes`
    means "no label" (classifier-free guidance's null token).
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        channels: int = 64,
        channel_mults: list[int] = [1, 2, 2],  # noqa: B006 - jsonargparse shows the default
        num_res_blocks: int = 2,
        attention_resolutions: list[int] = [14],  # noqa: B006
        dropout: float = 0.1,
        num_classes: int | None = None,
        out_channels: int | None = None,
        time_embed_dim: int | None = None,
        label_embed_std: float = 1.0,
    ):
        super().__init__()
        self._check(in_channels, image_size, channels, channel_mults, num_res_blocks, attention_resolutions, dropout, num_classes)
        if label_embed_std < 0:
            raise ConfigError(f"label_embed_std must be >= 0 (1: PyTorch's default, 0.02: DiT's), got {label_embed_std}")
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        self.out_channels = out_channels or in_channels
        emb_dim = time_embed_dim or 4 * channels
        self.channels = channels
        self.time_mlp = nn.Sequential(nn.Linear(channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_embed = nn.Embedding(num_classes + 1, emb_dim) if num_classes is not None else None
        if self.class_embed is not None and label_embed_std != 1.0:
            nn.init.normal_(self.class_embed.weight, std=label_embed_std)

        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        # Down path: remember the channels of every skip connection (conv_in, each block, each downsample).
        skip_chs, ch, res = [channels], channels, image_size
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        for i, mult in enumerate(channel_mults):
            out = channels * mult
            level = Level([ch] + [out] * (num_res_blocks - 1), out, emb_dim, dropout, res in attention_resolutions)
            self.down.append(level)
            skip_chs += [out] * num_res_blocks
            ch = out
            last = i == len(channel_mults) - 1
            self.downsample.append(nn.Identity() if last else Downsample(ch))
            if not last:
                skip_chs.append(ch)
                res //= 2
        self.mid1 = ResBlock(ch, ch, emb_dim, dropout)
        self.mid_attn = AttentionBlock(ch)
        self.mid2 = ResBlock(ch, ch, emb_dim, dropout)
        # Up path: num_res_blocks + 1 blocks per level, each consuming one skip connection.
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, mult in reversed(list(enumerate(channel_mults))):
            out = channels * mult
            in_chs = []
            for _ in range(num_res_blocks + 1):
                in_chs.append(ch + skip_chs.pop())
                ch = out
            self.up.append(Level(in_chs, out, emb_dim, dropout, res in attention_resolutions))
            self.upsample.append(Upsample(ch) if i > 0 else nn.Identity())
            if i > 0:
                res *= 2
        self.norm_out = _norm(ch)
        self.conv_out = nn.Conv2d(ch, self.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # the untrained net predicts 0
        nn.init.zeros_(self.conv_out.bias)

    @staticmethod
    def _check(in_channels, image_size, channels, channel_mults, num_res_blocks, attention_resolutions, dropout, num_classes):
        if in_channels < 1 or channels < 1 or num_res_blocks < 1:
            raise ConfigError(f"in_channels, channels and num_res_blocks must be >= 1, got {in_channels}, {channels}, {num_res_blocks}")
        if not channel_mults or any(m < 1 for m in channel_mults):
            raise ConfigError(f"channel_mults must be a non-empty list of positive ints, got {channel_mults}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        if num_classes is not None and num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2 (or null for an unconditional net), got {num_classes}")
        resolutions, res = [], image_size
        for i in range(len(channel_mults)):
            resolutions.append(res)
            if i < len(channel_mults) - 1:
                if res % 2:
                    raise ConfigError(
                        f"image_size {image_size} cannot be halved {len(channel_mults) - 1} times (reaches odd {res}); "
                        "use fewer channel_mults"
                    )
                res //= 2
        bad = [r for r in attention_resolutions if r not in resolutions]
        if bad:
            raise ConfigError(f"attention_resolutions {bad} are not among this U-Net's resolutions {resolutions}")

    def embed(self, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        check_labels(self.num_classes, labels, "the U-Net")
        emb = self.time_mlp(timestep_embedding(t, self.channels))  # (B,) -> (B, emb_dim)
        if self.class_embed is not None:
            emb = emb + self.class_embed(labels)
        return emb

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[1:] != (self.in_channels, self.image_size, self.image_size):
            raise ValueError(f"the U-Net expects (B, {self.in_channels}, {self.image_size}, {self.image_size}), got {tuple(x.shape)}")
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        emb = self.embed(t, labels)
        h = self.conv_in(x)
        skips = [h]
        for level, down in zip(self.down, self.downsample):
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(h, emb))
                skips.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for level, up in zip(self.up, self.upsample):
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(torch.cat([h, skips.pop()], dim=1), emb))  # (B, C + C_skip, H, W)
            h = up(h)
        return self.conv_out(F.silu(self.norm_out(h)))
