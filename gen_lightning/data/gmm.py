"""2-D Gaussian mixtures: synthetic, never downloaded, with an exact density.

Presets (../shared/DESIGN.md):
  - `ring8`: 8 equal modes on a circle of radius 2, std 0.02;
  - `grid25`: 5x5 modes at {-4, -2, 0, 2, 4}^2, std 0.05.
Every split is a fixed set of samples drawn from its own seed, so a run is reproducible.
Batches are `(x (B, 2), component (B,))`: the component lets metrics be exact. The data is
unlabeled for conditional models (`num_classes` is None).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch.utils.data import DataLoader

from gen_lightning.data.base import ResumableDataModule, TensorPairDataset, make_loader, predict_loader
from gen_lightning.errors import ConfigError


class GaussianMixture:
    """Isotropic 2-D Gaussian mixture with means (K, 2), stds (K,) and weights (K,)."""

    def __init__(self, means: torch.Tensor, stds: torch.Tensor, weights: torch.Tensor):
        means, stds, weights = (torch.as_tensor(t, dtype=torch.float64) for t in (means, stds, weights))
        k = means.shape[0]
        if means.ndim != 2 or means.shape[1] != 2:
            raise ConfigError(f"GMM means must have shape (K, 2), got {tuple(means.shape)}")
        if stds.shape != (k,) or weights.shape != (k,):
            raise ConfigError(
                f"GMM stds and weights need one value per mode ({k}), got {tuple(stds.shape)} and {tuple(weights.shape)}"
            )
        if (stds <= 0).any():
            raise ConfigError(f"GMM stds must be > 0, got {stds.tolist()}")
        if (weights < 0).any() or weights.sum() <= 0:
            raise ConfigError(f"GMM weights must be >= 0 with a positive sum, got {weights.tolist()}")
        self.means, self.stds, self.weights = means, stds, weights / weights.sum()

    @classmethod
    def preset(cls, name: Literal["ring8", "grid25"]) -> "GaussianMixture":
        if name == "ring8":
            angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
            means = 2.0 * torch.stack([angles.cos(), angles.sin()], dim=1)
            return cls(means, torch.full((8,), 0.02, dtype=torch.float64), torch.ones(8))
        if name == "grid25":
            coords = torch.tensor([-4.0, -2.0, 0.0, 2.0, 4.0], dtype=torch.float64)
            means = torch.cartesian_prod(coords, coords)  # (25, 2)
            return cls(means, torch.full((25,), 0.05, dtype=torch.float64), torch.ones(25))
        raise ConfigError(f"unknown GMM preset {name!r}; use 'ring8', 'grid25' or explicit means/stds/weights")

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """n samples (n, 2) float32 and their components (n,) long."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, 2, dtype=torch.float64, generator=generator)
        x = self.means[comp] + self.stds[comp, None] * noise
        return x.float(), comp

    def component_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log(w_k N(x; mu_k, s_k^2 I)) for every component: (n, 2) -> (n, K), float64."""
        x = x.to(torch.float64)
        sq = (x[:, None, :] - self.means[None]).pow(2).sum(-1)  # (n, K)
        var = self.stds.pow(2)
        log_norm = -math.log(2 * math.pi) - 2 * self.stds.log()  # 2-D isotropic normalizer
        return self.weights.log() + log_norm - 0.5 * sq / var

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log density of each point: (n, 2) -> (n,), float64."""
        return torch.logsumexp(self.component_log_prob(x), dim=1)

    def nearest_mode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Index of the nearest mean and the distance to it, in units of that mode's std."""
        d = torch.cdist(x.to(torch.float64), self.means)  # (n, K)
        dist, idx = d.min(dim=1)
        return idx, dist / self.stds[idx]


class GMMDataModule(ResumableDataModule):
    """Fixed train/val/test sample sets from a 2-D Gaussian mixture."""

    def __init__(
        self,
        preset: Literal["ring8", "grid25"] | None = "ring8",
        means: list[list[float]] | None = None,
        stds: list[float] | None = None,
        weights: list[float] | None = None,
        n_train: int = 50_000,
        n_val: int = 2_500,
        n_test: int = 2_500,
        batch_size: int = 256,
        seed: int = 0,
        predict_size: int = 2_500,
    ):
        super().__init__()
        if means is not None:
            k = len(means)
            self.gmm = GaussianMixture(
                torch.tensor(means), torch.tensor(stds if stds is not None else [0.05] * k), torch.tensor(weights or [1.0] * k)
            )
        elif preset is not None:
            self.gmm = GaussianMixture.preset(preset)
        else:
            raise ConfigError("GMMDataModule needs a preset ('ring8' or 'grid25') or explicit means")
        for name, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
            if n < 1:
                raise ConfigError(f"{name} must be >= 1, got {n}; the GMM split would be empty")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.preset = preset if means is None else "custom"
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self.batch_size = batch_size
        self.seed = seed
        self.predict_size = predict_size
        self.binarize = "none"
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    data_shape = (2,)
    num_classes = None
    value_range = None

    @property
    def dataset_name(self) -> str:
        return f"GMM-{self.preset}"

    def setup(self, stage: str | None = None) -> None:
        if self._splits:
            return
        for offset, (name, n) in enumerate(self.sizes.items()):
            g = torch.Generator().manual_seed(self.seed * 1000 + offset)
            self._splits[name] = self.gmm.sample(n, generator=g)

    def split(self, name: str) -> TensorPairDataset:
        self.setup()
        return TensorPairDataset(*self._splits[name])

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        return make_loader(self.split(name), self.batch_size, shuffle, self.seed)

    def train_dataloader(self) -> DataLoader:
        return self.train_loader(self.split("train"), self.seed)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return predict_loader(self.predict_size, self.batch_size)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """The true log density, for KL(data || model)."""
        return self.gmm.log_prob(x.cpu())

    def to_uint8(self, x: torch.Tensor) -> torch.Tensor:
        raise ConfigError("GMM samples are 2-D points, not images; save them as float")

    def describe(self) -> dict:
        return {
            "dataset": self.dataset_name,
            "data_shape": [2],
            "num_components": self.gmm.num_components,
            "n_test": self.sizes["test"],
        }
