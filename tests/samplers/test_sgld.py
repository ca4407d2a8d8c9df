"""SGLD on a known Gaussian energy E(x) = |x - mu|^2 / (2 s^2), where every step is linear.

With step size h and noise std n, one step is x' = mu + a (x - mu) + n eps with a = 1 - h / s^2,
so the chains' stationary law is N(mu, n^2 / (1 - a^2) I) (an AR(1) process). The coupled
setting n = sqrt(2 h) is the unadjusted Langevin algorithm with step eta = 2h, whose variance
eta / (1 - a^2) tends to s^2 as eta -> 0.
"""

import math

import pytest
import torch
from torch import nn

from gen_lightning.samplers.sgld import SGLD, energy_grad, langevin_noise_std

MU, S = torch.tensor([1.0, -2.0]), 0.5


class GaussianEnergy(nn.Module):
    def __init__(self, mu: torch.Tensor, s: float):
        super().__init__()
        self.mu, self.s = nn.Parameter(mu.clone()), s

    def forward(self, x):
        return (x - self.mu).pow(2).sum(-1) / (2 * self.s**2)


def stationary_var(step_size: float, noise_std: float, s: float = S) -> float:
    a = 1 - step_size / s**2
    return noise_std**2 / (1 - a**2)


def test_coupled_noise_is_exact_langevin():
    eta = 0.02
    sampler = SGLD(1, step_size=eta / 2, noise_std=langevin_noise_std(eta / 2))
    assert sampler.noise_std == pytest.approx(math.sqrt(eta)) and sampler.temperature == pytest.approx(1.0)
    x = torch.tensor([[0.3, 0.4], [2.0, -1.0]])
    out = sampler.sample(GaussianEnergy(MU, S), x.shape, torch.Generator().manual_seed(0), x_init=x)
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    grad_log_p = -(x - MU) / S**2
    torch.testing.assert_close(out, x + eta / 2 * grad_log_p + math.sqrt(eta) * eps)  # ULA, eta = 2 * step_size


def test_energy_grad_is_the_analytic_gradient():
    x = torch.randn(4, 2)
    torch.testing.assert_close(energy_grad(GaussianEnergy(MU, S), x), (x - MU) / S**2)


@pytest.mark.parametrize("step_size, noise_std", [
    (0.005, langevin_noise_std(0.005)),  # exact Langevin, eta = 0.01: variance 0.2513, s^2 = 0.25
    (0.02, 0.05),  # IGEBM-style: less noise than Langevin, a colder (narrower) law
])  # fmt: skip
def test_chains_reach_the_gaussian_mean_and_variance(step_size, noise_std):
    chains, steps = 20000, 300  # a^300 < 1e-5 for both settings
    sampler = SGLD(steps, step_size, noise_std)
    x0 = torch.randn(chains, 2, generator=torch.Generator().manual_seed(1)) * 3
    x = sampler.sample(GaussianEnergy(MU, S), x0.shape, torch.Generator().manual_seed(2), x_init=x0)
    var = stationary_var(step_size, noise_std)
    se_mean, se_var = math.sqrt(var / chains), var * math.sqrt(2 / chains)
    assert torch.allclose(x.mean(0), MU, atol=5 * se_mean)
    assert torch.allclose(x.var(0), torch.full((2,), var), atol=5 * se_var)


@pytest.mark.parametrize("eta", [0.01, 0.001])
def test_coupled_variance_tends_to_the_target(eta):
    # eta / (1 - a^2) with a = 1 - eta / (2 s^2) is s^2 / (1 - eta / (4 s^2)): s^2 as eta -> 0
    var = stationary_var(eta / 2, langevin_noise_std(eta / 2))
    assert var == pytest.approx(S**2 / (1 - eta / (4 * S**2)))
    assert var == pytest.approx(S**2, rel=eta / S**2)


def test_without_noise_it_is_gradient_descent_to_the_mode():
    x0 = torch.tensor([[3.0, 3.0]])
    x = SGLD(10, step_size=0.1, noise_std=0.0).sample(GaussianEnergy(MU, S), x0.shape, x_init=x0)
    a = 1 - 0.1 / S**2  # 0.6
    torch.testing.assert_close(x, MU + a**10 * (x0 - MU))


def test_trajectory_starts_at_x0_and_has_one_entry_per_step():
    x0 = torch.zeros(3, 2)
    x, traj = SGLD(5, 0.01, 0.1).sample(GaussianEnergy(MU, S), x0.shape, return_trajectory=True, x_init=x0)
    assert traj.shape == (6, 3, 2)
    torch.testing.assert_close(traj[0], x0)
    torch.testing.assert_close(traj[-1], x)


def test_clamp_keeps_chains_in_range():
    x = SGLD(20, 0.5, 1.0, clamp=(-1.0, 1.0)).sample(GaussianEnergy(torch.tensor([5.0, 5.0]), 1.0), (100, 2), x_init=torch.zeros(100, 2))
    assert x.min() >= -1 and x.max() <= 1
    assert (x == 1).any()  # the mode lies outside, so chains pile up on the boundary


def test_seeded_generator_reproduces_and_parameters_get_no_grad():
    energy = GaussianEnergy(MU, S)
    sampler = SGLD(5, 0.01, 0.1)
    a = sampler.sample(energy, (4, 2), torch.Generator().manual_seed(3), x_init=torch.zeros(4, 2))
    with torch.inference_mode():  # as in Lightning's test loop
        b = sampler.sample(energy, (4, 2), torch.Generator().manual_seed(3), x_init=torch.zeros(4, 2))
    torch.testing.assert_close(a, b)
    assert energy.mu.grad is None


@pytest.mark.parametrize("kwargs", [
    {"num_steps": -1, "step_size": 0.1, "noise_std": 0.1},
    {"num_steps": 1, "step_size": 0.0, "noise_std": 0.1},
    {"num_steps": 1, "step_size": 0.1, "noise_std": -0.1},
    {"num_steps": 1, "step_size": 0.1, "noise_std": 0.1, "clamp": (1.0, -1.0)},
])  # fmt: skip
def test_bad_settings_raise(kwargs):
    with pytest.raises(ValueError):
        SGLD(**kwargs)
