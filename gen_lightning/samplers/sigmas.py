"""The noise levels of a noise-conditional score network (NCSN, Song & Ermon 2019, sec. 4.1).

`GeometricSigmas` holds sigma_1 > sigma_2 > ... > sigma_L with a constant ratio
sigma_{i+1} / sigma_i = gamma = (sigma_min / sigma_max)^(1 / (L - 1)), i.e. log-sigmas evenly spaced.

How to choose them (Song & Ermon 2020, "Improved techniques", NCSNv2):
- Technique 1: sigma_1 about the largest Euclidean distance between two training points, so that
  Langevin at sigma_1 can travel between any two modes (grid25: 8*sqrt(2) = 11.3).
- Technique 2: gamma close enough to 1 that consecutive noise levels overlap,
  Phi(sqrt(2D)(gamma - 1) + 3 gamma) - Phi(sqrt(2D)(gamma - 1) - 3 gamma) ~ 0.5 for data of dimension D
  (`technique2_ratio_coverage` computes the left side).
- sigma_L well below the finest scale of the data (the GMM modes' std 0.02-0.05; pixel noise for images),
  so that the last level's samples are as sharp as the data.

A plain object (no nn.Module): the model moves `sigmas` to the data's device where it uses them.
"""

from __future__ import annotations

import math

import torch

from gen_lightning.errors import ConfigError


class GeometricSigmas:
    """sigma_i = sigma_max * gamma^(i-1), i = 1..L, from sigma_max down to sigma_min; `sigmas` is (L,) float32."""

    def __init__(self, sigma_max: float = 50.0, sigma_min: float = 0.01, num_levels: int = 232):
        if not sigma_min > 0:
            raise ConfigError(f"sigma_min must be > 0, got {sigma_min}")
        if not sigma_max > sigma_min:
            raise ConfigError(f"sigma_max must be > sigma_min, got sigma_max={sigma_max} and sigma_min={sigma_min}")
        if num_levels < 2:
            raise ConfigError(f"num_levels must be >= 2 (sigma_max and sigma_min), got {num_levels}")
        self.sigma_max, self.sigma_min, self.num_levels = float(sigma_max), float(sigma_min), int(num_levels)
        # exp of evenly spaced logs, computed in float64 so that the endpoints are exact in float32
        log_sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), num_levels, dtype=torch.float64)
        self.sigmas = log_sigmas.exp().float()  # (L,), descending

    @property
    def ratio(self) -> float:
        """gamma = sigma_{i+1} / sigma_i, the same for every i."""
        return (self.sigma_min / self.sigma_max) ** (1.0 / (self.num_levels - 1))

    def __len__(self) -> int:
        return self.num_levels

    def to(self, device: torch.device | str) -> torch.Tensor:
        """The (L,) sigmas on `device`."""
        return self.sigmas.to(device)

    def __repr__(self) -> str:
        return f"GeometricSigmas(sigma_max={self.sigma_max}, sigma_min={self.sigma_min}, num_levels={self.num_levels})"


def technique2_ratio_coverage(ratio: float, dim: int) -> float:
    """Phi(sqrt(2D)(gamma - 1) + 3 gamma) - Phi(sqrt(2D)(gamma - 1) - 3 gamma) (NCSNv2, Technique 2); aim for ~0.5."""
    shift = math.sqrt(2.0 * dim) * (ratio - 1.0)
    return _normal_cdf(shift + 3.0 * ratio) - _normal_cdf(shift - 3.0 * ratio)


def _normal_cdf(v: float) -> float:
    return 0.5 * (1.0 + math.erf(v / math.sqrt(2.0)))
