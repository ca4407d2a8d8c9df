"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2): a second-order multistep solver of the
diffusion ODE in the data-prediction form, for trained DDPM checkpoints (10-20 network evaluations).

With alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t) and lambda_t = log(alpha_t / sigma_t),
a step from s to t (h = lambda_t - lambda_s > 0) with the data prediction D is

    x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D                        (DPM-Solver++ eq. 9)

First order, D = x0_hat(x_s, s), this is DDIM with eta = 0. The 2M step reuses the previous step's
x0_hat (no extra evaluation): with r = h_prev / h,

    D = (1 + 1/(2r)) x0_hat(x_s, s) - 1/(2r) x0_hat(x_prev, prev).                (Algorithm 2)

The first step has no previous x0_hat and is first order; so is the last one, which lands on the clean
data (sigma = 0, h = infinity, where x_t = D and the multistep correction has no meaning; diffusers'
`final_sigmas_type="zero"` does the same). Timesteps: `num_steps` values of linspace(T-1, 0, num_steps+1)
rounded, the last (0) dropped and replaced by the clean data (diffusers' "linspace" spacing).
"""

from __future__ import annotations

import math

import torch

from gen_lightning.errors import ConfigError
from gen_lightning.samplers.ddpm import DiffusionSampler
from gen_lightning.samplers.schedules import Denoiser, NoiseSchedule


class DPMSolverPP2MSampler(DiffusionSampler):
    def __init__(self, num_steps: int = 20, clip_x0: bool = True, progress: bool | None = None):
        if num_steps < 1:
            raise ConfigError(f"num_steps must be >= 1, got {num_steps}")
        super().__init__(clip_x0=clip_x0, progress=progress)
        self.sampling_steps = num_steps
        self._previous: tuple[torch.Tensor, float] | None = None  # (x0_hat, h) of the step before, within one sample()

    def timesteps(self, schedule: NoiseSchedule) -> list[int]:
        T, S = schedule.num_steps, self.sampling_steps
        if S > T:
            raise ConfigError(f"DPM-Solver++ num_steps ({S}) must be <= the schedule's num_steps ({T})")
        return [round((T - 1) * (1 - k / S)) for k in range(S)]

    def sample(self, denoiser: Denoiser, shape, generator=None, return_trajectory=False, x_init=None, device=None):
        self._previous = None
        try:
            return super().sample(denoiser, shape, generator, return_trajectory, x_init, device)
        finally:
            self._previous = None

    def step(self, denoiser: Denoiser, xt: torch.Tensor, t: int, t_prev: int, generator: torch.Generator | None) -> torch.Tensor:
        """One step from timestep t to t_prev (-1: the clean data)."""
        x0, _ = denoiser(xt, torch.full((xt.shape[0],), t, device=xt.device, dtype=torch.long))
        if t_prev < 0:
            return x0
        ab = denoiser.schedule.alpha_bar_f64
        alpha_s, sigma_s = math.sqrt(ab[t].item()), math.sqrt(1 - ab[t].item())
        alpha_t, sigma_t = math.sqrt(ab[t_prev].item()), math.sqrt(1 - ab[t_prev].item())
        h = math.log(alpha_t / sigma_t) - math.log(alpha_s / sigma_s)
        d = x0
        if self._previous is not None:
            x0_before, h_before = self._previous
            r = h_before / h
            d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_before
        self._previous = (x0, h)
        return (sigma_t / sigma_s) * xt - alpha_t * math.expm1(-h) * d
