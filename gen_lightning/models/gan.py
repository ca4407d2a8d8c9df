"""Generative adversarial networks (Goodfellow et al. 2014), trained with manual optimization.

A generator G maps z ~ N(0, I) to samples; a discriminator D scores real against generated
samples. Each training step generates the fakes once, then `discriminator_step` updates D on
real and detached fakes, and every `n_critic` batches `generator_step` updates G through the
same fakes. Each player's step runs inside `toggled_optimizer`, so the other player's
parameters get no gradients.

Losses (`loss`): "bce", the non-saturating loss of Goodfellow et al. 2014, with optional
one-sided label smoothing (`real_label` 0.9); "hinge" (Miyato et al. 2018); "wgan-gp", the
Wasserstein critic with gradient penalty weight `gp_weight` (Gulrajani et al. 2017).
`r1_gamma` > 0 adds the R1 penalty gamma/2 E||grad D(x)||^2 on real data (Mescheder et al. 2018)
to any of them. `mode_seeking` > 0 adds MSGAN's mode-seeking term with that weight to G's loss (Mao et al.
2019): the fakes come in pairs, the second half of the batch with the first half's labels, and G pays
1 / (image distance / latent distance) over the pairs (losses.mode_seeking_loss).

`ConditionalGAN` feeds the labels to both networks (a label embedding in G, a projection
head in D, Miyato & Koyama 2018) and samples given labels.

GANs have no likelihood. `val/loss` (for ModelCheckpoint) is therefore a sample-quality proxy
that does not depend on D: the energy distance between a validation batch and as many samples
of G drawn with a fixed seed (metrics/two_sample.py). Lower is better, and it is zero in
expectation only when the two distributions match. `gen test` logs the same as
`test/energy_distance`.

EMA of the generator: add `gen_lightning.callbacks.EMA` (Lightning's EMAWeightAveraging with the decay
warmed up) after SampleGrid in the callbacks. It averages D too, which no reported number uses.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from gen_lightning import losses
from gen_lightning.errors import ConfigError, check_rules
from gen_lightning.metrics.two_sample import energy_distance
from gen_lightning.models.base import GenerativeModel, eval_mode, shape_text
from gen_lightning.models.self_conditioning import SelfConditioning

Loss = Literal["bce", "hinge", "wgan-gp"]

NO_LIKELIHOOD = "a GAN defines no density, so it has no likelihood"
OMITTED_METRICS = dict.fromkeys(("test/nll_nats", "test/bpd"), NO_LIKELIHOOD) | {
    "test/kl_data_model": f"{NO_LIKELIHOOD}; KL(data || model) needs log p_model(x)"}


def _check_hparams(latent_dim: int, loss: str, n_critic: int, gp_weight: float, r1_gamma: float, real_label: float,
                   discriminator: nn.Module) -> None:
    batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in discriminator.modules())
    pack = getattr(discriminator, "pack", 1)
    check_rules([
        (latent_dim >= 1, f"latent_dim must be >= 1, got {latent_dim}"),
        (loss in ("bce", "hinge", "wgan-gp"), f"loss must be 'bce', 'hinge' or 'wgan-gp', got {loss!r}"),
        (n_critic >= 1, f"n_critic must be >= 1 (discriminator steps per generator step), got {n_critic}"),
        (gp_weight >= 0, f"gp_weight must be >= 0, got {gp_weight}"),
        (loss != "wgan-gp" or gp_weight > 0, "loss 'wgan-gp' needs gp_weight > 0 (10 in Gulrajani et al. 2017)"),
        (r1_gamma >= 0, f"r1_gamma must be >= 0, got {r1_gamma}; 0 turns R1 off"),
        (0 < real_label <= 1, f"real_label must be in (0, 1], got {real_label}; 0.9 is one-sided label smoothing"),
        (loss == "bce" or real_label == 1, f"real_label={real_label} (label smoothing) applies to loss 'bce' only, not {loss!r}"),
        # the gradient penalty is per example; BatchNorm mixes the examples of a batch (Gulrajani et al. 2017, sec. 4)
        (loss != "wgan-gp" or not batchnorm, "loss 'wgan-gp' needs a discriminator without BatchNorm (the gradient "
                                              "penalty is per example); set the discriminator's norm: layer (or none)"),
        (loss != "wgan-gp" or pack == 1, f"loss 'wgan-gp' needs a discriminator without packs (pack: {pack}): its gradient "
                                         "penalty interpolates and normalizes per example; set pack: 1"),
    ])


class GAN(GenerativeModel):
    """An unconditional GAN with injected networks, loss, optimizers and schedulers.

    `generator`: `(B, latent_dim) -> (B, *data_shape)`; `discriminator`: `(B, *data_shape) -> (B,)`.
    `g_optimizer`/`d_optimizer` each get their own learning rate and betas from the config;
    `g_scheduler`/`d_scheduler` step once per epoch.
    """

    optimizer_names = ("generator", "discriminator")  # configure_optimizers returns [G's, D's]
    divergence_advice = "Lower the learning rates, or try loss: hinge, r1_gamma > 0 or a spectral-norm discriminator"

    conditional = False
    network_evaluations_per_sample = 1
    # what metrics.json says (MetricsWriter): no density to evaluate
    omitted_metrics = OMITTED_METRICS
    metric_conventions = {"val/loss": "energy distance between a validation batch and as many G samples (fixed seeds), on flattened x"}

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        latent_dim: int,
        g_optimizer: OptimizerCallable = torch.optim.Adam,
        d_optimizer: OptimizerCallable = torch.optim.Adam,
        g_scheduler: LRSchedulerCallable | None = None,
        d_scheduler: LRSchedulerCallable | None = None,
        loss: Loss = "bce",
        n_critic: int = 1,
        gp_weight: float = 10.0,
        r1_gamma: float = 0.0,
        real_label: float = 1.0,
        predict_seed: int = 1234,
        mode_seeking: float = 0.0,
    ):
        super().__init__(predict_seed=predict_seed)
        _check_hparams(latent_dim, loss, n_critic, gp_weight, r1_gamma, real_label, discriminator)
        check_rules([
            (mode_seeking >= 0, f"mode_seeking must be >= 0, got {mode_seeking}; 0 turns it off, MSGAN used 1"),
            # WGAN-GP interpolates real and fake images under one label each; paired fakes carry other labels
            (not (mode_seeking > 0 and self.networks_take_labels and loss == "wgan-gp"),
             "mode_seeking pairs the fakes' labels, which the conditional WGAN-GP penalty cannot follow; use loss: bce or hinge"),
        ])
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator, self.discriminator, self.latent_dim = generator, discriminator, latent_dim
        self.g_optimizer, self.d_optimizer = g_optimizer, d_optimizer
        self.g_scheduler, self.d_scheduler = g_scheduler, d_scheduler
        self.loss, self.n_critic, self.gp_weight, self.r1_gamma = loss, n_critic, gp_weight, r1_gamma
        self.mode_seeking = mode_seeking
        self.d_loss_fn, self.g_loss_fn = {
            "bce": (functools.partial(losses.d_loss_bce, real_target=real_label), losses.g_loss_bce),
            "hinge": (losses.d_loss_hinge, losses.g_loss_hinge),
            "wgan-gp": (losses.d_loss_wgan, losses.g_loss_wgan),
        }[loss]

    # ---- the two players ------------------------------------------------------------------
    def labels_of(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """The labels the networks see for the batch `(x, y)`: y for a conditional GAN, none otherwise (the
        self-conditioned GAN: the clusters of x)."""
        return y if self.conditional else None

    def eval_labels(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
        """The labels of the fakes that val/loss compares with the batch `(x, y)`: the batch's own for a conditional
        GAN, none otherwise (the self-conditioned GAN draws clusters as it samples)."""
        return self.labels_of(x, y)

    def generate(self, n: int, labels: torch.Tensor | None, generator: torch.Generator | None = None) -> torch.Tensor:
        """G(z) for z ~ N(0, I) `(n, latent_dim)`, drawn with `generator`."""
        return self.generate_with_latents(n, labels, generator)[0]

    def generate_with_latents(self, n: int, labels: torch.Tensor | None,
                              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(G(z), z) for z ~ N(0, I) `(n, latent_dim)`, drawn with `generator`."""
        z = torch.randn(n, self.latent_dim, device=self.device, generator=generator)
        return (self.generator(z) if labels is None else self.generator(z, labels)), z

    def paired(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        """The fakes' labels under mode seeking: the second half of the batch repeats the first half's, so that
        fake[i] and fake[h + i] differ by their latents only (an odd batch's last label stays)."""
        if labels is None or self.mode_seeking == 0:
            return labels
        h = labels.shape[0] // 2
        return torch.cat([labels[:h], labels[:h], labels[2 * h :]])

    @property
    def networks_take_labels(self) -> bool:
        """Whether G and D read labels: the data's for a conditional GAN, clusters for the self-conditioned one."""
        return self.conditional

    def check_gan_net_classes(self, dm) -> None:
        self.check_net_classes(dm, "gen_lightning.models.gan.ConditionalGAN", generator=self.generator, discriminator=self.discriminator)

    def critic(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """D's raw output (logit, or critic value for WGAN), `(B,)`."""
        return self.discriminator(x) if labels is None else self.discriminator(x, labels)

    # ---- training ---------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        labels = self.labels_of(x, y)
        fake_labels = self.paired(labels)
        opt_g, opt_d = self.optimizers()
        g_turn = (batch_idx + 1) % self.n_critic == 0
        with torch.set_grad_enabled(g_turn):  # G's graph is needed only on its turn
            fake, z = self.generate_with_latents(x.shape[0], fake_labels)  # built once: D sees it detached, G through it
        self.discriminator_step(opt_d, x, fake.detach(), labels, fake_labels)
        if g_turn:
            self.generator_step(opt_g, fake, fake_labels, z)

    def discriminator_step(self, opt, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor | None,
                           fake_labels: torch.Tensor | None = None) -> torch.Tensor:
        """One update of D on real and (detached) generated samples; G is frozen. `fake_labels`: the fakes' labels
        when they are not the real batch's (mode seeking pairs them)."""
        fake_labels = labels if fake_labels is None else fake_labels
        with self.toggled_optimizer(opt):
            real_logits, fake_logits = self.critic(real, labels), self.critic(fake, fake_labels)
            loss = self.d_loss_fn(real_logits, fake_logits) + self.penalty(real, fake, labels)
            grad_norm = self.update(opt, loss)
        self.log_step({"train/d_loss": loss, "train/d_real": self.d_output(real_logits),
                       "train/d_fake": self.d_output(fake_logits), "train/d_grad_norm": grad_norm})
        return loss

    def generator_step(self, opt, fake: torch.Tensor, labels: torch.Tensor | None, z: torch.Tensor | None = None) -> torch.Tensor:
        """One update of G through D's score of its samples (plus the mode-seeking term of the latents `z`); D is frozen."""
        with self.toggled_optimizer(opt):
            loss = self.g_loss_fn(self.critic(fake, labels))
            logged = {"train/g_loss": loss}
            if self.mode_seeking > 0:
                logged["train/mode_seeking"] = ms = losses.mode_seeking_loss(fake, z)
                loss = loss + self.mode_seeking * ms
            logged["train/g_grad_norm"] = self.update(opt, loss)
        self.log_step(logged, prog_bar="train/g_loss")
        return loss

    def update(self, opt, loss: torch.Tensor) -> torch.Tensor:
        """Backward and step; the divergence guard (models/divergence.py) raises before the step when the loss or gradients are not finite."""
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt.step()
        return self.last_grad_norm

    def d_output(self, logits: torch.Tensor) -> torch.Tensor:
        """What `train/d_real` and `train/d_fake` show: mean D(x) as a probability for BCE, raw otherwise."""
        return (torch.sigmoid(logits) if self.loss == "bce" else logits).mean()

    def penalty(self, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Gradient penalty (WGAN-GP) plus R1, each with its weight; zero when neither is on."""
        total = torch.zeros((), device=real.device)
        if self.loss == "wgan-gp":
            total = total + self.gp_weight * losses.gradient_penalty(self.discriminator, real, fake, labels)
        if self.r1_gamma > 0:
            total = total + 0.5 * self.r1_gamma * losses.r1_penalty(self.discriminator, real, labels)
        return total

    def configure_optimizers(self):
        opt_g = self.build_optimizer(self.g_optimizer, self.generator.parameters(), "g_optimizer")
        opt_d = self.build_optimizer(self.d_optimizer, self.discriminator.parameters(), "d_optimizer")
        schedulers = [make(opt) for make, opt in ((self.g_scheduler, opt_g), (self.d_scheduler, opt_d)) if make is not None]
        if any(isinstance(s, ReduceLROnPlateau) for s in schedulers):
            raise ConfigError("the GAN steps its schedulers once per epoch without a metric; use a scheduler such as "
                              "StepLR, ExponentialLR or CosineAnnealingLR instead of ReduceLROnPlateau")
        return [opt_g, opt_d], schedulers

    def on_train_epoch_end(self) -> None:
        for config in self.trainer.lr_scheduler_configs:  # manual optimization: Lightning leaves stepping to us
            config.scheduler.step()

    # ---- validation and test: a sample-quality proxy ------------------------------------
    def energy_distance_to(self, batch, batch_idx: int) -> torch.Tensor:
        """Energy distance between the batch and G samples drawn with seed `batch_idx` (and the batch's labels)."""
        x, y = batch
        g = torch.Generator(device=self.device).manual_seed(batch_idx)
        fake = self.generate(x.shape[0], self.eval_labels(x, y, g), generator=g)
        return energy_distance(fake, x)

    def validation_step(self, batch, batch_idx: int) -> None:
        self.log("val/loss", self.energy_distance_to(batch, batch_idx), prog_bar=True, batch_size=batch[0].shape[0])

    def test_step(self, batch, batch_idx: int) -> None:
        self.log("test/energy_distance", self.energy_distance_to(batch, batch_idx), batch_size=batch[0].shape[0])

    # ---- sampling -----------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples `(n, *data_shape)` from G in eval mode, z ~ N(0, I) drawn with `generator`."""
        labels = self.check_sample_args(n, labels)
        with eval_mode(self.generator):
            x = self.generate(n, self.sampling_labels(n, labels, generator), generator)
        return x if self.value_range is None else x.clamp(*self.value_range)

    def sampling_labels(self, n: int, labels: torch.Tensor | None, generator: torch.Generator | None) -> torch.Tensor | None:
        """The labels G samples with: the caller's (the self-conditioned GAN draws clusters instead)."""
        return labels

    # ---- data contract ----------------------------------------------------------------
    def check_data(self, dm) -> None:
        """Images must be in [-1, 1] (G ends in tanh), and one dummy pass of G and D must fit the data's shape."""
        self.require_symmetric_range(dm, "a GAN generator ends in tanh, so images must be in [-1, 1]")
        self.check_gan_net_classes(dm)
        shape = tuple(dm.data_shape)
        labels = torch.zeros(2, dtype=torch.long, device=self.device) if self.networks_take_labels else None
        seeded = torch.Generator(device=self.device).manual_seed(0)  # the probe leaves the global RNG alone
        x = self.probe(self.generator, lambda: self.generate(2, labels, seeded), f"the generator cannot read latents "
                       f"{shape_text((self.latent_dim,))}", f"set the generator's latent_dim to {self.latent_dim}")
        if tuple(x.shape[1:]) != shape:
            raise ConfigError(f"the generator outputs {shape_text(x.shape[1:])} but {dm.dataset_name} has shape {shape_text(shape)}; "
                              "set the generator's channels/image_size (DCGAN) or data_shape (MLP)")
        pack = getattr(self.discriminator, "pack", 1)  # PacGAN: one logit per `pack` examples
        x = torch.zeros(2 * pack, *shape, device=self.device)
        logits = self.probe(self.discriminator, lambda: self.critic(x, labels), f"the discriminator cannot read data of shape "
                            f"{shape_text(shape)}", "set the discriminator's channels/image_size (DCGAN) or data_shape (MLP)")
        if tuple(logits.shape) != (2,):
            raise ConfigError(f"the discriminator must output one logit per example (or pack), shape (B,); "
                              f"got {tuple(logits.shape)} for {2 * pack} examples")


class ConditionalGAN(GAN):
    """A class-conditional GAN: G(z, y) and D(x, y); the networks need `num_classes` set to the data's."""

    conditional = True


class SelfConditionedGAN(SelfConditioning, GAN):
    """An unconditional GAN trained as a conditional one on clusters of the data (Liu et al. 2020, "Diverse Image
    Generation via Self-Conditioned GANs"): the class conditioning that keeps a cGAN from dropping modes, without labels.

    When a fit starts, k-means splits `cluster_images` training examples into `num_clusters` clusters of their pixels
    (models/self_conditioning.py); G(z, c) and D(x, c) train on each example's nearest cluster as in ConditionalGAN
    (networks with `num_classes: num_clusters`), and sampling draws c in proportion to the clusters' sizes. No dataset
    label is read: `sample(n)` takes none, and the model reports as unconditional. The paper clusters D's features and
    re-clusters during training; these clusters are fixed, from pixels.
    """

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        latent_dim: int,
        num_clusters: int = 50,
        cluster_images: int = 20000,
        cluster_seed: int = 0,
        g_optimizer: OptimizerCallable = torch.optim.Adam,
        d_optimizer: OptimizerCallable = torch.optim.Adam,
        g_scheduler: LRSchedulerCallable | None = None,
        d_scheduler: LRSchedulerCallable | None = None,
        loss: Loss = "bce",
        n_critic: int = 1,
        gp_weight: float = 10.0,
        r1_gamma: float = 0.0,
        real_label: float = 1.0,
        predict_seed: int = 1234,
        mode_seeking: float = 0.0,
    ):
        super().__init__(generator, discriminator, latent_dim, g_optimizer, d_optimizer, g_scheduler, d_scheduler, loss,
                         n_critic, gp_weight, r1_gamma, real_label, predict_seed, mode_seeking)
        self.init_self_conditioning(num_clusters, cluster_images, cluster_seed)

    @property
    def networks_take_labels(self) -> bool:
        return True

    def check_gan_net_classes(self, dm) -> None:
        self.check_cluster_net("generator", self.generator)
        self.check_cluster_net("discriminator", self.discriminator)

    def eval_labels(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.draw_clusters(x.shape[0], generator)

    def sampling_labels(self, n: int, labels: torch.Tensor | None, generator: torch.Generator | None) -> torch.Tensor:
        return self.draw_clusters(n, generator)
