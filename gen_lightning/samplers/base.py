"""The one sampler protocol: DDPM, DDIM, DPM-Solver++, Euler/Heun ODE, annealed Langevin, VE ancestral and SGLD alike.

    x = sampler.sample(fn, shape, generator=None, return_trajectory=False, x_init=None, device=None)
    x, path = sampler.sample(fn, shape, ..., return_trajectory=True)   # path: (S + 1, *shape) on the CPU

- `fn` is what the sampler follows, built by the model around its network (a sampler never owns a network):
  a `Denoiser` (diffusion samplers: the net with its noise schedule, guidance and labels), a velocity field
  `field(x, t)` (ODE samplers), a `NoiseConditionalScore` (annealed Langevin and VE ancestral: `score(x, sigma)`
  with its noise levels), or an energy network `E(x) -> (B,)` (SGLD).
- The chains start from `x_init` `(B, ...)` when given (reflow pairs, a replay buffer, a test's fixed start),
  else from the sampler's prior drawn with `generator` on `device` (N(0, I); N(0, sigma_1^2 I) or uniform for
  annealed Langevin; uniform in the clamp box for SGLD).
- Every random draw uses `generator`, so one seed gives one sample; `path` holds the start and x after each step.
- `progress`: a tqdm bar over the steps; None shows one for long runs (`PROGRESS_MIN_STEPS`) on a terminal.
"""

from __future__ import annotations

import sys
from typing import Any, Protocol, runtime_checkable

import torch

PROGRESS_MIN_STEPS = 100


@runtime_checkable
class Sampler(Protocol):
    progress: bool | None

    def sample(
        self,
        fn: Any,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        return_trajectory: bool = False,
        x_init: torch.Tensor | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...


def show_progress(progress: bool | None, steps: int, min_steps: int = PROGRESS_MIN_STEPS) -> bool:
    """The bar is shown when asked for, or (progress None) for runs of >= min_steps steps on a terminal."""
    return progress if progress is not None else steps >= min_steps and sys.stderr.isatty()


def start(shape: tuple[int, ...], x_init: torch.Tensor | None, device, draw) -> torch.Tensor:
    """The chains' start: a copy of `x_init` on `device` (its own device when None), else `draw(shape, device)`."""
    if x_init is not None:
        if tuple(x_init.shape) != tuple(shape):
            raise ValueError(f"x_init has shape {tuple(x_init.shape)} but the sampler was asked for {tuple(shape)}")
        return x_init.to(device if device is not None else x_init.device).clone()
    return draw(shape, device if device is not None else "cpu")


def finish(x: torch.Tensor, trajectory: list[torch.Tensor] | None):
    """What `sample` returns: x, or (x, the stacked trajectory) when one was recorded."""
    return (x, torch.stack(trajectory)) if trajectory is not None else x
