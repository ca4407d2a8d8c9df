"""Denoising diffusion probabilistic models (Ho et al. 2020), with DDIM sampling and classifier-free guidance.

Training: draw t ~ U{0..T-1} and eps ~ N(0, I), form x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps,
and regress the network's output on eps ("eps", DDPM eq. 14, the simple loss), on x0 ("x0"), or
on v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0 ("v", Salimans & Ho 2022). The network is
called as `net(x_t, t / T, labels)`: step t of T as the nets' continuous time in [0, 1). `snr_gamma` weights each
example's loss by Min-SNR-gamma (Hang et al. 2023, losses.min_snr_weight: the x0 error weighted by min(SNR_t, gamma)),
which spends less of a short training on the nearly clean timesteps.

Injected pieces (class_path in YAML):
- `net`: nets/unet.py UNet for images, nets/denoiser_mlp.py DenoiserMLP for 2-D data;
- `schedule`: samplers/schedules.py LinearSchedule (the default; 1e-4..0.02, T = 1000) or CosineSchedule;
- `sampler`: samplers/ddpm.py DDPMSampler (the default; ancestral, all T steps) or
  samplers/ddim.py DDIMSampler (`configs/overrides/ddim50.yaml` swaps it in).

`ConditionalDDPM` trains with label dropout (each label replaced by the null token `num_classes`
with probability `label_dropout`), so one network learns both the conditional and the
unconditional model, and samples with classifier-free guidance (Ho & Salimans 2022):
eps = eps_uncond + w (eps_cond - eps_uncond), `guidance_scale` w: 0 unconditional, 1 conditional,
> 1 guided (Ho & Salimans' weight is w - 1). Guided sampling costs two network passes per step.

`SelfGuidedDDPM` (Hu et al. 2023) trains the same way on k-means clusters of the data instead of labels
(models/self_conditioning.py) and samples each image with a cluster drawn in proportion to the clusters' sizes:
unconditional to every caller, no dataset label read.

Images must be in [-1, 1]; the sampler clips x0_hat to that range (`clip_x0`). `val/loss` (for
ModelCheckpoint) and `test/loss` are the simple loss on held-out data, with t and eps drawn from a
generator seeded by the batch index, so they compare across epochs. `vlb_bpd: true` adds
`test/bpd_vlb`, the variational bound L_0 + ... + L_T in bits/dim on 8-bit images (DDPM sec. 3.3,
the discretized decoder of eq. 13), which costs T network passes per test image.

EMA: add `lightning.pytorch.callbacks.EMAWeightAveraging` to the callbacks, after SampleGrid.
Validation, the sample grid, checkpoints and `gen test` then use the averaged weights.
"""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from gen_lightning import losses
from gen_lightning.errors import ConfigError
from gen_lightning.likelihoods import dequantize_in_range
from gen_lightning.models.base import GenerativeModel, check_lr_schedule, eval_mode
from gen_lightning.models.self_conditioning import SelfConditioning
from gen_lightning.samplers.ddpm import DDPMSampler, DiffusionSampler
from gen_lightning.samplers.ode import autograd_ready, ddpm_ode_log_prob
from gen_lightning.samplers.schedules import Denoiser, LinearSchedule, NoiseSchedule, Prediction
from gen_lightning.samplers.vlb import vlb_bits_per_dim


