"""Sample quality during fit: a metric every N epochs, logged under `val/`, so quality-vs-step curves show in TensorBoard.

- `metric: classifier_fid` (MNIST): Fréchet distance in the domain classifier's feature
  space between `num_samples` samples and as many validation images; conditional models
  also get `val/label_accuracy`.
- `metric: gmm_modes` (GMM data): `val/modes_covered`, `val/high_quality_fraction` and
  `val/reverse_kl_modes` of `num_samples` samples (2,500 by DESIGN.md).

Each evaluation also logs `val/fit_minutes`: the wall-clock minutes of `gen fit` so far, not
counting these evaluations themselves, so that quality can be plotted against CPU minutes (the
MNIST league's quality-against-time figure). A fit without sample metrics gets the same clock from
`FitClock`, for its validation loss (PixelCNN's exact NLL, for one).

When EMA is on (Lightning's EMAWeightAveraging), the average is swapped into the model for
the whole validation epoch; `gen` orders EMA after this callback, so the samples come from
the EMA weights.
"""

from __future__ import annotations

import time
from typing import Literal

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn
import torch

from gen_lightning.callbacks.sample_metrics import SAMPLE_BATCH
from gen_lightning.errors import ConfigError
from gen_lightning.metrics.classifier import (
    classifier_features,
    feature_moments,
    frechet_distance,
    label_accuracy,
    load_classifier,
)
from gen_lightning.metrics.gmm import gmm_mode_metrics


class FitClock(L.Callback):
    """Logs `val/fit_minutes` after every validation (not the sanity check): the wall-clock minutes of `gen fit` so far,
    less the seconds a subclass spends on its own evaluations. On its own it times fits that measure their quality by
    the validation loss and score no samples; SampleQuality extends it, so a fit takes one or the other.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        other = next((cb for cb in trainer.callbacks if isinstance(cb, FitClock) and cb is not self), None)
        if stage == "fit" and type(self) is FitClock and other is not None:
            raise ConfigError(f"FitClock: {type(other).__name__} already logs val/fit_minutes in this fit; drop the FitClock callback")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start, self._eval_seconds = time.perf_counter(), 0.0

    def fit_minutes(self) -> float:
        return (time.perf_counter() - self._fit_start - self._eval_seconds) / 60

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            pl_module.log("val/fit_minutes", self.fit_minutes(), sync_dist=False)


class SampleQuality(FitClock):
    def __init__(
        self,
        metric: Literal["classifier_fid", "gmm_modes"] = "classifier_fid",
        every_n_epochs: int = 5,
        num_samples: int = 2000,
        classifier_ckpt: str | None = None,
        batch_size: int = SAMPLE_BATCH,
        seed: int = 0,
    ):
        if every_n_epochs < 1 or num_samples < 2 or batch_size < 1:
            raise ConfigError(
                f"SampleQuality needs every_n_epochs >= 1, num_samples >= 2, batch_size >= 1; "
                f"got {every_n_epochs}, {num_samples}, {batch_size}"
            )
        self.metric, self.every_n_epochs, self.num_samples = metric, every_n_epochs, num_samples
        self.classifier_ckpt, self.batch_size, self.seed = classifier_ckpt, batch_size, seed
        self.real_moments = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        super().setup(trainer, pl_module, stage)
        dm = trainer.datamodule
        if self.metric == "gmm_modes" and not hasattr(dm, "gmm"):
            raise ConfigError("SampleQuality(metric='gmm_modes') needs a GMMDataModule; use classifier_fid for images")
        if self.metric == "classifier_fid":
            self.classifier = load_classifier(self.classifier_ckpt, map_location=pl_module.device)

    def _due(self, trainer: L.Trainer) -> bool:
        return not trainer.sanity_checking and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    @torch.no_grad()
    def _samples(self, pl_module) -> tuple[torch.Tensor, torch.Tensor | None]:
        g = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        labels = None
        if getattr(pl_module, "conditional", False):
            labels = torch.arange(self.num_samples, device=pl_module.device) % pl_module.num_classes
        chunks = []
        for start in range(0, self.num_samples, self.batch_size):
            part = None if labels is None else labels[start : start + self.batch_size]
            n = min(self.batch_size, self.num_samples - start)
            chunks.append(pl_module.sample(n, labels=part, generator=g).cpu())
        return torch.cat(chunks), None if labels is None else labels.cpu()

    def _real_moments(self, dm, value_range):
        if self.real_moments is None:  # the validation images do not change during a fit: featurize them once
            x = dm.convert(dm.split("val").x[: self.num_samples], train=False)
            self.real_moments = feature_moments(classifier_features(self.classifier, x, value_range, self.batch_size))
        return self.real_moments

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._due(trainer):
            return
        started, fit_minutes = time.perf_counter(), self.fit_minutes()
        samples, labels = self._samples(pl_module)
        bad = int((~torch.isfinite(samples.flatten(1))).any(1).sum())
        if bad:
            rank_zero_warn(f"SampleQuality: {bad} of {len(samples)} samples are not finite at step {trainer.global_step}; "
                           "the metrics of this epoch are NaN")
        if self.metric == "gmm_modes":
            metrics = gmm_mode_metrics(samples, trainer.datamodule.gmm)
            metrics.pop("num_modes")
        else:
            vr = pl_module.value_range
            mu_f, sigma_f = feature_moments(classifier_features(self.classifier, samples, vr, self.batch_size))
            metrics = {"classifier_fid": frechet_distance(mu_f, sigma_f, *self._real_moments(trainer.datamodule, vr))}
            if labels is not None:
                metrics["label_accuracy"] = label_accuracy(self.classifier, samples, labels, vr, self.batch_size)
        metrics["fit_minutes"] = fit_minutes
        for name, value in metrics.items():
            pl_module.log(f"val/{name}", float(value), sync_dist=False)
        self._eval_seconds += time.perf_counter() - started
