"""Stochastic gradient Langevin dynamics on an energy network: the sampler of IGEBM and JEM.

One step (Du & Mordatch 2019, eq. 2; Grathwohl et al. 2020, eq. 11), with the step size and the
noise set apart as both papers do in practice:

    x_{k+1} = clamp(x_k - step_size * grad_x E(x_k) + noise_std * eps_k),   eps_k ~ N(0, I)

With `noise_std = sqrt(2 * step_size)` (`langevin_noise_std`) this is exactly the unadjusted
Langevin algorithm with step eta = 2 * step_size for p(x) proportional to exp(-E(x)):
x - eta/2 grad E + sqrt(eta) eps, whose stationary law tends to p as eta -> 0. The papers use
far less noise than that (IGEBM: step 10, noise 0.005 on [0, 1] images; JEM: step 1, noise 0.01),
which samples a colder distribution, proportional to exp(-E / T) with T = noise_std^2 / (2 step_size):
sharper samples, at the price of no longer being exact.

The protocol of samplers/base.py: `sample(energy, shape, generator=..., return_trajectory=..., x_init=...)`.
The network is passed in and never owned; only x gets gradients (the parameters' .grad stay
untouched), and sampling works under no_grad and inference mode (e.g. in a test loop).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from tqdm.auto import tqdm

from gen_lightning.samplers.base import finish, show_progress, start


def langevin_noise_std(step_size: float) -> float:
    """The noise that makes the step exact Langevin: sqrt(2 * step_size) (eta = 2 * step_size)."""
    return math.sqrt(2.0 * step_size)


def energy_grad(energy: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """grad_x sum_i E(x_i), i.e. each example's own gradient, `(B, ...) -> (B, ...)`."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(energy(x).sum(), x)
    return grad


class SGLD:
    """`num_steps` SGLD steps of `step_size` and `noise_std`, clamped to `clamp` = (lo, hi) when given."""

    def __init__(
        self,
        num_steps: int,
        step_size: float,
        noise_std: float,
        clamp: tuple[float, float] | None = None,
        progress: bool | None = None,
    ):
        if num_steps < 0:
            raise ValueError(f"num_steps must be >= 0, got {num_steps}")
        if step_size <= 0:
            raise ValueError(f"step_size must be > 0, got {step_size}")
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        if clamp is not None and not clamp[0] < clamp[1]:
            raise ValueError(f"clamp must be (lo, hi) with lo < hi, got {tuple(clamp)}")
        self.num_steps, self.step_size, self.noise_std = num_steps, step_size, noise_std
        self.clamp = tuple(clamp) if clamp is not None else None
        self.progress = progress

    @property
    def temperature(self) -> float:
        """T = noise_std^2 / (2 step_size): 1 for exact Langevin, below 1 for the papers' settings."""
        return self.noise_std**2 / (2.0 * self.step_size)

    def step(self, energy: nn.Module, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = x - self.step_size * energy_grad(energy, x) + self.noise_std * eps
        return x.clamp(*self.clamp) if self.clamp is not None else x

    @torch.no_grad()
    def sample(
        self,
        energy: nn.Module,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        return_trajectory: bool = False,
        x_init: torch.Tensor | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x_K `(B, ...)` from `x_init` (a replay buffer's entries, say) or uniform noise in the clamp box; with
        `return_trajectory`, also `(K + 1, B, ...)` with the start first (on the chains' device)."""
        if x_init is None and self.clamp is None:
            raise ValueError("SGLD without a clamp box has no uniform start; pass x_init")
        lo, hi = self.clamp if self.clamp is not None else (0.0, 1.0)
        # Gradients in x are needed even when called under no_grad or inference mode (sample() at test); the start,
        # a copy made inside this block, is an ordinary tensor even when x_init is an inference tensor.
        with torch.inference_mode(False), torch.enable_grad():
            x = start(shape, x_init, device, lambda s, d: lo + (hi - lo) * torch.rand(s, generator=generator, device=d))
            x = x.clamp(*self.clamp) if self.clamp is not None else x
            trajectory = [x.detach()] if return_trajectory else None
            bar = tqdm(total=self.num_steps, desc="SGLD", leave=False, disable=not show_progress(self.progress, self.num_steps))
            for _ in range(self.num_steps):
                x = self.step(energy, x, generator).detach()
                bar.update(1)
                if trajectory is not None:
                    trajectory.append(x)
            bar.close()
        return finish(x, trajectory)


@torch.no_grad()
def grid_log_normalizer(energy, box: tuple[float, float], size: int, device=None, chunk: int = 16384) -> torch.Tensor:
    """log Z = log of the integral of exp(-E(x)) over the square box [lo, hi]^2, by the midpoint rule on size x size
    cells (the normalizer of a 2-D EBM whose chains stay in the box); `energy`: (B, 2) -> (B,)."""
    lo, hi = box
    h = (hi - lo) / size
    axis = lo + h * (torch.arange(size, device=device) + 0.5)
    points = torch.cartesian_prod(axis, axis)  # (size^2, 2) cell midpoints
    energies = torch.cat([energy(part) for part in points.split(chunk)])
    return torch.logsumexp(-energies, dim=0) + 2 * math.log(h)
