"""Ancestral DDPM sampling (Ho et al. 2020, Algorithm 2), and the loop every diffusion sampler shares.

Every sampler keeps one protocol (samplers/base.py): `sample(denoiser, shape, generator=...,
return_trajectory=..., x_init=...)`. A sampler never owns the network: it receives a
`schedules.Denoiser`, which wraps the network, the schedule, the parameterization, clipping and
classifier-free guidance, and answers (x0_hat, eps_hat) at (x_t, t). The sampler only decides
which timesteps to visit and how to step from x_t to x_{t_prev}.

DDPM step, t -> t-1 (t = T-1..0 in code, the paper's T..1):

    x_{t-1} = mu~_t(x_t, x0_hat) + sigma_t z,   z ~ N(0, I), no noise at the last step,

with mu~_t the posterior mean of DDPM eq. 7. With x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_hat) /
sqrt(alpha_bar_t) unclipped, this is exactly DDPM eq. 11, 1/sqrt(alpha_t) (x_t - beta_t /
sqrt(1 - alpha_bar_t) eps_hat). sigma_t^2 is beta~_t ("fixed_small") or beta_t ("fixed_large"),
the two choices of DDPM sec. 3.2.
"""

from __future__ import annotations

from typing import Literal

import torch
from tqdm.auto import tqdm

from gen_lightning.errors import ConfigError
from gen_lightning.samplers.base import finish, show_progress, start
from gen_lightning.samplers.schedules import Denoiser, NoiseSchedule, gather

Variance = Literal["fixed_small", "fixed_large"]


class DiffusionSampler:
    """Visits `timesteps(schedule)` from noisy to clean, calling `step` at each.

    `clip_x0`: clip x0_hat to the data's value range at every step (the model passes the range
    to the Denoiser; data without a range, such as GMM, is never clipped).
    `progress`: a tqdm bar; None shows one on long runs (>= 100 steps) when stderr is a terminal.
    """

    def __init__(self, clip_x0: bool = True, progress: bool | None = None):
        self.clip_x0, self.progress = clip_x0, progress

    def timesteps(self, schedule: NoiseSchedule) -> list[int]:
        raise NotImplementedError

    def num_steps(self, schedule: NoiseSchedule) -> int:
        """Network evaluations per sample without guidance (with guidance, twice as many)."""
        return len(self.timesteps(schedule))

    def step(self, denoiser: Denoiser, xt: torch.Tensor, t: int, t_prev: int, generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def sample(
        self,
        denoiser: Denoiser,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        return_trajectory: bool = False,
        x_init: torch.Tensor | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x_0 of shape `shape`, from x_T = `x_init` or ~ N(0, I) drawn with `generator` on the schedule's device.

        With `return_trajectory`, also (S + 1, *shape) on the CPU: x_T, then x after each of the S steps.
        """
        device = device if device is not None else denoiser.schedule.device
        x = start(shape, x_init, device, lambda s, d: torch.randn(s, generator=generator, device=d))
        trajectory = [x.cpu()] if return_trajectory else None
        ts = self.timesteps(denoiser.schedule)
        bar = tqdm(ts, desc=type(self).__name__, leave=False, disable=not show_progress(self.progress, len(ts)))
        for i, t in enumerate(bar):
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1  # -1: the clean data, alpha_bar = 1
            x = self.step(denoiser, x, t, t_prev, generator)
            if trajectory is not None:
                trajectory.append(x.cpu())
        return finish(x, trajectory)


def noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


class DDPMSampler(DiffusionSampler):
    """Ancestral sampling over all T steps, with sigma_t^2 = beta~_t ("fixed_small") or beta_t ("fixed_large")."""

    def __init__(self, variance: Variance = "fixed_small", clip_x0: bool = True, progress: bool | None = None):
        if variance not in ("fixed_small", "fixed_large"):
            raise ConfigError(f"variance must be 'fixed_small' or 'fixed_large', got {variance!r}")
        super().__init__(clip_x0=clip_x0, progress=progress)
        self.variance = variance

    def timesteps(self, schedule: NoiseSchedule) -> list[int]:
        return list(range(schedule.num_steps - 1, -1, -1))

    def step(self, denoiser: Denoiser, xt: torch.Tensor, t: int, t_prev: int, generator: torch.Generator | None) -> torch.Tensor:
        """x_{t-1} = mu~_t(x_t, x0_hat) + sigma_t z (DDPM eq. 7 and 11, Algorithm 2)."""
        tb = torch.full((xt.shape[0],), t, device=xt.device, dtype=torch.long)
        x0, _ = denoiser(xt, tb)
        mean = denoiser.schedule.q_posterior_mean(x0, xt, tb)
        if t == 0:
            return mean
        sigma = gather(denoiser.schedule.variance(self.variance), tb, xt).sqrt()
        return mean + sigma * noise_like(xt, generator)
