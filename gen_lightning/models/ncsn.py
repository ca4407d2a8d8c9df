"""Noise-conditional score network (NCSN, Song & Ermon 2019) sampled by annealed Langevin dynamics.

A network learns the score of the data blurred by Gaussian noise of every level sigma_i of a
geometric sequence (`GeometricSigmas`), by denoising score matching with lambda(sigma) = sigma^2
(Song & Ermon 2019, eq. 5-6; `losses.dsm_loss`). Samples come from annealed Langevin dynamics
from sigma_1 down to sigma_L (`AnnealedLangevin`, NCSN alg. 1 with NCSNv2's step sizes and a final
denoising step), by ancestral sampling of the variance-exploding chain (samplers/ve_ancestral.py,
`VEAncestralSampler`, Song et al. 2021 appendix F: DDPM's ancestral sampler for SMLD, a few dozen
evaluations), or, with an ODE sampler (samplers/ode.py HeunSampler, EulerSampler), from the
probability-flow ODE in a few dozen evaluations (`ode_sample`, then the same denoising step).

The score network. The injected `net` is a plain `forward(x, t, labels=None)` (nets/unet.py UNet
for images, nets/denoiser_mlp.py DenoiserMLP for 2-D data) and

    s_theta(x, sigma) = net(x, t(sigma)) / sigma,   t(sigma) = log(sigma / sigma_L) / log(sigma_1 / sigma_L).

- Dividing by sigma is NCSNv2's Technique 3 (Song & Ermon 2020, sec. 3.3): the true score has norm
  ~ sqrt(D) / sigma, so the network output keeps a unit scale at every level; with lambda = sigma^2 the
  loss becomes 1/2 ||net(x + sigma z, t) + z||^2, an epsilon-prediction like DDPM's. NCSNv2 drops the
  noise conditioning altogether; we keep it, as NCSN++ does (Song et al. 2021, `scale_by_sigma` with a
  noise embedding), which costs nothing and helps at the small levels.
- `scale_input: true` feeds the net x / sqrt(1 + sigma^2) instead of x (EDM's c_in with sigma_data = 1, Karras et al.
  2022, table 1). The VE input x0 + sigma z grows to ~sigma_1 = 40; scaled, it is exactly DDPM's sqrt(alpha_bar) x0 +
  sqrt(1 - alpha_bar) z at alpha_bar = 1 / (1 + sigma^2), so the net always sees inputs of unit scale and its target
  (-z) is DDPM's eps. Off by default (NCSN and NCSNv2 feed x as it is, and older checkpoints mean that).
- `snr_gamma` weights each level's loss by Min-SNR-gamma (Hang et al. 2023): with lambda = sigma^2 the loss is an
  eps-prediction at SNR 1 / sigma^2, so the weight min(SNR, gamma) / SNR is min(1, gamma sigma^2), which discounts the
  levels below 1 / sqrt(gamma) (losses.min_snr_weight for the DDPM).
- t(sigma) maps log sigma (evenly spaced for a geometric sequence) onto [0, 1], the nets' continuous
  time (nets/unet.timestep_embedding): sigma_L -> 0 (least noise, like DDPM's t = 0), sigma_1 -> 1.
  For geometric sigmas this is the noise-level index scaled to [0, 1].

Value range: images in [-1, 1] (DESIGN.md's convention for NCSN). NCSN's code used [0, 1]; in
[-1, 1] every distance doubles, so NCSNv2's sigmas (50 .. 0.01 on CIFAR-10) become 100 .. 0.02 and
its eps (6.2e-6) becomes 4 x 6.2e-6 = 2.48e-5 (alpha scales with sigma^2). GMM data has no range.

`val/loss` and `test/loss` are the DSM loss on held-out data with the noise levels and noise drawn
from a generator seeded by the batch index, so they are comparable from epoch to epoch. Sample metrics
(GMMMetrics, ClassifierMetrics) come from callbacks.

Likelihood: the score defines a density through the probability-flow ODE of the variance-exploding SDE
(Song et al. 2021, eq. 13 with g^2 = d sigma^2 / dt): dx/dsigma = -sigma s(x, sigma), from the data at sigma_L
to sigma_1, where p is taken to be N(0, sigma_1^2 I) (`ode_log_prob`; the ODELikelihood callback turns it into
test/nll_nats, bits/dim and KL(data || model)). The density is that of the data blurred by sigma_L, so for
8-bit images train with `dequantize: true` (the flows' (k + u)/256) and evaluate on dequantized digits.

EMA: add `lightning.pytorch.callbacks.EMAWeightAveraging` to the callbacks (after SampleGrid);
validation, the sample grid and checkpoints then use the averaged weights (NCSNv2 Technique 5).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from gen_lightning import losses
from gen_lightning.errors import ConfigError
from gen_lightning.likelihoods import dequantize_in_range
from gen_lightning.models.base import GenerativeModel, eval_mode, shape_text
from gen_lightning.models.self_conditioning import SelfConditioning
from gen_lightning.samplers.langevin import AnnealedLangevin, NoiseConditionalScore
from gen_lightning.samplers.ode import ODESampler, ode_log_prob, standard_normal_log_prob
from gen_lightning.samplers.sigmas import GeometricSigmas
from gen_lightning.samplers.ve_ancestral import VEAncestralSampler

NO_LIKELIHOOD = "NCSN's density is that of its probability-flow ODE, which needs the ODELikelihood callback"


class NCSN(GenerativeModel):
    """An unconditional NCSN: `net` scores x at each noise level of `sigmas`; `sampler` draws samples with it."""

    divergence_advice = "Lower the learning rate"

    conditional = False
    net_takes_labels = False  # SelfGuidedNCSN's net takes clusters
    sampling_options = ("predict_seed", "sampler")

    def __init__(
        self,
        net: nn.Module,
        sigmas: GeometricSigmas,
        sampler: AnnealedLangevin | VEAncestralSampler | ODESampler,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        dequantize: bool = False,
        scale_input: bool = False,
        predict_seed: int = 1234,
        snr_gamma: float | None = None,
    ):
        super().__init__(predict_seed=predict_seed)
        if getattr(net, "num_classes", None) is not None and not self.net_takes_labels:
            raise ConfigError(f"NCSN is unconditional but the net has num_classes={net.num_classes}; set its num_classes: null")
        if snr_gamma is not None and snr_gamma <= 0:
            raise ConfigError(f"snr_gamma must be > 0 (5 in Hang et al. 2023), or null for lambda(sigma) = sigma^2; got {snr_gamma}")
        self.save_hyperparameters()
        self.net, self.sigmas, self.sampler = net, sigmas, sampler
        self.optimizer_callable, self.scheduler_callable, self.dequantize = optimizer, scheduler, dequantize
        self.scheduler_interval = scheduler_interval
        self.scale_input, self.snr_gamma = scale_input, snr_gamma

    @property
    def network_evaluations_per_sample(self) -> int:
        if isinstance(self.sampler, ODESampler):
            return self.sampler.evaluations + 1  # the final denoising step
        return self.sampler.network_evaluations(self.sigmas)

    # ---- the score ------------------------------------------------------------------------
    def noise_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """t(sigma) = log(sigma / sigma_L) / log(sigma_1 / sigma_L): (B,) in [0, 1], the nets' continuous time."""
        return torch.log(sigma / self.sigmas.sigma_min) / math.log(self.sigmas.sigma_max / self.sigmas.sigma_min)

    def score(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """s_theta(x, sigma) = net(c x, t(sigma)) / sigma (NCSNv2 Technique 3), c = 1 / sqrt(1 + sigma^2) with
        `scale_input`, else 1: `(B, *shape)`, sigma `(B,)`; `labels` (B,) for a net that takes them."""
        sigma_b = sigma.view(-1, *([1] * (x.ndim - 1)))  # (B,) -> (B, 1, ...)
        net_in = x * torch.rsqrt(1 + sigma_b**2) if self.scale_input else x
        out = self.net(net_in, self.noise_t(sigma)) if labels is None else self.net(net_in, self.noise_t(sigma), labels)
        return out / sigma_b

    def sampling_score(self, n: int, generator: torch.Generator | None):
        """The score the samplers follow for a batch of n samples: `score(x, sigma)` (SelfGuidedNCSN: guided)."""
        return self.score

    def dsm(self, x0: torch.Tensor, generator: torch.Generator | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The DSM loss of a batch, one noise level sigma ~ U{sigma_1..sigma_L} and one z ~ N(0, I) per example
        (the score given `labels`, for a net that takes them)."""
        if self.dequantize:
            x0 = dequantize_in_range(x0, self.value_range, generator)
        levels = self.sigmas.to(x0.device)
        i = torch.randint(0, len(levels), (x0.shape[0],), device=x0.device, generator=generator)
        z = torch.randn(x0.shape, device=x0.device, generator=generator)
        score = self.score if labels is None else (lambda x, sigma: self.score(x, sigma, labels))
        per_example = losses.dsm_loss(score, x0, levels[i], z)
        if self.snr_gamma is not None:  # Min-SNR-gamma: the VE chain's SNR is 1 / sigma^2, the loss an eps-prediction's
            per_example = per_example * (self.snr_gamma * levels[i].pow(2)).clamp(max=1.0)
        return per_example.mean()

    # ---- training ---------------------------------------------------------------------------
    def training_labels(self, batch) -> torch.Tensor | None:
        """The labels the net trains on: none for the NCSN (SelfGuidedNCSN: clusters with dropout)."""
        return None

    def heldout_labels(self, batch) -> torch.Tensor | None:
        return None

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x0, _ = batch
        loss = self.dsm(x0, labels=self.training_labels(batch))
        self.log_step({"train/loss": loss})
        return loss

    def configure_optimizers(self):
        return self.optimizers_with_scheduler(self.optimizer_callable, self.parameters(), self.scheduler_callable,
                                              self.scheduler_interval)

    # ---- validation and test: the DSM loss on held-out data, with seeded noise -----------------
    def held_out_loss(self, batch, batch_idx: int) -> torch.Tensor:
        x0, _ = batch
        g = torch.Generator(device=self.device).manual_seed(batch_idx)
        return self.dsm(x0, generator=g, labels=self.heldout_labels(batch))

    def validation_step(self, batch, batch_idx: int) -> None:
        self.log("val/loss", self.held_out_loss(batch, batch_idx), prog_bar=True, batch_size=batch[0].shape[0])

    def test_step(self, batch, batch_idx: int) -> None:
        self.log("test/loss", self.held_out_loss(batch, batch_idx), batch_size=batch[0].shape[0])

    def ode_log_prob(self, x: torch.Tensor, labels: torch.Tensor | None = None, steps: int = 50, probes: int | None = 1,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """log p(x) per example (B,), nats, by the probability-flow ODE dx/dsigma = -sigma s(x, sigma) from sigma_L to
        sigma_1 (Heun on `steps` geometric intervals), with p_sigma_1 = N(0, sigma_1^2 I); `probes` Hutchinson
        probes, None: the exact trace. Used by callbacks.ODELikelihood. The same ODE as `ode_sample`'s, but in sigma
        rather than tau: Heun is exact for x linear in sigma (the flow of point-mass data), and on the Gaussian
        closed-form test the tau form's error is 4x larger at 400 steps (9e-3 against 1.3e-3 nats)."""
        lo, hi = self.sigmas.sigma_min, self.sigmas.sigma_max
        levels = [lo * (hi / lo) ** (k / steps) for k in range(steps + 1)]

        def field(y: torch.Tensor, sigma: float) -> torch.Tensor:
            return -sigma * self.score(y, torch.full((y.shape[0],), sigma, device=y.device))

        with eval_mode(self.net):
            return ode_log_prob(field, x.to(self.device), levels, lambda y: standard_normal_log_prob(y, hi**2), probes, generator)

    def ode_sample(self, shape: tuple[int, ...], generator: torch.Generator | None, return_trajectory: bool, score=None):
        """The probability-flow ODE from x ~ N(0, sigma_1^2 I) at sigma_1 to sigma_L, in tau = log(sigma_1 / sigma) /
        log(sigma_1 / sigma_L) in [0, 1] (equal steps in tau are geometric in sigma): dx/dtau = sigma^2 log(sigma_1 /
        sigma_L) s(x, sigma). Then Tweedie's step x + sigma_L^2 s(x, sigma_L), as the Langevin sampler's `denoise`."""
        hi, lo = self.sigmas.sigma_max, self.sigmas.sigma_min
        log_ratio = math.log(hi / lo)
        score = self.score if score is None else score

        def field(x: torch.Tensor, tau: float) -> torch.Tensor:
            sigma = hi * math.exp(-tau * log_ratio)
            return sigma**2 * log_ratio * score(x, torch.full((x.shape[0],), sigma, device=x.device))

        x_init = hi * torch.randn(shape, generator=generator, device=self.device)
        out = self.sampler.sample(field, shape, x_init=x_init, return_trajectory=return_trajectory)
        x, trajectory = out if return_trajectory else (out, None)
        x = x + lo**2 * score(x, torch.full((shape[0],), lo, device=x.device))
        return (x, torch.cat([trajectory, x.cpu()[None]])) if return_trajectory else x

    # ---- sampling -----------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None, generator: torch.Generator | None = None,
               return_trajectory: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """n samples `(n, *data_shape)` by annealed Langevin in eval mode, clamped to the data's range.

        With `return_trajectory`, also the (unclamped) start, the state after each noise level and the denoised
        state, `(L + 2, n, *data_shape)` (`L + 1` when the sampler does not denoise): a strip for figures.
        """
        self.check_sample_args(n, labels)
        shape = (n, *self.data_shape)
        with eval_mode(self.net):
            score = self.sampling_score(n, generator)
            if isinstance(self.sampler, ODESampler):
                out = self.ode_sample(shape, generator, return_trajectory, score)
            else:
                out = self.sampler.sample(NoiseConditionalScore(score, self.sigmas), shape, generator,
                                          return_trajectory, device=self.device)
        return self.clamped(out, return_trajectory)

    # ---- data contract ----------------------------------------------------------------
    def check_data(self, dm) -> None:
        """Images must be in [-1, 1] (the sigmas are set for it), and the net must map data to data's shape."""
        self.require_symmetric_range(dm, "NCSN's sigmas and step sizes are set for images in [-1, 1]")
        self.check_dequantize(dm, self.dequantize)
        data_shape = tuple(dm.data_shape)
        x = torch.zeros(2, *data_shape, device=self.device)
        out = self.probe(self.net, lambda: self.score(x, self.sigmas.to(self.device)[:2]), f"the net cannot read data of shape "
                         f"{shape_text(data_shape)}", "set the net's in_channels/image_size (UNet) or dim (DenoiserMLP)")
        if tuple(out.shape[1:]) != data_shape:
            raise ConfigError(f"the net outputs {shape_text(out.shape[1:])} for data of shape {shape_text(data_shape)}; "
                              "a score has the data's shape: set the net's out_channels to the data's channels")

    # ---- what metrics.json says (MetricsWriter); what callbacks.ODELikelihood logs is not reported omitted ----
    omitted_metrics = dict.fromkeys(("test/nll_nats", "test/bpd", "test/kl_data_model"), NO_LIKELIHOOD)

    @property
    def metric_conventions(self) -> dict[str, str]:
        ode = " (the probability-flow ODE, then Tweedie's denoising step at sigma_L)" if isinstance(self.sampler, ODESampler) else ""
        return {
            "val/loss": ("denoising score matching loss, lambda(sigma) = sigma^2, 1/2 ||sigma s(x + sigma z, sigma) + z||^2 "
                         "summed over dimensions, one level sigma ~ U{sigmas} per example; noise seeded by batch index"),
            "sampler": f"{self.sampler!r} over {self.sigmas!r}: {self.network_evaluations_per_sample} network evaluations per sample{ode}",
        }


class SelfGuidedNCSN(SelfConditioning, NCSN):
    """An unconditional NCSN trained and guided as a conditional one on k-means clusters of its data (the
    self-guidance of Hu et al. 2023, "Self-Guided Diffusion Models", on the score network; models/self_conditioning.py).

    When a fit starts, k-means splits `cluster_images` training examples into `num_clusters` clusters of their pixels;
    the net (`num_classes: num_clusters`; label `num_clusters` is the null token) learns the score given each example's
    nearest cluster, the label dropped to the null token with probability `label_dropout`, and each sample draws a
    cluster in proportion to the clusters' sizes and follows the guided score s_null + w (s_cluster - s_null)
    (`guidance_scale` w: 1 the cluster's score, one pass; otherwise two). `score(x, sigma)` without labels is the
    null-label (unconditional) score, so the probability-flow likelihood (`ode_log_prob`) is that model's density.
    No dataset label is read; `sample(n)` takes none.
    """

    net_takes_labels = True
    sampling_options = ("predict_seed", "sampler", "guidance_scale")

    def __init__(
        self,
        net: nn.Module,
        sigmas: GeometricSigmas,
        sampler: AnnealedLangevin | VEAncestralSampler | ODESampler,
        num_clusters: int = 200,
        cluster_images: int = 20000,
        cluster_seed: int = 0,
        label_dropout: float = 0.1,
        guidance_scale: float = 1.0,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        dequantize: bool = False,
        scale_input: bool = False,
        predict_seed: int = 1234,
        snr_gamma: float | None = None,
    ):
        super().__init__(net, sigmas, sampler, optimizer, scheduler, scheduler_interval, dequantize, scale_input,
                         predict_seed, snr_gamma)
        self.check_guidance(label_dropout, guidance_scale)
        self.init_self_conditioning(num_clusters, cluster_images, cluster_seed)
        self.check_cluster_net("net", net)
        self.label_dropout, self.guidance_scale = label_dropout, guidance_scale

    @property
    def network_evaluations_per_sample(self) -> int:
        return super().network_evaluations_per_sample * (1 if self.guidance_scale == 1.0 else 2)

    def score(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The score given `labels` (clusters); without them, the null label's: the unconditional model."""
        if labels is None:
            labels = torch.full((x.shape[0],), self.num_clusters, dtype=torch.long, device=x.device)
        return super().score(x, sigma, labels)

    def training_labels(self, batch) -> torch.Tensor:
        return self.drop_labels(self.labels_of(batch[0]), self.label_dropout, self.num_clusters)

    def heldout_labels(self, batch) -> torch.Tensor:
        return self.labels_of(batch[0])

    def sampling_score(self, n: int, generator: torch.Generator | None):
        """The guided score of n samples, each with a cluster drawn in proportion to the clusters' sizes."""
        labels, w = self.draw_clusters(n, generator), self.guidance_scale

        def guided(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            cond = self.score(x, sigma, labels)
            if w == 1.0:
                return cond
            null = self.score(x, sigma)
            return null + w * (cond - null)

        return guided
