"""Variational autoencoder (Kingma & Welling 2014), tested with the IWAE bound (Burda et al. 2016).

The encoder maps x to the mean and log-variance of q(z | x) = N(mu, diag exp(logvar)), the
decoder maps z to the parameters of p(x | z), and the injected `Likelihood` turns those into
log p(x | z) (Bernoulli for binarized images, DiscretizedLogistic for 8-bit images, Gaussian for
continuous data). Training maximizes the ELBO

  log p(x) >= E_q[log p(x | z)] - KL(q(z | x) || N(0, I)),

with the KL weighted by beta_t = beta * min(1, step / kl_warmup_steps) (linear warm-up).
Validation reports the negative ELBO with beta = 1 (`val/loss`, nats); test adds the
importance-weighted estimate of -log p(x) with k = iw_samples.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from gen_lightning import losses
from gen_lightning.errors import ConfigError, check_rules
from gen_lightning.likelihoods import Likelihood
from gen_lightning.models.base import GenerativeModel, eval_mode, shape_text


def _check_hparams(latent_dim: int, beta: float, kl_warmup_steps: int, iw_samples: int, iw_chunk: int, sample_mode: str):
    check_rules([
        (latent_dim >= 1, f"latent_dim must be >= 1, got {latent_dim}"),
        (beta >= 0, f"beta must be >= 0, got {beta}; beta = 1 is the ELBO"),
        (kl_warmup_steps >= 0, f"kl_warmup_steps must be >= 0, got {kl_warmup_steps}; 0 turns the warm-up off"),
        (iw_samples >= 1, f"iw_samples must be >= 1, got {iw_samples}; 1 gives the ELBO, Burda et al. use 5000"),
        (iw_chunk >= 1, f"iw_chunk must be >= 1, got {iw_chunk}; it is the number of z per example in one decoder pass"),
        (sample_mode in ("mean", "sample"), f"sample_mode must be 'mean' or 'sample', got {sample_mode!r}"),
    ])


class VAE(GenerativeModel):
    """A VAE with injected encoder, decoder, likelihood and optimizer.

    `encoder`: `(B, *data_shape) -> (B, 2*latent_dim)` (mean, then log-variance).
    `decoder`: `(B, latent_dim) -> (B, *likelihood.param_shape(data_shape))`.
    `iw_chunk`: latent samples per example in one decoder pass of the IWAE estimate, so that
    pass sees `iw_chunk * batch_size` latents; lower it when the test step runs out of memory.
    `sample_mode`: show the likelihood's mean (sharp, the usual VAE figure) or a draw from it.
    `scheduler`: an optional learning-rate schedule, stepped once per epoch.
    """

    sampling_options = ("predict_seed", "sample_mode", "iw_samples", "iw_chunk")

    network_evaluations_per_sample = 1  # one decoder pass

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        likelihood: Likelihood,
        latent_dim: int,
        beta: float = 1.0,
        kl_warmup_steps: int = 0,
        iw_samples: int = 1000,
        iw_chunk: int = 100,
        sample_mode: Literal["mean", "sample"] = "mean",
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        predict_seed: int = 1234,
    ):
        super().__init__(predict_seed=predict_seed)
        _check_hparams(latent_dim, beta, kl_warmup_steps, iw_samples, iw_chunk, sample_mode)
        self.save_hyperparameters()
        self.encoder, self.decoder, self.likelihood = encoder, decoder, likelihood
        self.latent_dim, self.beta, self.kl_warmup_steps = latent_dim, beta, kl_warmup_steps
        self.iw_samples, self.iw_chunk, self.sample_mode = iw_samples, iw_chunk, sample_mode
        self.optimizer_callable = optimizer
        self.scheduler_callable = scheduler  # stepped once per epoch

    # ---- the model --------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z | x), each `(B, latent_dim)`, in float32."""
        mu, logvar = self.encoder(x).float().chunk(2, dim=1)  # (B, 2L) -> 2 x (B, L)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Parameters of p(x | z), `(B, latent_dim) -> (B, P*C, *rest)`, in float32 (likelihood math stays float32)."""
        return self.decoder(z).float()

    def elbo_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(x | z) for one z ~ q(z | x), and KL(q(z | x) || p(z)), each `(B,)` in nats."""
        mu, logvar = self.encode(x)
        z = losses.reparameterize(mu, logvar, torch.randn_like(mu))
        return self.likelihood.log_prob(self.decode(z), x), losses.gaussian_kl(mu, logvar)

    def kl_weight(self, step: int) -> float:
        """beta_t = beta * min(1, step / kl_warmup_steps); beta itself when there is no warm-up."""
        if self.kl_warmup_steps == 0:
            return self.beta
        return self.beta * min(1.0, step / self.kl_warmup_steps)

    def iwae_log_likelihood(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """The k-sample importance-weighted estimate of log p(x), `(B,)` nats, in chunks of `iw_chunk` samples."""
        mu, logvar = self.encode(x)
        chunks = [self._log_weights(x, mu, logvar, min(self.iw_chunk, k - start)) for start in range(0, k, self.iw_chunk)]
        return losses.iwae_log_likelihood(torch.cat(chunks, dim=0))  # (k, B) -> (B,)

    def _log_weights(self, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, m: int) -> torch.Tensor:
        """log w = log p(x | z) + log p(z) - log q(z | x) for m samples z ~ q(z | x): `(m, B)`."""
        z = losses.reparameterize(mu, logvar, torch.randn(m, *mu.shape, device=mu.device))  # (m, B, L)
        params = self.decode(z.flatten(0, 1))  # (m, B, L) -> (m*B, L) -> (m*B, P*C, *rest)
        x_rep = x.expand(m, *x.shape).flatten(0, 1)  # (B, *data_shape) -> (m*B, *data_shape)
        log_px_z = self.likelihood.log_prob(params, x_rep).view(m, -1)  # (m*B,) -> (m, B)
        return log_px_z + losses.standard_normal_log_prob(z) - losses.gaussian_log_prob(z, mu, logvar)

    def log_prob(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """IWAE estimate of log p(x) per example (nats) with k samples (default iw_samples).

        x is what the DataModule yields; a dequantizing likelihood evaluates one dequantized draw of it.
        """
        return self.iwae_log_likelihood(self.likelihood.prepare(x), k or self.iw_samples)

    def bits_per_dim(self, nll: torch.Tensor) -> torch.Tensor | None:
        """NLL in nats -> bits/dim by the likelihood's convention; None where it does not apply (`omitted_metrics`)."""
        if self.likelihood.bpd_omitted_reason(self.data_shape) is not None:
            return None
        return self.likelihood.bits_per_dim(nll, math.prod(self.data_shape))

    # ---- training, validation and test ------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x0, _ = batch
        x = self.likelihood.prepare(x0)
        log_px_z, kl = self.elbo_terms(x)
        beta_t = self.kl_weight(self.global_step)
        loss = (-log_px_z + beta_t * kl).mean()
        self.log_step({"train/loss": loss, "train/rec": -log_px_z.mean(), "train/kl": kl.mean(), "train/beta": beta_t})
        return loss

    def heldout_nelbo(self, batch, stage: str, name: str) -> None:
        """Log the negative ELBO (beta = 1) of a held-out batch as `{stage}/{name}`, and its bits/dim where defined."""
        x0, _ = batch
        log_px_z, kl = self.elbo_terms(self.likelihood.prepare(x0))
        nelbo, n = kl - log_px_z, x0.shape[0]
        self.log(f"{stage}/{name}", nelbo.mean(), prog_bar=stage == "val", batch_size=n)
        bpd = self.bits_per_dim(nelbo)
        if bpd is not None:
            self.log(f"{stage}/bpd" if stage == "val" else f"{stage}/bpd_elbo", bpd.mean(), batch_size=n)

    def validation_step(self, batch, batch_idx: int) -> None:
        self.heldout_nelbo(batch, "val", "loss")

    def test_step(self, batch, batch_idx: int) -> None:
        """The ELBO; the IWAE NLL, bits/dim and KL(data || model) are callbacks.DensityMetrics' (from log_prob)."""
        self.heldout_nelbo(batch, "test", "nelbo_nats")

    def configure_optimizers(self):
        return self.optimizers_with_scheduler(self.optimizer_callable, self.parameters(), self.scheduler_callable)

    # ---- sampling -----------------------------------------------------------------------
    def _observe(self, params: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Decoder parameters -> what is shown: the likelihood's mean or a draw, in the data's range."""
        if self.sample_mode == "mean":
            x = self.likelihood.mean(params)
        else:
            x = self.likelihood.sample(params, generator=generator)
        return x if self.value_range is None else x.clamp(*self.value_range)

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples `(n, *data_shape)`: z ~ N(0, I) drawn with `generator`, decoded in eval mode."""
        self.check_sample_args(n, labels)
        z = torch.randn(n, self.latent_dim, device=self.device, generator=generator)
        with eval_mode(self):
            params = self.decode(z)
        return self._observe(params, generator)

    @torch.no_grad()
    def interpolate(self, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 8) -> torch.Tensor:
        """Decode the straight line between the posterior means of x_a[i] and x_b[i]: `(B*steps, *data_shape)`, row i
        of the grid (steps images) going from x_a[i] to x_b[i]."""
        if x_a.shape != x_b.shape:
            raise ValueError(f"x_a and x_b must have the same shape, got {tuple(x_a.shape)} and {tuple(x_b.shape)}")
        if steps < 2:
            raise ConfigError(f"interpolation steps must be >= 2 (both end points), got {steps}")
        with eval_mode(self):
            mu_a, _ = self.encode(x_a.to(self.device))
            mu_b, _ = self.encode(x_b.to(self.device))
            t = torch.linspace(0.0, 1.0, steps, device=mu_a.device)[None, :, None]  # (1, steps, 1)
            z = (1 - t) * mu_a[:, None] + t * mu_b[:, None]  # (B, 1, L) -> (B, steps, L)
            params = self.decode(z.flatten(0, 1))  # (B, steps, L) -> (B*steps, L) -> (B*steps, P*C, *rest)
        return self._observe(params, None)

    # ---- data contract ----------------------------------------------------------------
    def check_data(self, dm) -> None:
        """The likelihood must fit the data, and the nets' shapes must fit both."""
        self.likelihood.check(dm)
        shape, stats = tuple(dm.data_shape), (2 * self.latent_dim,)
        x, z = torch.zeros(2, *shape, device=self.device), torch.zeros(2, self.latent_dim, device=self.device)
        h = self.probe(self.encoder, lambda: self.encoder(x), f"the encoder cannot read data of shape {shape_text(shape)}",
                       "set the encoder's in_shape/in_channels/image_size to the data's shape")
        if tuple(h.shape[1:]) != stats:
            raise ConfigError(f"the encoder outputs {shape_text(h.shape[1:])} but latent_dim={self.latent_dim} needs "
                              f"{shape_text(stats)} (mean and log-variance); set the encoder's out_shape/out_features")
        params = self.probe(self.decoder, lambda: self.decoder(z), f"the decoder cannot read latents of shape "
                            f"{shape_text((self.latent_dim,))}", f"set the decoder's in_shape/in_features to latent_dim={self.latent_dim}")
        need = self.likelihood.param_shape(shape)
        if tuple(params.shape[1:]) != need:
            raise ConfigError(f"the decoder outputs {shape_text(params.shape[1:])} but {type(self.likelihood).__name__} needs "
                              f"{shape_text(need)} for data of shape {shape}; set the decoder's out_shape/out_channels/image_size")

    # ---- what the evaluation callbacks read (callbacks.DensityMetrics, MetricsWriter) ----------
    density_kind = "bound"  # log_prob is the IWAE estimate: a lower bound on log p(x) in expectation

    @property
    def omitted_metrics(self) -> dict[str, str]:
        bpd_reason = self.likelihood.bpd_omitted_reason(self.data_shape)
        return {} if bpd_reason is None else dict.fromkeys(("val/bpd", "test/bpd_elbo", "test/bpd"), bpd_reason)

    @property
    def metric_conventions(self) -> dict[str, str]:
        conventions = {
            "likelihood": self.likelihood.describe(),
            "test/nelbo_nats": "negative ELBO (beta = 1) per example in nats, one z ~ q(z|x) per example",
            "test/nll_nats": (
                f"-log p(x) per example in nats, importance-weighted with k={self.iw_samples} samples of q(z|x) "
                "(Burda et al. 2016, eq. 8): an upper bound on the true NLL in expectation"
            ),
        }
        if self.likelihood.bpd_omitted_reason(self.data_shape) is None:
            conventions["bits_per_dim"] = self.likelihood.bpd_convention(math.prod(self.data_shape))
        return conventions
