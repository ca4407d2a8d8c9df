"""Normalizing flows: RealNVP (Dinh et al. 2017) and Glow (Kingma & Dhariwal 2018), trained by exact likelihood.

An injected invertible network maps data to z of the same shape with `forward(x) -> (z, logdet)`
and back with `inverse(z)`. With a standard-normal base, the change of variables gives

  log p(x) = log N(z; 0, I) + log|det dz/dx|   (RealNVP, eq. 3),

and training minimizes -log p(x) in nats per example.

8-bit images in [0, 1] (x = k/255) are dequantized uniformly: y = (k + u) / 256 with
u ~ U[0, 1)^D (Theis et al. 2016), so the density of y on [0, 1)^D bounds the probability of the
8-bit image, -log2 P(k)/D <= bpd = (nll_y + D ln 256) / (D ln 2) in expectation over u (DESIGN.md).
With `logit_alpha`, the flow models w = logit(alpha + (1 - 2 alpha) y) instead (RealNVP, sec. 4.1,
alpha = 0.05), and the Jacobian log|dw/dy| is added, so nll_y is still the density of y.
With a `dequantizer` (nets.flows.VariationalDequantizer), u is drawn from a learned q(u | x)
instead (Flow++, Ho et al. 2019), and the NLL becomes -[log p(y) - log q(u | x)], whose
expectation bounds the same quantity more tightly. 2-D data (GMM) is modeled as it is.

Sampling draws z ~ N(0, T^2 I) with temperature T (`sample_temperature`, Glow sec. 5) and
returns inverse(z), mapped back to 8-bit values in [0, 1] for images.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from gen_lightning import losses
from gen_lightning.errors import ConfigError
from gen_lightning.likelihoods import bits_per_dim, inverse_logit_transform, logit_transform, quantize, uniform_dequantize
from gen_lightning.models.base import GenerativeModel, eval_mode, shape_text


def _check_hparams(logit_alpha: float | None, sample_temperature: float) -> None:
    if logit_alpha is not None and not 0 < logit_alpha < 0.5:
        raise ConfigError(f"logit_alpha must be in (0, 0.5) or null, got {logit_alpha}; RealNVP uses 0.05")
    if sample_temperature <= 0:
        raise ConfigError(f"sample_temperature must be > 0, got {sample_temperature}; 1 samples the model itself")


class Flow(GenerativeModel):
    """A normalizing flow with an injected invertible `net` (`gen_lightning.nets.flows`).

    `net.forward(x) -> (z, logdet)` with z of x's shape, `net.inverse(z) -> x`.
    `dequantizer`: optional variational dequantization q(u | x) (`forward(x, generator) -> (u, log_q)`);
    None is uniform dequantization.
    `logit_alpha`: the logit preprocessing of images (null turns it off); ignored for 2-D data.
    `sample_temperature`: the default T of `sample()`; Glow shows T = 0.7 for its figures.
    `scheduler`: an optional learning-rate schedule, stepped once per epoch (`scheduler_interval: step`: every step).
    """

    sampling_options = ("predict_seed", "sample_temperature")

    log_grad_norm = True  # train/grad_norm, from the divergence guard (models/divergence.py)
    divergence_advice = "Lower the learning rate, or set trainer.gradient_clip_val"

    network_evaluations_per_sample = 1  # one pass of net.inverse

    def __init__(
        self,
        net: nn.Module,
        dequantizer: nn.Module | None = None,
        logit_alpha: float | None = 0.05,
        sample_temperature: float = 1.0,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        predict_seed: int = 1234,
    ):
        super().__init__(predict_seed=predict_seed)
        _check_hparams(logit_alpha, sample_temperature)
        self.save_hyperparameters()
        self.net, self.dequantizer = net, dequantizer
        self.logit_alpha, self.sample_temperature = logit_alpha, sample_temperature
        self.optimizer_callable, self.scheduler_callable = optimizer, scheduler
        self.scheduler_interval = scheduler_interval

    @property
    def is_image(self) -> bool:
        """8-bit images `(C, H, W)` are dequantized (and logit-transformed) before the flow; 2-D data is not."""
        return self.data_shape is not None and len(self.data_shape) == 3

    # ---- the density --------------------------------------------------------------------
    def dequantize(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """8-bit images -> y = (k + u)/256 and log q(u | x) per example (0 for uniform noise)."""
        if self.dequantizer is None:
            return uniform_dequantize(x, generator), x.new_zeros(x.shape[0])
        u, log_q = self.dequantizer(x, generator)
        return (torch.round(x * 255.0) + u) / 256.0, log_q

    def preprocess(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Data -> what the flow sees, and the terms added to its log-density per example.

        Images: dequantized y (logit-transformed with `logit_alpha`), and log|dw/dy| - log q(u | x).
        2-D data: as is, and 0.
        """
        if not self.is_image:
            return x, x.new_zeros(x.shape[0])
        y, log_q = self.dequantize(x, generator)
        if self.logit_alpha is None:
            return y, -log_q
        w, log_jacobian = logit_transform(y, self.logit_alpha)
        return w, log_jacobian - log_q

    def postprocess(self, w: torch.Tensor) -> torch.Tensor:
        """What the flow outputs -> the data's values: 8-bit images in [0, 1], 2-D data as is."""
        if not self.is_image:
            return w
        y = w if self.logit_alpha is None else inverse_logit_transform(w, self.logit_alpha)
        return quantize(y)

    def log_prob(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """log p(x) per example `(B,)`, nats: exact for 2-D data, of one dequantized draw y for images.

        With a variational dequantizer this is log p(y) - log q(u | x), the Flow++ bound for one u.
        """
        w, correction = self.preprocess(x, generator)
        z, logdet = self.net(w)
        return losses.standard_normal_log_prob(z.flatten(1).float()) + logdet.float() + correction.float()

    def bits_per_dim(self, nll: torch.Tensor) -> torch.Tensor | None:
        """(nll + D ln 256) / (D ln 2) for dequantized 8-bit images; None for continuous data."""
        return bits_per_dim(nll, math.prod(self.data_shape)) if self.is_image else None

    # ---- training, validation and test ------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, _ = batch
        nll = -self.log_prob(x)
        loss = nll.mean()
        self.log_step({"train/loss": loss} | ({"train/bpd": self.bits_per_dim(nll).mean()} if self.is_image else {}))
        return loss

    def _nll(self, x: torch.Tensor, batch_idx: int) -> torch.Tensor:
        """-log p(x) with the dequantization noise seeded by the batch index, so evaluations repeat exactly."""
        g = torch.Generator(device=self.device).manual_seed(batch_idx)
        return -self.log_prob(x, generator=g)

    def validation_step(self, batch, batch_idx: int) -> None:
        x, _ = batch
        nll = self._nll(x, batch_idx)
        self.log("val/loss", nll.mean(), prog_bar=True, batch_size=x.shape[0])
        if self.is_image:
            self.log("val/bpd", self.bits_per_dim(nll).mean(), batch_size=x.shape[0])

    def configure_optimizers(self):
        return self.optimizers_with_scheduler(self.optimizer_callable, self.parameters(), self.scheduler_callable,
                                              self.scheduler_interval)

    # ---- sampling -----------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        n: int,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        temperature: float | None = None,
    ) -> torch.Tensor:
        """n samples `(n, *data_shape)`: z ~ N(0, T^2 I) drawn with `generator`, then net.inverse in eval mode.

        T is `temperature`, or `sample_temperature` when it is None.
        """
        self.check_sample_args(n, labels)
        t = self.sample_temperature if temperature is None else temperature
        if t <= 0:
            raise ConfigError(f"temperature must be > 0, got {t}")
        z = t * torch.randn(n, *self.data_shape, device=self.device, generator=generator)
        with eval_mode(self.net):
            w = self.net.inverse(z)
        return self.postprocess(w.float())

    # ---- data contract ----------------------------------------------------------------
    def check_data(self, dm) -> None:
        """Images must be 8-bit values in [0, 1] (not binarized); the net must map the data's shape to itself."""
        data_shape = tuple(dm.data_shape)
        if len(data_shape) == 3 and (dm.value_range is None or tuple(dm.value_range) != (0.0, 1.0)):
            raise ConfigError(f"a flow dequantizes 8-bit images in [0, 1], but {dm.dataset_name} yields {dm.value_range}; "
                              "set data.init_args.value_range: \"0,1\"")
        if len(data_shape) == 3 and dm.binarize != "none":
            raise ConfigError(f"a flow models 8-bit intensities, but {dm.dataset_name} is binarized ({dm.binarize}); "
                              "set data.init_args.binarize: none")
        in_shape = tuple(getattr(self.dequantizer, "in_shape", data_shape))
        if self.dequantizer is not None and (len(data_shape) != 3 or in_shape != data_shape):
            raise ConfigError(f"the dequantizer is for 8-bit images of shape {in_shape}, but {dm.dataset_name} has shape "
                              f"{data_shape}; set its in_channels/image_size to the data's, or remove it (2-D data is not dequantized)")
        x = torch.full((2, *data_shape), 0.5, device=self.device)
        z, logdet = self.probe(self.net, lambda: self.net(x), f"the flow net cannot read data of shape {shape_text(data_shape)}",
                               "set the net's in_channels/image_size (or dim) to the data's shape")
        if tuple(z.shape) != tuple(x.shape) or tuple(logdet.shape) != (2,):
            raise ConfigError(
                f"the flow net maps {shape_text(data_shape)} to z {shape_text(z.shape[1:])} and logdet {tuple(logdet.shape)}; "
                f"it must keep the data's shape and give one log-det per example; set its in_channels/image_size (or dim)"
            )

    # ---- what the evaluation callbacks read (callbacks.DensityMetrics, MetricsWriter) ----------
    density_kind = "exact"  # change of variables (of one dequantized draw, for images)

    @property
    def omitted_metrics(self) -> dict[str, str]:
        if self.is_image:
            return {}
        return dict.fromkeys(("val/bpd", "test/bpd"), f"{math.prod(self.data_shape)}-D continuous data: bits/dim applies to 8-bit images")

    @property
    def metric_conventions(self) -> dict[str, str]:
        d = math.prod(self.data_shape)
        conventions = {"test/nll_nats": "-log p(x) per example in nats, exact (change of variables)"}
        if self.is_image:
            logit = (f"; the flow sees w = logit({self.logit_alpha} + {1 - 2 * self.logit_alpha:g} y), its Jacobian included"
                     if self.logit_alpha is not None else "")
            conventions["test/nll_nats"] = (
                "-log p(y) per image in nats of the uniformly dequantized y = (k + u)/256, u ~ U[0,1)^D, one seeded "
                f"draw per test batch{logit}"
            ) if self.dequantizer is None else (
                "-[log p(y) - log q(u|x)] per image in nats, y = (k + u)/256 with u ~ q(u|x) (variational "
                f"dequantization, Flow++), one seeded draw per test batch{logit}: a bound in expectation"
            )
            conventions["bits_per_dim"] = f"(nll + D ln 256) / (D ln 2), D = {d}: uniform dequantization of 8-bit data in [0, 1]"
        return conventions