class DDPM(GenerativeModel):
    """An unconditional DDPM with an injected network, schedule, sampler and optimizer."""

    conditional = False
    sampling_options = ("predict_seed", "sampler", "guidance_scale")

    def __init__(
        self,
        net: nn.Module,
        schedule: NoiseSchedule | None = None,
        sampler: DiffusionSampler | None = None,
        prediction: Prediction = "eps",
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_warmup_steps: int = 0,
        vlb_bpd: bool = False,
        dequantize: bool = False,
        predict_seed: int = 1234,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        snr_gamma: float | None = None,
    ):
        super().__init__(predict_seed=predict_seed)
        check_lr_schedule(lr_schedule)
        if snr_gamma is not None and snr_gamma <= 0:
            raise ConfigError(f"snr_gamma must be > 0 (5 in Hang et al. 2023), or null for the unweighted loss; got {snr_gamma}")
        if prediction not in ("eps", "x0", "v"):
            raise ConfigError(f"prediction must be 'eps', 'x0' or 'v', got {prediction!r}")
        if lr_warmup_steps < 0:
            raise ConfigError(f"lr_warmup_steps must be >= 0, got {lr_warmup_steps}")
        self.save_hyperparameters()
        self.net = net
        self.schedule = schedule if schedule is not None else LinearSchedule()
        self.sampler = sampler if sampler is not None else DDPMSampler()
        self.prediction, self.optimizer, self.lr_warmup_steps, self.vlb_bpd = prediction, optimizer, lr_warmup_steps, vlb_bpd
        self.dequantize, self.lr_schedule, self.snr_gamma = dequantize, lr_schedule, snr_gamma
        self.guidance_scale = 1.0

    @property
    def network_evaluations_per_sample(self) -> int:
        return self.sampler.num_steps(self.schedule) * self.denoiser(None).evaluations_per_step

    # ---- training ---------------------------------------------------------------------------
    def training_labels(self, y: torch.Tensor) -> torch.Tensor | None:
        """The labels the net sees in training: none for the unconditional model."""
        return None

    def loss(self, x0: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator | None = None) -> torch.Tensor:
        self.schedule.to(x0.device)
        if self.dequantize:
            x0 = dequantize_in_range(x0, self.value_range, generator)
        t = torch.randint(0, self.schedule.num_steps, (x0.shape[0],), device=x0.device, generator=generator)
        return losses.diffusion_simple_loss(self.net, self.schedule, x0, t, self.prediction, labels, generator, self.snr_gamma)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x0, y = batch
        loss = self.loss(x0, self.training_labels(y))
        self.log_step({"train/loss": loss})
        return loss

    def configure_optimizers(self):
        return self.optimizer_with_warmup(self.optimizer, self.net.parameters(), self.lr_warmup_steps, self.lr_schedule)

    # ---- validation and test ----------------------------------------------------------------
    def heldout_loss(self, batch, batch_idx: int) -> torch.Tensor:
        x0, y = batch
        g = torch.Generator(device=x0.device).manual_seed(batch_idx)
        return self.loss(x0, self.heldout_labels(y), generator=g)

    def heldout_labels(self, y: torch.Tensor) -> torch.Tensor | None:
        return None

    def validation_step(self, batch, batch_idx: int) -> None:
        self.log("val/loss", self.heldout_loss(batch, batch_idx), prog_bar=True, batch_size=batch[0].shape[0])

    def test_step(self, batch, batch_idx: int) -> None:
        n = batch[0].shape[0]
        self.log("test/loss", self.heldout_loss(batch, batch_idx), batch_size=n)
        if len(self.data_shape) == 3 and self.vlb_bpd:
            self.log("test/bpd_vlb", self.vlb_bits_per_dim(batch[0], self.heldout_labels(batch[1])).mean(), batch_size=n)

    def vlb_bits_per_dim(self, x0: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) variational bound L_T + sum_t L_{t-1} + L_0 (DDPM eq. 5) in bits/dim (samplers/vlb.py), T passes."""
        denoiser = Denoiser(self.net, self.schedule, self.prediction, labels, clip_range=(-1.0, 1.0))
        with eval_mode(self.net):
            return vlb_bits_per_dim(denoiser, x0, getattr(self.sampler, "variance", "fixed_small"))

    def ode_log_prob(self, x: torch.Tensor, labels: torch.Tensor | None = None, steps: int = 100, probes: int | None = 1,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """log p(x) per example (B,), nats, of continuous x by the probability-flow ODE (samplers/ode.ddpm_ode_log_prob:
        Heun on `steps` intervals of the timesteps, unclipped predictions, the conditional model for given labels).
        Used by callbacks.ODELikelihood."""
        labels = autograd_ready(None if labels is None else labels.to(self.device))
        denoiser = Denoiser(self.net, self.schedule.to(self.device), self.prediction, labels)
        with eval_mode(self.net):
            return ddpm_ode_log_prob(denoiser, x, steps, probes, generator)

    # ---- sampling -----------------------------------------------------------------------
    @property
    def null_label(self) -> int | None:
        """The net's "no label" token, which guidance and label dropout use: none for the unconditional model."""
        return self.num_classes if self.conditional else None

    def denoiser(self, labels: torch.Tensor | None) -> Denoiser:
        """The net as the samplers see it: parameterization, clipping and (for ConditionalDDPM) guidance."""
        clip = self.value_range if self.sampler.clip_x0 else None
        return Denoiser(self.net, self.schedule.to(self.device), self.prediction, labels, self.guidance_scale,
                        self.null_label, clip)

    def sampling_labels(self, n: int, labels: torch.Tensor | None, generator: torch.Generator | None) -> torch.Tensor | None:
        """The labels the net samples with: the caller's (checked); SelfGuidedDDPM draws clusters."""
        return labels

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None, generator: torch.Generator | None = None,
               return_trajectory: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """n samples `(n, *data_shape)` by the injected sampler, in eval mode, x_T drawn with `generator`; with
        `return_trajectory`, also x_T and x after each step, `(S + 1, n, *data_shape)` on the CPU."""
        labels = self.sampling_labels(n, self.check_sample_args(n, labels), generator)
        with eval_mode(self.net):
            out = self.sampler.sample(self.denoiser(labels), (n, *self.data_shape), generator, return_trajectory, device=self.device)
        return self.clamped(out, return_trajectory)

    # ---- data contract ----------------------------------------------------------------
    def check_data(self, dm) -> None:
        """Images in [-1, 1], the net's num_classes matching the model's kind, and one dummy pass of the right shape."""
        self.require_symmetric_range(dm, "diffusion models take images in [-1, 1] (x_T ~ N(0, I) and clipping of x0)")
        self.check_dequantize(dm, self.dequantize)
        self.check_net(dm)

    def check_net(self, dm) -> None:
        """The net's num_classes matching the model's kind (dataset classes, or none), and one dummy pass."""
        self.check_net_classes(dm, "gen_lightning.models.diffusion.ConditionalDDPM", net=self.net)
        self.probe_time_net(self.net, tuple(dm.data_shape))

    # ---- what metrics.json says (MetricsWriter) ----------------------------------------------
    @property
    def omitted_metrics(self) -> dict[str, str]:
        why = "the probability-flow likelihood needs the ODELikelihood callback; the variational bound is test/bpd_vlb"
        omitted = {"test/nll_nats": why, "test/kl_data_model": why}  # (what a callback logs is not reported omitted)
        if len(self.data_shape) != 3:
            omitted["test/bpd_vlb"] = "the discretized decoder of the bound applies to 8-bit images only"
        elif not self.vlb_bpd:
            omitted["test/bpd_vlb"] = "vlb_bpd: false (the bound costs T network passes per test image)"
        return omitted

    @property
    def loss_name(self) -> str:
        simple = f"simple {self.prediction}-prediction MSE"
        return simple if self.snr_gamma is None else f"{simple}, min-SNR-{self.snr_gamma:g} weighted"

    @property
    def metric_conventions(self) -> dict[str, str]:
        conventions = {
            "val/loss": f"{self.loss_name} on validation data, t and eps seeded by batch index",
            "test/loss": f"{self.loss_name} on test data, t and eps seeded by batch index",
        }
        if len(self.data_shape) == 3 and self.vlb_bpd:
            conventions["test/bpd_vlb"] = (
                "variational bound L_0..L_T in bits/dim, 8-bit images scaled to [-1, 1], discretized decoder (DDPM eq. 13)")
        return conventions


