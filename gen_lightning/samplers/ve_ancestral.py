"""Ancestral sampling of a variance-exploding score model (Song et al. 2021, appendix F, eq. 47).

The reverse of the VE forward chain x_{i+1} = x_i + sqrt(sigma_{i+1}^2 - sigma_i^2) z, run from sigma_1 down to
sigma_L over `num_steps` levels spaced geometrically (the net takes any level in between: it sees sigma as a
continuous time). Each step draws from the Gaussian posterior q(x' | x, x0) at level sigma' < sigma, with x0 replaced
by its estimate from the score (Tweedie's formula, x0 ~ x + sigma^2 s(x, sigma)):

    x' = x + (sigma^2 - sigma'^2) s(x, sigma) + sqrt(sigma'^2 (sigma^2 - sigma'^2) / sigma^2) z,   z ~ N(0, I)

This is SMLD's counterpart of DDPM's ancestral sampler (DDIM with eta = 1): its fresh noise corrects the errors of an
imperfect score along the way, where the probability-flow ODE (samplers/ode.py) carries them to the end. With the
exact score of a point mass mu, s = -(x - mu) / sigma^2, every step keeps x - mu ~ N(0, sigma'^2 I) exactly (the
tests check this), whatever the number of steps. Then, as annealed Langevin's `denoise`, one step x + sigma_L^2
s(x, sigma_L) to the posterior mean, which removes the noise left at sigma_L.

Protocol: `sample(score, shape, generator, return_trajectory, x_init, device)` with `score` a
`NoiseConditionalScore` (samplers/langevin.py), as `AnnealedLangevin`; the chains start from N(0, sigma_1^2 I).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from gen_lightning.errors import ConfigError
from gen_lightning.samplers.base import finish, show_progress, start
from gen_lightning.samplers.langevin import NoiseConditionalScore
from gen_lightning.samplers.sigmas import GeometricSigmas


class VEAncestralSampler:
    """`num_steps` ancestral steps from sigma_1 to sigma_L of the model's `GeometricSigmas`, then (`denoise`) Tweedie's step."""

    def __init__(self, num_steps: int = 50, denoise: bool = True, progress: bool | None = None):
        if num_steps < 1:
            raise ConfigError(f"VEAncestralSampler num_steps must be >= 1, got {num_steps}")
        self.num_steps, self.denoise, self.progress = num_steps, denoise, progress

    def network_evaluations(self, sigmas: GeometricSigmas) -> int:
        """Score evaluations per sample: one per step, plus one for the denoising step."""
        return self.num_steps + int(self.denoise)

    def levels(self, sigmas: GeometricSigmas) -> torch.Tensor:
        """The num_steps + 1 levels the chain visits, sigma_1 ... sigma_L, geometric: (num_steps + 1,) float64."""
        k = torch.arange(self.num_steps + 1, dtype=torch.float64) / self.num_steps
        return sigmas.sigma_max * (sigmas.sigma_min / sigmas.sigma_max) ** k

    @torch.no_grad()
    def sample(
        self,
        score: NoiseConditionalScore,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        return_trajectory: bool = False,
        x_init: torch.Tensor | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Samples `shape` = (B, ...); with `return_trajectory`, also (num_steps + 1 [+ 1], B, ...): the start, x after
        each step, the denoised x."""
        device = device if device is not None else (x_init.device if x_init is not None else "cpu")
        levels = self.levels(score.sigmas).tolist()
        x = start(shape, x_init, device, lambda s, d: levels[0] * torch.randn(s, device=d, generator=generator))
        trajectory = [x.cpu()] if return_trajectory else None
        bar = tqdm(total=self.num_steps, desc="VE ancestral", leave=False) if show_progress(self.progress, self.num_steps) else None
        for sigma, sigma_next in zip(levels[:-1], levels[1:]):
            drop = sigma**2 - sigma_next**2  # the variance the step removes
            x = x + drop * score(x, torch.full((shape[0],), sigma, device=x.device))
            x = x + (sigma_next**2 * drop / sigma**2) ** 0.5 * torch.randn(x.shape, device=x.device, generator=generator)
            if trajectory is not None:
                trajectory.append(x.cpu())
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        if self.denoise:
            x = x + levels[-1] ** 2 * score(x, torch.full((shape[0],), levels[-1], device=x.device))  # Tweedie at sigma_L
            if trajectory is not None:
                trajectory.append(x.cpu())
        return finish(x, trajectory)

    def __repr__(self) -> str:
        return f"VEAncestralSampler(num_steps={self.num_steps}, denoise={self.denoise})"
