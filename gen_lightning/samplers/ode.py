"""ODE samplers and probability-flow likelihoods for continuous-time models (flow matching, DDPM's PF-ODE).

A *field* is a callable `field(x, t) -> dx/dt` with `x` a batch `(B, ...)` and `t` a Python float.
Flow matching integrates its velocity from t = 0 (noise, N(0, I)) to t = 1 (data); the same code
integrates any other field (DDPM's probability-flow ODE in `ddpm_ode_log_prob`) on any grid of times.

Samplers (the protocol of samplers/base.py: `sample(field, shape, generator=..., return_trajectory=...,
x_init=...)`, a tqdm bar on long runs):

- `EulerSampler(num_steps)`: x_{k+1} = x_k + h v(x_k, t_k); first order, `num_steps` evaluations.
- `HeunSampler(num_steps)`: EDM's second-order step (Karras et al. 2022, Algorithm 1 without churn):
  x' = x_k + h v(x_k, t_k), x_{k+1} = x_k + h/2 (v(x_k, t_k) + v(x', t_{k+1})); 2 `num_steps` evaluations.
  Halving h divides Euler's global error by ~2 and Heun's by ~4 (tests/samplers/test_ode.py).

Likelihood (Chen et al. 2018; Grathwohl et al. 2019; Song et al. 2021, sec. D.2): along the ODE,
d log p_t(x(t))/dt = -div v(x(t), t), so for data x at t = 1,

    log p_1(x) = log p_0(x(0)) + integral_0^1 div v(x(t), t) dt,

integrated backwards from the data with Heun's rule on the augmented state (x, integral).
`div v` is exact (one vector-Jacobian product per dimension) or Hutchinson's estimate
E_e[e^T (dv/dx) e] with `probes` Rademacher vectors e, drawn once per example from `generator`
and kept fixed along the path (FFJORD's choice), which makes the log-density an unbiased estimate.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from gen_lightning.errors import ConfigError
from gen_lightning.samplers.base import finish, show_progress, start

Field = Callable[[torch.Tensor, float], torch.Tensor]


class ODESampler(abc.ABC):
    """Integrates dx/dt = field(x, t) over `num_steps` equal steps of [t_start, t_end] (default 0 -> 1).

    Subclasses define the one-step rule `step` (EulerSampler, HeunSampler)."""

    evaluations_per_step = 1

    def __init__(self, num_steps: int = 50, progress: bool | None = None):
        if num_steps < 1:
            raise ConfigError(f"num_steps must be >= 1, got {num_steps}")
        self.sampling_steps, self.progress = num_steps, progress

    @property
    def evaluations(self) -> int:
        """Network evaluations per sample (twice as many with classifier-free guidance)."""
        return self.sampling_steps * self.evaluations_per_step

    def times(self, t_start: float = 0.0, t_end: float = 1.0) -> list[float]:
        return [t_start + (t_end - t_start) * k / self.sampling_steps for k in range(self.sampling_steps + 1)]

    @abc.abstractmethod
    def step(self, field: Field, x: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
        """x(t_next) from x(t)."""

    @torch.no_grad()
    def sample(
        self,
        field: Field,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        return_trajectory: bool = False,
        x_init: torch.Tensor | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x(1) of shape `shape`, from x(0) = `x_init` or ~ N(0, I) drawn with `generator` on `device`.

        With `return_trajectory`, also (S + 1, *shape) on the CPU: x(0), then x after each of the S steps.
        """
        x = start(shape, x_init, device, lambda s, d: torch.randn(s, generator=generator, device=d))
        return self.integrate(field, x, 0.0, 1.0, return_trajectory)

    @torch.no_grad()
    def integrate(self, field: Field, x: torch.Tensor, t_start: float, t_end: float, return_trajectory: bool = False):
        """x(t_end) from x(t_start); backwards in time when t_end < t_start (e.g. data -> noise)."""
        ts = self.times(t_start, t_end)
        trajectory = [x.cpu()] if return_trajectory else None
        show = show_progress(self.progress, self.sampling_steps)
        for t, t_next in tqdm(list(zip(ts[:-1], ts[1:])), desc=type(self).__name__, leave=False, disable=not show):
            x = self.step(field, x, t, t_next)
            if trajectory is not None:
                trajectory.append(x.cpu())
        return finish(x, trajectory)


