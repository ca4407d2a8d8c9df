"""DDIM sampling (Song, Meng & Ermon 2021) on a subsequence of `num_steps` timesteps, with eta.

Step t -> t_prev (t_prev = -1 means the clean data, alpha_bar = 1):

    x_{t_prev} = sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev - sigma^2) eps_hat + sigma z   (DDIM eq. 12)
    sigma = eta sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_prev)   (DDIM eq. 16)

eta = 0 is the deterministic DDIM; eta = 1 over all T steps gives sigma^2 = beta~_t, the DDPM
posterior variance. Timesteps: "leading" spacing visits t = i * T // S for i = S-1..0 (the DDIM
paper's code: 0, 20, ..., 980 for S = 50); "trailing" visits round(T - i T/S) - 1 for i = 0..S-1, so
the chain starts at t = T-1 (Lin et al. 2024), which matters with few steps.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from gen_lightning.errors import ConfigError
from gen_lightning.samplers.ddpm import DiffusionSampler, noise_like
from gen_lightning.samplers.schedules import Denoiser, NoiseSchedule

Spacing = Literal["leading", "trailing"]


class DDIMSampler(DiffusionSampler):
    def __init__(
        self, num_steps: int = 50, eta: float = 0.0, spacing: Spacing = "leading", clip_x0: bool = True, progress: bool | None = None
    ):
        if num_steps < 1:
            raise ConfigError(f"num_steps must be >= 1, got {num_steps}")
        if eta < 0:
            raise ConfigError(f"eta must be >= 0, got {eta}")
        if spacing not in ("leading", "trailing"):
            raise ConfigError(f"spacing must be 'leading' or 'trailing', got {spacing!r}")
        super().__init__(clip_x0=clip_x0, progress=progress)
        self.sampling_steps, self.eta, self.spacing = num_steps, eta, spacing

    def timesteps(self, schedule: NoiseSchedule) -> list[int]:
        T, S = schedule.num_steps, self.sampling_steps
        if S > T:
            raise ConfigError(f"DDIM num_steps ({S}) must be <= the schedule's num_steps ({T})")
        if self.spacing == "leading":
            return [i * T // S for i in range(S - 1, -1, -1)]
        return [round(T - i * T / S) - 1 for i in range(S)]

    def coefficients(self, schedule: NoiseSchedule, t: int, t_prev: int) -> tuple[float, float, float]:
        """alpha_bar_t, alpha_bar_prev (1 when t_prev = -1) and sigma of DDIM eq. 16, in float64."""
        alpha_bar = schedule.alpha_bar_f64[t].item()
        alpha_bar_prev = schedule.alpha_bar_f64[t_prev].item() if t_prev >= 0 else 1.0
        sigma = self.eta * math.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev))
        return alpha_bar, alpha_bar_prev, sigma

    def step(self, denoiser: Denoiser, xt: torch.Tensor, t: int, t_prev: int, generator: torch.Generator | None) -> torch.Tensor:
        """DDIM eq. 12 with sigma from eq. 16."""
        schedule = denoiser.schedule
        x0, eps = denoiser(xt, torch.full((xt.shape[0],), t, device=xt.device, dtype=torch.long))
        alpha_bar, alpha_bar_prev, sigma = self.coefficients(schedule, t, t_prev)
        x_prev = math.sqrt(alpha_bar_prev) * x0 + math.sqrt(max(1 - alpha_bar_prev - sigma**2, 0.0)) * eps
        if self.eta > 0 and t_prev >= 0:
            x_prev = x_prev + sigma * noise_like(xt, generator)
        return x_prev
