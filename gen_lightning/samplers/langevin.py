"""Annealed Langevin dynamics (Song & Ermon 2019, algorithm 1), with NCSNv2's step size and final denoising.

For each noise level sigma_1 > ... > sigma_L, `n_steps_each` Langevin steps at step size
alpha_i = eps * sigma_i^2 / sigma_L^2:

    x <- x + alpha_i / 2 * s(x, sigma_i) + sqrt(alpha_i) * z,   z ~ N(0, I)      (NCSN alg. 1, line 6)

Song & Ermon 2019 wrote alpha_i with sigma_i^2 / sigma_L^2 too; NCSNv2 (Song & Ermon 2020, sec. 3.3,
Technique 4) keeps it and tunes eps for many levels and few steps each. Then, optionally, one denoising
step x <- x + sigma_L^2 * s(x, sigma_L): the posterior mean E[x0 | x] by Tweedie's formula, which removes
the sigma_L noise that Langevin leaves in the samples (NCSNv2 appendix; Jolicoeur-Martineau et al. 2021).

Start: x ~ N(0, sigma_1^2 I) by default, the prior of the variance-exploding SDE (Song et al. 2021),
which sigma_1 (chosen about the largest distance between data points) makes nearly the data's noised
marginal at sigma_1 when the data is centred near 0. NCSN/NCSNv2 started from uniform noise on the
image range instead; `init: uniform` does that on [-1, 1]. Callers may also pass `x_init`.

The sampler keeps the protocol of samplers/base.py, `sample(fn, shape, generator=..., return_trajectory=...,
x_init=...)`, with `fn` a `NoiseConditionalScore`: the model's `score(x, sigma) -> (B, *shape)` (sigma a (B,)
tensor of noise levels) and the levels it was trained on. The sampler never owns a network.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from tqdm.auto import tqdm

from gen_lightning.errors import ConfigError
from gen_lightning.samplers.base import finish, start
from gen_lightning.samplers.sigmas import GeometricSigmas

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Init = Literal["gaussian", "uniform"]


class NoiseConditionalScore:
    """What annealed Langevin follows: `score(x, sigma)` and the noise levels `sigmas` it was trained on."""

    def __init__(self, score: ScoreFn, sigmas: GeometricSigmas):
        self.score, self.sigmas = score, sigmas

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.score(x, sigma)


class AnnealedLangevin:
    """Annealed Langevin dynamics over a `GeometricSigmas`, `n_steps_each` steps per level, step size eps * sigma_i^2 / sigma_L^2.

    `progress_bar_min_steps`: a tqdm bar is shown when the run takes at least this many steps
    (L * n_steps_each); 0 always shows one. `progress` (True/False) overrides it.
    """

    def __init__(
        self,
        n_steps_each: int = 5,
        step_lr: float = 2.5e-5,
        denoise: bool = True,
        init: Init = "gaussian",
        progress_bar_min_steps: int = 2000,
        progress: bool | None = None,
    ):
        if n_steps_each < 1:
            raise ConfigError(f"n_steps_each must be >= 1, got {n_steps_each}")
        if not step_lr > 0:
            raise ConfigError(f"step_lr (eps) must be > 0, got {step_lr}")
        if init not in ("gaussian", "uniform"):
            raise ConfigError(f"init must be 'gaussian' or 'uniform', got {init!r}")
        if progress_bar_min_steps < 0:
            raise ConfigError(f"progress_bar_min_steps must be >= 0, got {progress_bar_min_steps}")
        self.n_steps_each, self.step_lr, self.denoise, self.init = n_steps_each, step_lr, denoise, init
        self.progress_bar_min_steps, self.progress = progress_bar_min_steps, progress

    def network_evaluations(self, sigmas: GeometricSigmas) -> int:
        """Score evaluations per sample: L * n_steps_each, plus one for the denoising step."""
        return len(sigmas) * self.n_steps_each + int(self.denoise)

    def step_sizes(self, sigmas: torch.Tensor) -> torch.Tensor:
        """alpha_i = eps * sigma_i^2 / sigma_L^2, (L,) (NCSN alg. 1, line 3)."""
        return self.step_lr * (sigmas / sigmas[-1]) ** 2

    def initial(self, shape: tuple[int, ...], sigma_1: float, device, generator: torch.Generator | None) -> torch.Tensor:
        """x ~ N(0, sigma_1^2 I), or U[-1, 1] with init 'uniform'."""
        if self.init == "uniform":
            return 2 * torch.rand(shape, device=device, generator=generator) - 1
        return sigma_1 * torch.randn(shape, device=device, generator=generator)

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
        """Samples `shape` = (B, ...); with `return_trajectory`, also (L + 1 [+ 1], B, ...): the start, x after each level, the denoised x."""
        device = device if device is not None else (x_init.device if x_init is not None else "cpu")
        levels = score.sigmas.to(device)  # (L,)
        alphas = self.step_sizes(levels)
        x = start(shape, x_init, device, lambda s, d: self.initial(s, levels[0].item(), d, generator))
        trajectory = [x.cpu()] if return_trajectory else None
        bar = self._progress(len(levels) * self.n_steps_each)
        for sigma, alpha in zip(levels, alphas):
            sigma_b = sigma.expand(shape[0])  # (B,)
            for _ in range(self.n_steps_each):
                z = torch.randn(x.shape, device=x.device, generator=generator)
                x = x + 0.5 * alpha * score(x, sigma_b) + alpha.sqrt() * z  # NCSN alg. 1, line 6
                if bar is not None:
                    bar.update(1)
            if trajectory is not None:
                trajectory.append(x.cpu())
        if bar is not None:
            bar.close()
        if self.denoise:
            x = x + levels[-1] ** 2 * score(x, levels[-1].expand(shape[0]))  # Tweedie: E[x0 | x] at sigma_L
            if trajectory is not None:
                trajectory.append(x.cpu())
        return finish(x, trajectory)

    def _progress(self, total: int):
        auto = self.progress_bar_min_steps == 0 or total >= self.progress_bar_min_steps
        if self.progress if self.progress is not None else auto:
            return tqdm(total=total, desc="annealed Langevin", leave=False, dynamic_ncols=True)
        return None

    def __repr__(self) -> str:
        return (f"AnnealedLangevin(n_steps_each={self.n_steps_each}, step_lr={self.step_lr}, denoise={self.denoise}, "
                f"init={self.init!r})")
