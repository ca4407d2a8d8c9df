"""Flow matching (Lipman et al. 2023), rectified flow (Liu et al. 2023) and minibatch OT-CFM (Tong et al. 2024).

Time runs from t = 0 (noise x0 ~ N(0, I)) to t = 1 (data x1). Training regresses the network on the
velocity of a straight path between a pair (x0, x1):

    x_t = (1 - (1 - sigma_min) t) x0 + t x1,   u_t = x1 - (1 - sigma_min) x0,   loss = |v(x_t, t) - u_t|^2

(Lipman et al. eq. 20-23, the optimal-transport conditional path; sigma_min = 0 is rectified flow's
linear interpolation and I-CFM with sigma = 0). The pairing of a batch (`coupling`):

- "independent": x0 drawn independently of x1 (I-CFM, rectified flow's first stage);
- "ot": the batch's noise reordered by the exact optimal assignment under squared Euclidean cost
  (OT-CFM; scipy's `linear_sum_assignment`), which straightens the learned paths;
- reflow (`reflow_from`, a trained flow matching checkpoint): x1 is the teacher's own ODE solution
  from x0, the pairs of rectified flow's second stage (Liu et al. sec. 2.2), drawn per batch; the student
  starts from the teacher's weights (`reflow_init`), as Liu et al. fine-tune the 2-rectified flow.

Sampling integrates dx/dt = v(x, t) from 0 to 1 with an ODE sampler (samplers/ode.py: Euler, Heun).
The networks (UNet, DenoiserMLP) take this t in [0, 1] as it is: their one time convention
(nets/unet.timestep_embedding).

`ConditionalFlowMatching` trains with label dropout (label -> the null token `num_classes`) and samples
with classifier-free guidance on the velocity: v = v_uncond + w (v_cond - v_uncond); w = 0 is exactly
the unconditional model, w = 1 the conditional one.

Likelihood: `ode_log_prob(x)` by the probability-flow ODE (samplers/ode.py); the ODELikelihood callback
(callbacks/ode_likelihood.py) turns it into test/nll_nats, bits/dim and KL(data || model).

EMA: add `lightning.pytorch.callbacks.EMAWeightAveraging` after SampleGrid in the callbacks.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from gen_lightning.errors import ConfigError
from gen_lightning.likelihoods import dequantize_in_range
from gen_lightning.models.base import GenerativeModel, check_lr_schedule, eval_mode
from gen_lightning.samplers.ode import (EulerSampler, ODESampler, autograd_ready, likelihood_grid, ode_log_prob,
                                       standard_normal_log_prob)

Coupling = Literal["independent", "ot"]


def ot_pairing(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """The permutation p minimizing sum_i |x0[p[i]] - x1[i]|^2 (an exact assignment, O(B^3))."""
    from scipy.optimize import linear_sum_assignment

    cost = torch.cdist(x0.flatten(1).double(), x1.flatten(1).double()).pow(2)
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    perm = torch.empty(len(cols), dtype=torch.long)
    perm[torch.as_tensor(cols)] = torch.as_tensor(rows)  # x1[cols[k]] is paired with x0[rows[k]]
    return perm.to(x0.device)


class FlowMatching(GenerativeModel):
    """Unconditional flow matching with an injected velocity net, ODE sampler and optimizer."""

    conditional = False
    sampling_options = ("predict_seed", "sampler", "guidance_scale")
    divergence_advice = "Lower the learning rate, or add trainer.gradient_clip_val: 1.0."

    def __init__(
        self,
        net: nn.Module,
        sampler: ODESampler | None = None,
        coupling: Coupling = "independent",
        sigma_min: float = 0.0,
        reflow_from: str | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_warmup_steps: int = 0,
        dequantize: bool = False,
        reflow_init: bool = True,
        predict_seed: int = 1234,
        lr_schedule: Literal["constant", "cosine"] = "constant",
    ):
        super().__init__(predict_seed=predict_seed)
        check_lr_schedule(lr_schedule)
        if coupling not in ("independent", "ot"):
            raise ConfigError(f"coupling must be 'independent' or 'ot', got {coupling!r}")
        if not 0.0 <= sigma_min < 1.0:
            raise ConfigError(f"sigma_min must be in [0, 1), got {sigma_min}")
        if lr_warmup_steps < 0:
            raise ConfigError(f"lr_warmup_steps must be >= 0, got {lr_warmup_steps}")
        self.save_hyperparameters()
        self.net = net
        self.sampler = sampler if sampler is not None else EulerSampler(50)
        self.coupling, self.sigma_min, self.reflow_from, self.reflow_init = coupling, sigma_min, reflow_from, reflow_init
        self.optimizer, self.lr_warmup_steps, self.dequantize = optimizer, lr_warmup_steps, dequantize
        self.lr_schedule = lr_schedule
        self.guidance_scale = 1.0
        self._teacher: list[FlowMatching] = []  # reflow's frozen teacher, kept out of the state_dict

    @property
    def network_evaluations_per_sample(self) -> int:
        guided = self.conditional and self.guidance_scale not in (0.0, 1.0)
        return self.sampler.evaluations * (2 if guided else 1)

    # ---- reflow: the teacher --------------------------------------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and self.reflow_from and not self._teacher:
            teacher = type(self).load_from_checkpoint(self.reflow_from, map_location=self.device, weights_only=False)
            teacher.requires_grad_(False).eval()
            self._teacher.append(teacher)
            if self.reflow_init:  # Liu et al. fine-tune the 2-rectified flow from the 1-rectified one
                try:
                    self.net.load_state_dict(teacher.net.state_dict())
                except RuntimeError as e:
                    raise ConfigError(f"reflow_init copies the teacher's net into the student, but they differ "
                                      f"({str(e).splitlines()[0]}); give them one architecture or set reflow_init: false") from None

    # ---- training ---------------------------------------------------------------------------
    def training_labels(self, y: torch.Tensor) -> torch.Tensor | None:
        return None

    def heldout_labels(self, y: torch.Tensor) -> torch.Tensor | None:
        return None

    def pairs(self, x1: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, x1) for one batch, by the configured coupling."""
        x0 = torch.randn(x1.shape, generator=generator, device=x1.device)
        if self._teacher:
            teacher = self._teacher[0].to(x1.device)
            return x0, teacher.sampler.sample(teacher.velocity(labels), tuple(x1.shape), x_init=x0)
        if self.coupling == "ot":
            x0 = x0[ot_pairing(x0, x1)]
        return x0, x1

    def loss(self, x1: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.dequantize:
            x1 = dequantize_in_range(x1, self.value_range, generator)
        x0, x1 = self.pairs(x1, labels, generator)
        t = torch.rand(x1.shape[0], generator=generator, device=x1.device)
        tb = t.view(-1, *([1] * (x1.ndim - 1)))
        xt = (1 - (1 - self.sigma_min) * tb) * x0 + tb * x1
        target = x1 - (1 - self.sigma_min) * x0
        return F.mse_loss(self.net(xt, t, labels).float(), target)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x1, y = batch
        loss = self.loss(x1, self.training_labels(y))
        self.log_step({"train/loss": loss})
        return loss

    def configure_optimizers(self):
        return self.optimizer_with_warmup(self.optimizer, self.net.parameters(), self.lr_warmup_steps, self.lr_schedule)

    # ---- validation and test ----------------------------------------------------------------
    def heldout_loss(self, batch, batch_idx: int) -> torch.Tensor:
        x1, y = batch
        g = torch.Generator(device=x1.device).manual_seed(batch_idx)
        return self.loss(x1, self.heldout_labels(y), generator=g)

    def validation_step(self, batch, batch_idx: int) -> None:
        self.log("val/loss", self.heldout_loss(batch, batch_idx), prog_bar=True, batch_size=batch[0].shape[0])

    def test_step(self, batch, batch_idx: int) -> None:
        self.log("test/loss", self.heldout_loss(batch, batch_idx), batch_size=batch[0].shape[0])

    def ode_log_prob(self, x: torch.Tensor, labels: torch.Tensor | None = None, steps: int = 50, probes: int | None = 1,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """log p(x) per example (B,), nats, of continuous x by the probability-flow ODE from t = 1 back to t = 0
        (Heun, `steps` steps at t = 1 - u_k of samplers.ode.likelihood_grid; `probes` Hutchinson probes, None: the
        exact trace). Used by callbacks.ODELikelihood."""
        labels = autograd_ready(None if labels is None else labels.to(self.device))
        times = [1.0 - u for u in likelihood_grid(steps)]  # fine steps at the data end, t = 1
        with eval_mode(self.net):
            return ode_log_prob(self.velocity(labels), x, times, standard_normal_log_prob, probes, generator)

    # ---- sampling -----------------------------------------------------------------------
    def velocity(self, labels: torch.Tensor | None):
        """The field the ODE samplers integrate: field(x, t) with t a float in [0, 1], guided for conditional models."""
        w, null = self.guidance_scale, self.num_classes

        def field(x: torch.Tensor, t: float) -> torch.Tensor:
            tb = torch.full((x.shape[0],), t, device=x.device)
            if not self.conditional or w == 1.0:
                return self.net(x, tb, labels)
            v_uncond = self.net(x, tb, torch.full((x.shape[0],), null, device=x.device, dtype=torch.long))
            return v_uncond if w == 0.0 else v_uncond + w * (self.net(x, tb, labels) - v_uncond)

        return field

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None, generator: torch.Generator | None = None,
               return_trajectory: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """n samples `(n, *data_shape)`: x(0) ~ N(0, I) drawn with `generator`, integrated to t = 1 in eval mode; with
        `return_trajectory`, also x(0) and x after each step, `(S + 1, n, *data_shape)` on the CPU."""
        labels = self.check_sample_args(n, labels)
        with eval_mode(self.net):
            out = self.sampler.sample(self.velocity(labels), (n, *self.data_shape), generator, return_trajectory, device=self.device)
        return self.clamped(out, return_trajectory)

    # ---- data contract ----------------------------------------------------------------
    def check_data(self, dm) -> None:
        self.check_dequantize(dm, self.dequantize)
        self.check_net_classes(dm, "gen_lightning.models.flow_matching.ConditionalFlowMatching", net=self.net)
        self.probe_time_net(self.net, tuple(dm.data_shape))

    # ---- what metrics.json says (MetricsWriter); what callbacks.ODELikelihood logs is not reported omitted ----
    omitted_metrics = dict.fromkeys(("test/nll_nats", "test/kl_data_model"), "the probability-flow likelihood needs the ODELikelihood callback")
    metric_conventions = {"test/loss": "flow matching MSE on test data, t and x0 seeded by batch index"}


class ConditionalFlowMatching(FlowMatching):
    """Class-conditional flow matching: label dropout in training, classifier-free guidance in sampling.

    The net needs `num_classes` = the data's; its label `num_classes` is the null token.
    """

    conditional = True

    def __init__(
        self,
        net: nn.Module,
        sampler: ODESampler | None = None,
        coupling: Coupling = "independent",
        sigma_min: float = 0.0,
        reflow_from: str | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_warmup_steps: int = 0,
        dequantize: bool = False,
        reflow_init: bool = True,
        label_dropout: float = 0.1,
        guidance_scale: float = 2.0,
        predict_seed: int = 1234,
        lr_schedule: Literal["constant", "cosine"] = "constant",
    ):
        super().__init__(net, sampler, coupling, sigma_min, reflow_from, optimizer, lr_warmup_steps, dequantize, reflow_init,
                         predict_seed, lr_schedule)
        self.check_guidance(label_dropout, guidance_scale)
        self.label_dropout, self.guidance_scale = label_dropout, guidance_scale

    def training_labels(self, y: torch.Tensor) -> torch.Tensor:
        return self.drop_labels(y, self.label_dropout)

    def heldout_labels(self, y: torch.Tensor) -> torch.Tensor:
        return y
