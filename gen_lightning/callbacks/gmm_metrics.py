"""`gen test` on GMM data: mode coverage, high-quality fraction and reverse KL of model samples."""

from __future__ import annotations

import lightning as L
import torch

from gen_lightning.errors import ConfigError
from gen_lightning.metrics.gmm import gmm_mode_metrics


class GMMMetrics(L.Callback):
    """At the end of `gen test`, draw `num_samples` (2,500 by DESIGN.md) with a fixed seed and log the mode metrics."""

    def __init__(self, num_samples: int = 2500, seed: int = 0):
        if num_samples < 1:
            raise ConfigError(f"GMMMetrics num_samples must be >= 1, got {num_samples}")
        self.num_samples, self.seed = num_samples, seed

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "test" and not hasattr(trainer.datamodule, "gmm"):
            raise ConfigError("GMMMetrics needs a GMMDataModule; remove the callback for other data")

    @torch.no_grad()
    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        g = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        samples = pl_module.sample(self.num_samples, generator=g)
        metrics = gmm_mode_metrics(samples, trainer.datamodule.gmm)
        metrics.pop("num_modes")  # a property of the data, not of the model
        for name, value in metrics.items():
            pl_module.log(f"test/{name}", float(value), sync_dist=False)