class ConditionalDDPM(DDPM):
    """Class-conditional DDPM with label dropout in training and classifier-free guidance in sampling.

    The net needs `num_classes` = the data's; its label `num_classes` is the null token.
    """

    conditional = True

    def __init__(
        self,
        net: nn.Module,
        schedule: NoiseSchedule | None = None,
        sampler: DiffusionSampler | None = None,
        prediction: Prediction = "eps",
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_warmup_steps: int = 0,
        vlb_bpd: bool = False,
        dequantize: bool = False,
        label_dropout: float = 0.1,
        guidance_scale: float = 2.0,
        predict_seed: int = 1234,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        snr_gamma: float | None = None,
    ):
        super().__init__(net, schedule, sampler, prediction, optimizer, lr_warmup_steps, vlb_bpd, dequantize, predict_seed,
                         lr_schedule, snr_gamma)
        self.check_guidance(label_dropout, guidance_scale)
        self.label_dropout, self.guidance_scale = label_dropout, guidance_scale

    def training_labels(self, y: torch.Tensor) -> torch.Tensor:
        return self.drop_labels(y, self.label_dropout)

    def heldout_labels(self, y: torch.Tensor) -> torch.Tensor:
        return y


class SelfGuidedDDPM(SelfConditioning, ConditionalDDPM):
    """An unconditional DDPM trained and guided as a conditional one on k-means clusters of the data ("Self-Guided
    Diffusion Models", Hu et al. 2023; models/self_conditioning.py).

    When a fit starts, k-means splits `cluster_images` training examples into `num_clusters` clusters of their pixels;
    the net (a UNet with `num_classes: num_clusters`, whose label `num_clusters` is the null token) trains on each
    example's nearest cluster with label dropout, as ConditionalDDPM trains on classes, and each sample draws a cluster
    in proportion to the clusters' sizes and is guided towards it (`guidance_scale` as in ConditionalDDPM: 1 the
    cluster-conditional model, > 1 guided, 0 the null-label model alone). No dataset label is read: `sample(n)` takes
    none, and the model reports as unconditional. `val/loss` and `test/loss` are the cluster-conditional loss;
    `ode_log_prob` is the density of the net's null-label (unconditional) model, the one label dropout trains, since the
    guided sampler's distribution has no tractable density.
    """

    def __init__(
        self,
        net: nn.Module,
        num_clusters: int = 200,
        cluster_images: int = 20000,
        cluster_seed: int = 0,
        schedule: NoiseSchedule | None = None,
        sampler: DiffusionSampler | None = None,
        prediction: Prediction = "eps",
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_warmup_steps: int = 0,
        vlb_bpd: bool = False,
        dequantize: bool = False,
        label_dropout: float = 0.1,
        guidance_scale: float = 1.0,
        predict_seed: int = 1234,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        snr_gamma: float | None = None,
    ):
        super().__init__(net, schedule, sampler, prediction, optimizer, lr_warmup_steps, vlb_bpd, dequantize, label_dropout,
                         guidance_scale, predict_seed, lr_schedule, snr_gamma)
        self.init_self_conditioning(num_clusters, cluster_images, cluster_seed)

    @property
    def null_label(self) -> int:
        return self.num_clusters

    def clustered(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch with each example's cluster in place of its dataset label."""
        return batch[0], self.labels_of(batch[0])

    def training_labels(self, y: torch.Tensor) -> torch.Tensor:
        return self.drop_labels(y, self.label_dropout, self.null_label)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return super().training_step(self.clustered(batch), batch_idx)

    def validation_step(self, batch, batch_idx: int) -> None:
        super().validation_step(self.clustered(batch), batch_idx)

    def test_step(self, batch, batch_idx: int) -> None:
        super().test_step(self.clustered(batch), batch_idx)

    def sampling_labels(self, n: int, labels: torch.Tensor | None, generator: torch.Generator | None) -> torch.Tensor:
        return self.draw_clusters(n, generator)

    def ode_log_prob(self, x: torch.Tensor, labels: torch.Tensor | None = None, steps: int = 100, probes: int | None = 1,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """log p(x) (B,) of the null-label model (class docstring); `labels` must be None (the model is unconditional)."""
        self.check_labels(labels)
        null = torch.full((x.shape[0],), self.null_label, dtype=torch.long)
        return super().ode_log_prob(x, null, steps, probes, generator)

    def check_net(self, dm) -> None:
        """The net's classes are the clusters and the null token, not the dataset's classes."""
        self.check_cluster_net("net", self.net)
        self.probe_time_net(self.net, tuple(dm.data_shape), labelled=True)
