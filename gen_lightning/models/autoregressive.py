"""Autoregressive models: NADE, MADE and Gated PixelCNN, trained by exact maximum likelihood.

  log p(x) = sum_d log p(x_d | x_<d)

The injected `net` maps x to the parameters of all D conditionals in one pass, the d-th
depending only on the dimensions before d in its order (masks or shifts; the tests check
this by Jacobian). The injected `Likelihood` (gen_lightning.likelihoods: Bernoulli, Categorical256, DiscretizedLogistic, MixtureOfGaussians, ...)
turns those parameters into log-probabilities and draws. So `log_prob(x)` is exact (nats per
example), and `sample` is ancestral: D network evaluations, one per dimension, in eval mode.

A net keeps this contract:
  - `net(x)` (and `net(x, mask)` when `net.num_masks > 1`): `(B, *data_shape)` -> the
    parameters, `(B, P*D)` or `(B, P*C, H, W)`, parameter-major (see likelihoods.py);
  - `net.sample(n, likelihood, generator)`: n ancestral draws of shape `(n, *data_shape)`;
  - `net.num_masks`: MADE's number of orderings/connectivities (1 for NADE and PixelCNN).
    Training uses mask `global_step % num_masks`; validation and test average the masks'
    probabilities, log p(x) = log mean_m p_m(x) (MADE sec. 4.2), and `sample` draws from
    that mixture.

Metrics: `val/loss` and `test/nll_nats` are -log p(x) per example in nats. For 8-bit images
with a discrete likelihood `test/bpd` = nll / (D ln 2) (DESIGN.md). On data with an exact
density (GMM) `test/kl_data_model` = E_data[log p_data(x) - log p_model(x)].
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from gen_lightning.errors import ConfigError
from gen_lightning.likelihoods import Categorical256, Likelihood, MixtureOfGaussians
from gen_lightning.models.base import GenerativeModel, eval_mode

# Categorical256 and MixtureOfGaussians live in gen_lightning.likelihoods; configs and checkpoints of earlier
# versions name them here.
__all__ = ["AutoregressiveModel", "Categorical256", "MixtureOfGaussians"]


class AutoregressiveModel(GenerativeModel):
    """Exact-likelihood training of an injected autoregressive `net` with conditionals `likelihood`.

    `scheduler`: an optional learning-rate schedule, stepped once per epoch (`scheduler_interval: step`: every step).
    """

    def __init__(
        self,
        net: nn.Module,
        likelihood: Likelihood,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        predict_seed: int = 1234,
    ):
        super().__init__(predict_seed=predict_seed)
        self.save_hyperparameters()
        self.net, self.likelihood = net, likelihood
        self.num_masks = int(getattr(net, "num_masks", 1))
        self.optimizer_callable, self.scheduler_callable = optimizer, scheduler
        self.scheduler_interval = scheduler_interval
        self.param_shape: tuple[int, ...] | None = None

    # ---- the model --------------------------------------------------------------------
    def params(self, x: torch.Tensor, mask: int = 0) -> torch.Tensor:
        """Parameters of all D conditionals, `(B, *param_shape)`, in float32, for mask `mask` (MADE)."""
        out = self.net(x, mask) if self.num_masks > 1 else self.net(x)
        return out.float().reshape(x.shape[0], *self.param_shape)  # (B, P*D) or (B, P*C, H, W) -> (B, *param_shape)

    def log_prob_one_mask(self, x: torch.Tensor, mask: int = 0) -> torch.Tensor:
        """log p_m(x) = sum_d log p_m(x_d | x_<d) per example (nats) under one mask: `(B,)`."""
        return self.likelihood.log_prob(self.params(x, mask), x)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) per example in nats, `(B,)`: log mean_m p_m(x) over the net's masks (one for NADE/PixelCNN)."""
        log_p = torch.stack([self.log_prob_one_mask(x, m) for m in range(self.num_masks)])  # (M, B)
        return torch.logsumexp(log_p, dim=0) - math.log(self.num_masks)

    def bits_per_dim(self, nll: torch.Tensor) -> torch.Tensor | None:
        """nll / (D ln 2) for a discrete likelihood of 8-bit data (DESIGN.md); None for other data."""
        return nll / (math.prod(self.data_shape) * math.log(2)) if self._reports_bpd() else None

    # ---- training, validation and test ------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, _ = batch
        mask = self.global_step % self.num_masks  # order/connectivity-agnostic training (MADE sec. 4.2)
        loss = -self.log_prob_one_mask(x, mask).mean()
        self.log_step({"train/loss": loss})
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x, _ = batch
        nll = -self.log_prob(x)
        self.log("val/loss", nll.mean(), prog_bar=True, batch_size=x.shape[0])

    def configure_optimizers(self):
        return self.optimizers_with_scheduler(self.optimizer_callable, self.parameters(), self.scheduler_callable,
                                              self.scheduler_interval)

    # ---- sampling -----------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """n ancestral samples `(n, *data_shape)` drawn with `generator` in eval mode: D network evaluations."""
        self.check_sample_args(n, labels)
        with eval_mode(self):
            x = self.net.sample(n, self.likelihood, generator=generator)
        return x.view(n, *self.data_shape)

    # ---- data contract ----------------------------------------------------------------
    def check_data(self, dm) -> None:
        """The conditionals must fit the data, and the net must read the data and output their parameters."""
        self.likelihood.check(dm)
        data_shape = tuple(dm.data_shape)
        need = self.likelihood.param_shape(data_shape)
        out = self.probe(self.net, lambda: self.net(torch.zeros(2, *data_shape, device=self.device)),
                         f"{type(self.net).__name__} cannot read data of shape {data_shape}",
                         "set the net's in_shape (or in_channels/image_size) to the data's shape")
        if out[0].numel() != math.prod(need):
            raise ConfigError(
                f"{type(self.net).__name__} outputs {out[0].numel()} values per example but {type(self.likelihood).__name__} "
                f"needs {math.prod(need)} ({self.likelihood.params_per_channel} per dimension of {data_shape}); "
                f"set the net's params_per_dim/params_per_channel to {self.likelihood.params_per_channel}"
            )

    def bind_data(self, dm) -> None:
        super().bind_data(dm)
        self.param_shape = self.likelihood.param_shape(self.data_shape)
        self.network_evaluations_per_sample = math.prod(self.data_shape)  # one per conditional

    def _reports_bpd(self) -> bool:
        return len(self.data_shape) == 3 and self.likelihood.discrete and self.data_info.get("binarize") == "none"

    # ---- what the evaluation callbacks read (callbacks.DensityMetrics, MetricsWriter) ----------
    density_kind = "exact"  # the product of the D conditionals

    @property
    def omitted_metrics(self) -> dict[str, str]:
        if self._reports_bpd():
            return {}
        return {"test/bpd": "binarized images: NLL is reported in nats per image (DESIGN.md)" if len(self.data_shape) == 3
                else f"{math.prod(self.data_shape)}-D continuous data: bits/dim applies to 8-bit images"}

    @property
    def metric_conventions(self) -> dict[str, str]:
        masks = (f"; the average of the probabilities of {self.num_masks} masks (orders/connectivities): "
                 "log mean_m p_m(x)" if self.num_masks > 1 else "")
        conventions = {
            "likelihood": self.likelihood.describe(),
            "test/nll_nats": f"exact -log p(x) per example in nats, the sum of the D conditionals' -log p{masks}",
        }
        if "binarize_convention" in self.data_info and self.data_info.get("binarize") != "none":
            conventions["binarization"] = self.data_info["binarize_convention"]
        if self._reports_bpd():
            conventions["bits_per_dim"] = f"nll / (D ln 2), D = {math.prod(self.data_shape)}: a discrete likelihood of 8-bit data"
        return conventions
