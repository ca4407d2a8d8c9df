"""A residual MLP denoiser for low-dimensional data (2-D Gaussian mixtures), conditioned on t.

`forward(x (B, dim), t (B,) float, labels (B,) long | None) -> (B, dim)`.

- `t` is continuous time in [0, 1], embedded sinusoidally as in the U-Net (unet.timestep_embedding,
  the nets' one time convention) and passed through a 2-layer MLP. DDPM passes step i of T as
  i / T; NCSN the fraction of its log-sigma range; flow matching its t.
- With `num_classes` set, labels are required and the index `num_classes` is the "no label"
  null token for classifier-free guidance.
- Optional Fourier features of x (Tancik et al. 2020): with `fourier_octaves` = L > 0 the input is
  [x, sin(f_k x), cos(f_k x)] for f_k = 2 pi 2^k / `fourier_wavelength`, k = 0..L-1 (wavelengths 8, 4,
  2, ... by default, for data spread over a few units). A plain MLP of the coordinates learns the fine
  structure of sharp modes slowly (spectral bias); measured on grid25 with configs/ddpm_gmm.yaml
  (2,940 steps, DDIM-50): 50% of the samples within 3 std of a mode without, 96% with 6 octaves
  (docs/results/diffusion.md).
- Body: Linear(dim (+ 2 dim L) -> hidden), then `depth` residual blocks h + W2 SiLU(W1 SiLU(h) + E emb), then
  SiLU -> Linear(hidden -> dim) initialized at zero, so the untrained net outputs 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gen_lightning.errors import ConfigError
from gen_lightning.nets.unet import check_labels, timestep_embedding


class _Block(nn.Module):
    def __init__(self, hidden: int, emb_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden, hidden)
        self.emb_proj = nn.Linear(emb_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(F.silu(self.fc1(F.silu(h)) + self.emb_proj(emb)))


class DenoiserMLP(nn.Module):
    def __init__(
        self,
        dim: int = 2,
        hidden: int = 256,
        depth: int = 4,
        time_embed_dim: int = 128,
        num_classes: int | None = None,
        fourier_octaves: int = 0,
        fourier_wavelength: float = 8.0,
    ):
        super().__init__()
        if fourier_octaves < 0 or fourier_wavelength <= 0:
            raise ConfigError(f"need fourier_octaves >= 0 and fourier_wavelength > 0, got {fourier_octaves}, {fourier_wavelength}")
        freqs = 2 * math.pi * 2.0 ** torch.arange(fourier_octaves, dtype=torch.float32) / fourier_wavelength
        self.register_buffer("freqs", freqs, persistent=False)  # (L,)
        if dim < 1 or hidden < 1 or depth < 1 or time_embed_dim < 2:
            raise ConfigError(f"dim, hidden, depth must be >= 1 and time_embed_dim >= 2, got {dim}, {hidden}, {depth}, {time_embed_dim}")
        if num_classes is not None and num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2 (or null for an unconditional net), got {num_classes}")
        self.dim, self.time_embed_dim, self.num_classes = dim, time_embed_dim, num_classes
        self.time_mlp = nn.Sequential(nn.Linear(time_embed_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.class_embed = nn.Embedding(num_classes + 1, hidden) if num_classes is not None else None
        self.inp = nn.Linear(dim * (1 + 2 * fourier_octaves), hidden)
        self.blocks = nn.ModuleList(_Block(hidden, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dim) -> (B, dim (1 + 2 L)): x, then sin and cos of every coordinate at every frequency."""
        if len(self.freqs) == 0:
            return x
        angles = (x[:, :, None] * self.freqs).flatten(1)  # (B, dim, L) -> (B, dim * L)
        return torch.cat([x, angles.sin(), angles.cos()], dim=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"DenoiserMLP expects (B, {self.dim}), got {tuple(x.shape)}")
        check_labels(self.num_classes, labels, "DenoiserMLP")
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        emb = F.silu(self.time_mlp(timestep_embedding(t, self.time_embed_dim)))  # (B,) -> (B, hidden)
        if self.class_embed is not None:
            emb = emb + self.class_embed(labels)
        h = self.inp(self.features(x))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(F.silu(h))
