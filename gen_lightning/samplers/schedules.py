"""Noise schedules of the discrete diffusion process, and what a denoising network's output means.

Notation of Ho et al. 2020 (DDPM): beta_t, alpha_t = 1 - beta_t, alpha_bar_t = prod_{s<=t} alpha_s,
for t = 0..T-1 (the paper's t = 1..T shifted by one, as in its code). The forward process is

    q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)                       (DDPM eq. 4)

and its posterior, with alpha_bar_prev_t = alpha_bar_{t-1} (1 at t = 0),

    q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I),                                       (DDPM eq. 6-7)
    mu~_t = coef1_t x_0 + coef2_t x_t,
    coef1_t = beta_t sqrt(alpha_bar_prev_t) / (1 - alpha_bar_t),
    coef2_t = sqrt(alpha_t) (1 - alpha_bar_prev_t) / (1 - alpha_bar_t),
    beta~_t = beta_t (1 - alpha_bar_prev_t) / (1 - alpha_bar_t)   ("fixed small"; "fixed large" is beta_t).

A schedule is a plain object that holds these as float32 tensors (computed in float64), moved with
`.to(device)`. `LinearSchedule` is the DDPM paper's (beta 1e-4..0.02, T = 1000) and
`CosineSchedule` is Nichol & Dhariwal's (2021, eq. 17): alpha_bar_t = f(t)/f(0),
f(t) = cos^2(((t/T + s)/(1 + s)) pi/2), with beta_t clipped at 0.999.

`Denoiser` turns a network's output into the pair (x0_hat, eps_hat) the samplers need, for the
three parameterizations (eps, x0, v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0; Salimans &
Ho 2022), with optional clipping of x0_hat to the data range and classifier-free guidance.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from gen_lightning.errors import ConfigError

Prediction = Literal["eps", "x0", "v"]


def gather(a: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """a[t] (B,) reshaped to (B, 1, ..., 1), to broadcast against x (B, ...)."""
    return a[t].reshape(t.shape[0], *([1] * (x.ndim - 1)))


class NoiseSchedule:
    """A discrete-time variance-preserving schedule, from its betas (T,)."""

    def __init__(self, betas: torch.Tensor):
        betas = betas.double()
        if betas.ndim != 1 or len(betas) < 1 or not ((betas > 0) & (betas < 1)).all():
            raise ConfigError("a noise schedule needs betas in (0, 1), one per step")
        alphas = 1.0 - betas
        alpha_bar = torch.cumprod(alphas, 0)
        alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        self.num_steps = len(betas)
        self.alpha_bar_f64 = alpha_bar  # float64 on the CPU, for per-step scalars (DDIM), never moved
        tensors = {
            "betas": betas,
            "alphas": alphas,
            "alpha_bar": alpha_bar,
            "alpha_bar_prev": alpha_bar_prev,
            "sqrt_alpha_bar": alpha_bar.sqrt(),
            "sqrt_one_minus_alpha_bar": (1.0 - alpha_bar).sqrt(),
            "posterior_variance": betas * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar),  # beta~_t, DDPM eq. 7
            "posterior_mean_coef1": betas * alpha_bar_prev.sqrt() / (1.0 - alpha_bar),
            "posterior_mean_coef2": alphas.sqrt() * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar),
        }
        for name, value in tensors.items():
            setattr(self, name, value.float())
        self._names = list(tensors)

    def net_time(self, t: torch.Tensor) -> torch.Tensor:
        """Integer steps t (B,) as the nets' continuous time in [0, 1): t / T (nets/unet.timestep_embedding)."""
        return t.float() / self.num_steps

    def step_of(self, time: torch.Tensor) -> torch.Tensor:
        """The inverse of `net_time`: the integer steps (B,) long of net times i / T (for oracles and tests)."""
        return (time * self.num_steps).round().long()

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def to(self, device: torch.device | str) -> "NoiseSchedule":
        """Move every tensor to `device` (a no-op when they are there already); returns self."""
        if torch.device(device) != self.device:
            for name in self._names:
                setattr(self, name, getattr(self, name).to(device))
        return self

    def variance(self, kind: Literal["fixed_small", "fixed_large"]) -> torch.Tensor:
        """sigma_t^2 of the reverse step (T,): beta~_t ("fixed_small") or beta_t ("fixed_large"), DDPM sec. 3.2."""
        if kind == "fixed_small":
            return self.posterior_variance
        if kind == "fixed_large":
            return self.betas
        raise ConfigError(f"variance must be 'fixed_small' or 'fixed_large', got {kind!r}")

    # ---- the forward process and its posterior ------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps (DDPM eq. 4, reparameterized)."""
        return gather(self.sqrt_alpha_bar, t, x0) * x0 + gather(self.sqrt_one_minus_alpha_bar, t, x0) * eps

    def q_posterior_mean(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """mu~_t(x_t, x_0) of q(x_{t-1} | x_t, x_0) (DDPM eq. 7)."""
        return gather(self.posterior_mean_coef1, t, xt) * x0 + gather(self.posterior_mean_coef2, t, xt) * xt

    # ---- conversions between the parameterizations --------------------------------------
    def x0_from_eps(self, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t) (DDPM eq. 4 solved for x0)."""
        return (xt - gather(self.sqrt_one_minus_alpha_bar, t, xt) * eps) / gather(self.sqrt_alpha_bar, t, xt)

    def eps_from_x0(self, xt: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """eps = (x_t - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t)."""
        return (xt - gather(self.sqrt_alpha_bar, t, xt) * x0) / gather(self.sqrt_one_minus_alpha_bar, t, xt)

    def v_target(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0 (Salimans & Ho 2022, sec. 4)."""
        return gather(self.sqrt_alpha_bar, t, x0) * eps - gather(self.sqrt_one_minus_alpha_bar, t, x0) * x0

    def x0_from_v(self, xt: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """x0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v."""
        return gather(self.sqrt_alpha_bar, t, xt) * xt - gather(self.sqrt_one_minus_alpha_bar, t, xt) * v


class LinearSchedule(NoiseSchedule):
    """beta_t linear from `beta_start` to `beta_end` over `num_steps` (DDPM: 1e-4, 0.02, T = 1000)."""

    def __init__(self, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        if num_steps < 1:
            raise ConfigError(f"num_steps must be >= 1, got {num_steps}")
        if not 0 < beta_start <= beta_end < 1:
            raise ConfigError(f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}")
        super().__init__(torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64))


class CosineSchedule(NoiseSchedule):
    """alpha_bar_t = f(t+1)/f(0), f(u) = cos^2(((u/T + s)/(1 + s)) pi/2); beta_t = min(1 - alpha_bar_t/alpha_bar_{t-1}, max_beta).

    Index t = 0..T-1 here is the paper's t = 1..T (Nichol & Dhariwal 2021, eq. 17).
    """

    def __init__(self, num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999):
        if num_steps < 1:
            raise ConfigError(f"num_steps must be >= 1, got {num_steps}")
        if s < 0 or not 0 < max_beta < 1:
            raise ConfigError(f"need s >= 0 and 0 < max_beta < 1, got s={s}, max_beta={max_beta}")
        u = torch.arange(num_steps + 1, dtype=torch.float64)
        f = torch.cos((u / num_steps + s) / (1 + s) * math.pi / 2) ** 2
        alpha_bar = f / f[0]  # (T + 1,), alpha_bar at the paper's t = 0..T
        betas = (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)
        super().__init__(betas)


class Denoiser:
    """The network's prediction at (x_t, t) as (x0_hat, eps_hat), for the samplers.

    - `prediction`: what the network outputs: "eps" (DDPM), "x0", or "v".
    - `clip_range` (lo, hi): clip x0_hat to the data range and recompute eps_hat from the
      clipped x0_hat (as improved-diffusion does); None: no clipping.
    - Classifier-free guidance (Ho & Salimans 2022), with the net's null label `null_label`:
      eps = eps_uncond + w (eps_cond - eps_uncond). w = 0 is the unconditional model (one
      network pass with the null label, `labels` unused), w = 1 the conditional model (one pass),
      any other w two passes; Ho & Salimans' guidance weight is w - 1. Guidance combines the
      eps predictions, whatever the parameterization (x0 and v outputs are converted first).
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: NoiseSchedule,
        prediction: Prediction = "eps",
        labels: torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        null_label: int | None = None,
        clip_range: tuple[float, float] | None = None,
    ):
        if prediction not in ("eps", "x0", "v"):
            raise ConfigError(f"prediction must be 'eps', 'x0' or 'v', got {prediction!r}")
        if guidance_scale != 1.0 and null_label is None:
            raise ConfigError(f"guidance_scale {guidance_scale} needs a class-conditional net with a null label")
        self.net, self.schedule, self.prediction = net, schedule, prediction
        self.labels, self.guidance_scale, self.null_label, self.clip_range = labels, guidance_scale, null_label, clip_range

    @property
    def evaluations_per_step(self) -> int:
        return 1 if self.guidance_scale in (0.0, 1.0) else 2

    def predict(self, xt: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One network pass, as (x0_hat, eps_hat)."""
        out = self.net(xt, self.schedule.net_time(t), labels)  # step i as time i / T
        if self.prediction == "eps":
            return self.schedule.x0_from_eps(xt, t, out), out
        x0 = out if self.prediction == "x0" else self.schedule.x0_from_v(xt, t, out)
        return x0, self.schedule.eps_from_x0(xt, t, x0)

    def guided(self, xt: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.guidance_scale
        if self.null_label is None or w == 1.0:
            return self.predict(xt, t, self.labels)
        null = torch.full((xt.shape[0],), self.null_label, device=xt.device, dtype=torch.long)
        x0_uncond, eps_uncond = self.predict(xt, t, null)
        if w == 0.0:
            return x0_uncond, eps_uncond
        eps = eps_uncond + w * (self.predict(xt, t, self.labels)[1] - eps_uncond)
        return self.schedule.x0_from_eps(xt, t, eps), eps

    def __call__(self, xt: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0_hat, eps_hat) at x_t and integer timesteps t (B,)."""
        x0, eps = self.guided(xt, t)
        if self.clip_range is not None:
            x0 = x0.clamp(*self.clip_range)
            eps = self.schedule.eps_from_x0(xt, t, x0)
        return x0, eps