class EulerSampler(ODESampler):
    """x_{k+1} = x_k + (t_{k+1} - t_k) v(x_k, t_k)."""

    def step(self, field: Field, x: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
        return x + (t_next - t) * field(x, t)


class HeunSampler(ODESampler):
    """EDM's second-order step: an Euler predictor, then the trapezoidal average of the two slopes."""

    evaluations_per_step = 2

    def step(self, field: Field, x: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
        h = t_next - t
        d = field(x, t)
        d_next = field(x + h * d, t_next)
        return x + 0.5 * h * (d + d_next)


# ---- probability-flow likelihoods ---------------------------------------------------------------------


def divergence(field: Field, x: torch.Tensor, t: float, probes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(field(x, t), div_x field) per example, the divergence exact (`probes` None) or Hutchinson's estimate.

    `probes`: (K, *x.shape) fixed random vectors; the estimate is mean_k e_k^T J e_k (one VJP each).
    The exact trace costs one VJP per dimension, for low-dimensional data.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = field(x, t)
        if probes is None:
            flat = v.flatten(1)
            div = torch.zeros(x.shape[0], device=x.device, dtype=v.dtype)
            for i in range(flat.shape[1]):
                (g,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)
                div = div + g.flatten(1)[:, i]
        else:
            div = torch.zeros(x.shape[0], device=x.device, dtype=v.dtype)
            for k, e in enumerate(probes):
                (g,) = torch.autograd.grad(v, x, grad_outputs=e, retain_graph=k + 1 < len(probes))
                div = div + (g * e).flatten(1).sum(1)
            div = div / len(probes)
    return v.detach(), div.detach()


def rademacher_probes(k: int, shape: tuple[int, ...], generator: torch.Generator | None, device) -> torch.Tensor:
    """(k, *shape) entries +-1 with probability 1/2 each."""
    return torch.randint(0, 2, (k, *shape), generator=generator, device=device).float() * 2 - 1


def autograd_ready(t: torch.Tensor | None) -> torch.Tensor | None:
    """A copy of `t` that autograd may save (a label lookup, say), even where `t` was made in inference mode, as
    Lightning's test loop makes its batches: ode_log_prob differentiates the field, and the field reads it."""
    if t is None:
        return None
    with torch.inference_mode(False):
        return t.clone()


def ode_log_prob(
    field: Field,
    x: torch.Tensor,
    times: Sequence[float],
    prior_log_prob: Callable[[torch.Tensor], torch.Tensor],
    probes: int | None = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """log p(x) per example (B,), nats: x sits at times[0]; Heun's rule carries (x, integral of div) to times[-1],
    where `prior_log_prob` is known. `probes` None: the exact trace; k: Hutchinson with k Rademacher probes."""
    if probes is not None and probes < 1:
        raise ConfigError(f"probes must be >= 1 (Hutchinson) or None (exact trace), got {probes}")
    # gradients in x are needed even under no_grad or inference mode (Lightning's test loop)
    with torch.inference_mode(False), torch.enable_grad():
        return _ode_log_prob(field, x.detach().clone(), times, prior_log_prob, probes, generator)


def _ode_log_prob(field, x, times, prior_log_prob, probes, generator) -> torch.Tensor:
    e = None if probes is None else rademacher_probes(probes, tuple(x.shape), generator, x.device)
    integral = torch.zeros(x.shape[0], device=x.device)
    v, div = divergence(field, x, times[0], e)
    for t, t_next in zip(times[:-1], times[1:]):
        h = t_next - t
        x_pred = x + h * v
        v_next, div_next = divergence(field, x_pred, t_next, e)
        x = x + 0.5 * h * (v + v_next)
        integral = integral + 0.5 * h * (div + div_next)
        v, div = (v_next, div_next) if t_next == times[-1] else divergence(field, x, t_next, e)
    # d log p_t(x(t)) / dt = -div v along the path, so log p(x at times[0]) = log p(x at times[-1]) + integral
    # of div v dt from times[0] to times[-1] (signed: negative when the integration runs backwards in time)
    return prior_log_prob(x) + integral.float()


def likelihood_grid(steps: int, power: float = 3.0) -> list[float]:
    """Fractions u_k = (k / steps)^power, k = 0..steps, of the way from the data (u = 0) to the noise (u = 1): the
    steps of a likelihood integration. A model of dequantized 8-bit data has a stiff field at the data end (it must
    put each pixel's mass into a bin 1/256 wide), so equal steps there under-resolve the divergence: on the MNIST
    flow matching recipe, 50 equal Heun steps gave 0.94 bits/dim, 200 gave 1.56, while power 3 gives 1.64, 1.67,
    1.67 at 50, 100, 200 steps (docs/results/flow_matching.md)."""
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    return [(k / steps) ** power for k in range(steps + 1)]


def standard_normal_log_prob(x: torch.Tensor, variance: float = 1.0) -> torch.Tensor:
    d = x[0].numel()
    return -0.5 * (x.flatten(1).float() ** 2).sum(1) / variance - 0.5 * d * math.log(2 * math.pi * variance)


def ddpm_ode_log_prob(denoiser, x: torch.Tensor, num_steps: int = 100, probes: int | None = 1,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """log p(x) per example (B,), nats, of a DDPM's probability-flow ODE (DDIM's ODE, Song et al. 2021a eq. 14).

    With y = x_t / sqrt(alpha_bar_t) and s_t = sqrt((1 - alpha_bar_t) / alpha_bar_t), the deterministic
    DDIM sampler is Euler's method for dy/ds = eps_hat(sqrt(alpha_bar_t) y, t). The model's density of the
    data is that of y at the first timestep (s_0 = 0.01 for the linear schedule); at the last one
    y ~ N(0, (1 + s^2) I), since x_T ~ N(0, I). Heun's rule runs on the timesteps nearest to `num_steps` equal
    steps in log s (distinct ones: near t = 0, where s grows fastest, every timestep is used), where the network was
    trained, with the unclipped eps prediction (`denoiser.clip_range` None). Equal steps in t under-resolve the data
    end, where the field of dequantized images is stiff (see `likelihood_grid`).
    """
    schedule = denoiser.schedule
    ab = schedule.alpha_bar_f64
    log_s = 0.5 * torch.log((1 - ab) / ab)  # (T,), increasing
    targets = torch.linspace(log_s[0].item(), log_s[-1].item(), num_steps + 1, dtype=log_s.dtype)
    steps = sorted({int(torch.argmin((log_s - v).abs())) for v in targets})  # equal steps in log s, on trained timesteps
    s_of = {t: math.sqrt((1 - ab[t].item()) / ab[t].item()) for t in steps}
    t_of = {s: t for t, s in s_of.items()}

    def field(y: torch.Tensor, s: float) -> torch.Tensor:
        t = t_of[s]
        tb = torch.full((y.shape[0],), t, device=y.device, dtype=torch.long)
        return denoiser(math.sqrt(ab[t].item()) * y, tb)[1]

    s_last = s_of[steps[-1]]
    return ode_log_prob(field, x, [s_of[t] for t in steps], lambda y: standard_normal_log_prob(y, 1 + s_last**2), probes, generator)
