"""Autoregressive models: NADE, MADE and Gated PixelCNN, trained by exact maximum likelihood.

  log p(x) = sum_d log p(x_d | x_<d)

The injected `net` maps x to the parameters of all D conditionals in one pass, the d-th
depending only on the dimensions before d in its order (masks or shifts; the tests check
this by Jacobian). The injected `Likelihood` (gen_lightning.likelihoods, or the two below)
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

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from gen_lightning.errors import ConfigError
from gen_lightning.likelihoods import Likelihood, _is_8bit_image_in_unit_range
from gen_lightning.models.base import GenerativeModel, eval_mode

LOG_2PI = math.log(2 * math.pi)


# ---- conditionals that gen_lightning.likelihoods does not have ------------------------------


class Categorical256(Likelihood):
    """A 256-way softmax per subpixel (PixelRNN/PixelCNN, van den Oord et al. 2016): x = k/255, k in 0..255.

    `params` `(B, 256*C, *rest)`: logit of value k for channel c at index k*C + c.
    """

    params_per_channel = 256
    discrete = True

    def check(self, dm) -> None:
        if not _is_8bit_image_in_unit_range(dm):
            raise ConfigError(
                f"Categorical256 needs 8-bit images in [0, 1] (binarize='none', value_range '0,1') but {dm.dataset_name} has "
                f"shape {tuple(dm.data_shape)}, binarize={dm.binarize!r}, value_range={dm.value_range}; "
                "set the data's binarize: none and value_range: '0,1', or use Bernoulli for binarized images"
            )

    def describe(self) -> str:
        return "256-way categorical per subpixel: an exact probability of each 8-bit image; bits/dim = nll / (D ln 2)"

    def logits(self, params: torch.Tensor) -> torch.Tensor:
        return params.unflatten(1, (256, -1))  # (B, 256*C, *rest) -> (B, 256, C, *rest)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        k = torch.round(x * 255).long().clamp(0, 255)
        log_px = -F.cross_entropy(self.logits(params), k, reduction="none")  # (B, C, *rest)
        return log_px.flatten(1).sum(1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        values = torch.arange(256, device=params.device, dtype=params.dtype) / 255
        probs = self.logits(params).softmax(1)
        return torch.einsum("bk...,k->b...", probs, values)

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        logits = self.logits(params).movedim(1, -1)  # (B, C, *rest, 256)
        k = torch.multinomial(logits.reshape(-1, 256).softmax(-1), 1, generator=generator)  # (N, 1)
        return k.view(logits.shape[:-1]).float() / 255


class MixtureOfGaussians(Likelihood):
    """p(x_d | params) = sum_k pi_k N(x_d; mu_k, sigma_k^2), K components per dimension, for continuous data.

    `params` `(B, 3K*D)`: K mixture logits, K means and K raw log-stds per dimension (parameter-major).
    The log-std has a smooth floor at log(min_std), as the density is unbounded when sigma -> 0.
    Component k's mean is the net's output plus a fixed offset spread * ((2k + 1)/K - 1), evenly
    spaced in [-spread, spread]: a freshly initialized net puts every component near 0, and a
    1-D mixture whose components start together separates them slowly (on ring8, p(x1) stayed
    at 3 merged components after 600 steps, KL 2.1 nats; with the offsets, see tests/e2e).
    """

    discrete = False

    def __init__(self, num_components: int = 10, min_std: float = 1e-3, spread: float = 2.0):
        super().__init__()
        if num_components < 1:
            raise ConfigError(f"num_components must be >= 1, got {num_components}")
        if min_std <= 0:
            raise ConfigError(f"min_std must be > 0, got {min_std}")
        if spread < 0:
            raise ConfigError(f"spread must be >= 0, got {spread}; it spaces the components' initial means in [-spread, spread]")
        self.num_components = num_components
        self.params_per_channel = 3 * num_components
        self.min_log_std = math.log(min_std)
        k = torch.arange(num_components, dtype=torch.float32)
        self.register_buffer("mean_offsets", spread * ((2 * k + 1) / num_components - 1)[:, None])  # (K, 1)

    def check(self, dm) -> None:
        if len(dm.data_shape) == 3:
            raise ConfigError(
                f"MixtureOfGaussians is a density for continuous vectors but {dm.dataset_name} holds images of shape "
                f"{tuple(dm.data_shape)}; use Bernoulli for binarized images or Categorical256 for 8-bit images"
            )

    def describe(self) -> str:
        return f"mixture of {self.num_components} Gaussians per conditional (std floor {math.exp(self.min_log_std):g}, means offset evenly in [-spread, spread])"

    def components(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """log pi, mu, log sigma, each `(B, K, D)`."""
        logits, mu, raw = params.unflatten(1, (3, self.num_components, -1)).unbind(1)  # (B, 3K*D) -> 3 x (B, K, D)
        log_std = self.min_log_std + F.softplus(raw - self.min_log_std)
        return logits.log_softmax(1), mu + self.mean_offsets, log_std

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        log_pi, mu, log_std = self.components(params)
        x = x.flatten(1)[:, None]  # (B, D) -> (B, 1, D)
        log_normal = -0.5 * ((x - mu) * torch.exp(-log_std)) ** 2 - log_std - 0.5 * LOG_2PI
        return torch.logsumexp(log_pi + log_normal, dim=1).sum(1)  # (B, K, D) -> (B, D) -> (B,)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        log_pi, mu, _ = self.components(params)
        return (log_pi.exp() * mu).sum(1)

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        log_pi, mu, log_std = self.components(params)
        b, k, d = mu.shape
        pi = log_pi.exp().transpose(1, 2).reshape(b * d, k)  # (B, K, D) -> (B*D, K)
        which = torch.multinomial(pi, 1, generator=generator).view(b, 1, d)  # component per dimension
        eps = torch.randn(b, d, device=mu.device, dtype=mu.dtype, generator=generator)
        pick = lambda t: t.gather(1, which)[:, 0]  # (B, K, D) -> (B, D)
        return pick(mu) + pick(log_std).exp() * eps


# ---- the family's LightningModule -----------------------------------------------------------


class AutoregressiveModel(GenerativeModel):
    """Exact-likelihood training of an injected autoregressive `net` with conditionals `likelihood`.

    `scheduler`: an optional learning-rate schedule, stepped once per epoch.
    """

    def __init__(
        self,
        net: nn.Module,
        likelihood: Likelihood,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        predict_seed: int = 1234,
    ):
        super().__init__(predict_seed=predict_seed)
        self.save_hyperparameters()
        self.net, self.likelihood = net, likelihood
        self.num_masks = int(getattr(net, "num_masks", 1))
        self.optimizer_callable, self.scheduler_callable = optimizer, scheduler
        self.param_shape: tuple[int, ...] | None = None

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
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x, _ = batch
        nll = -self.log_prob(x)
        self.log("val/loss", nll.mean(), prog_bar=True, batch_size=x.shape[0])

    def configure_optimizers(self):
        return self.optimizers_with_scheduler(self.optimizer_callable, self.parameters(), self.scheduler_callable)

    # ---- sampling -----------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """n ancestral samples `(n, *data_shape)` drawn with `generator` in eval mode: D network evaluations."""
        self.check_sample_args(n, labels)
        with eval_mode(self):
            x = self.net.sample(n, self.likelihood, generator=generator)
        return x.view(n, *self.data_shape)
