"""One sampler protocol (samplers/base.py): every sampler, given its exact oracle for the same Gaussian data
N(m, s^2 I), draws samples of that law through the same call, seeds, x_init and trajectory conventions."""

import math

import pytest
import torch
from torch import nn

from gen_lightning.samplers import DDIMSampler, DDPMSampler, Denoiser, LinearSchedule
from gen_lightning.samplers.base import Sampler
from gen_lightning.samplers.dpm_solver import DPMSolverPP2MSampler
from gen_lightning.samplers.langevin import AnnealedLangevin, NoiseConditionalScore
from gen_lightning.samplers.ve_ancestral import VEAncestralSampler
from gen_lightning.samplers.ode import EulerSampler, HeunSampler
from gen_lightning.samplers.sgld import SGLD, langevin_noise_std
from gen_lightning.samplers.sigmas import GeometricSigmas

M, S = 1.5, 0.5  # the data: N(M, S^2) in each of 2 dimensions
SCHEDULE = LinearSchedule()


class EpsOracle(nn.Module):
    """E[eps | x_t] of Gaussian data: sqrt(1 - ab) (x_t - sqrt(ab) M) / (ab S^2 + 1 - ab)."""

    def forward(self, xt, t, labels=None):
        ab = SCHEDULE.alpha_bar[SCHEDULE.step_of(t)].reshape(-1, 1)
        return (1 - ab).sqrt() * (xt - ab.sqrt() * M) / (ab * S**2 + 1 - ab)


def velocity(x, t):
    """The exact flow-matching field from N(0, I) at t = 0 to N(M, S^2) at t = 1 (linear interpolation):
    x_t = t M + sigma_t z with sigma_t^2 = (1 - t)^2 + t^2 S^2, so v = M + sigma_t'/sigma_t (x - t M)."""
    var = (1 - t) ** 2 + t**2 * S**2
    return M + (t * S**2 - (1 - t)) / var * (x - t * M)


class Energy(nn.Module):
    def forward(self, x):
        return ((x - M) ** 2).sum(1) / (2 * S**2)


SIGMAS = GeometricSigmas(sigma_max=3.0, sigma_min=0.1, num_levels=10)


def noised_score(x, sigma):
    return -(x - M) / (S**2 + sigma.view(-1, 1) ** 2)


CASES = {  # name: (sampler, the fn it follows)
    "DDPM": (DDPMSampler(), Denoiser(EpsOracle(), SCHEDULE, clip_range=None)),
    "DDIM-50": (DDIMSampler(50), Denoiser(EpsOracle(), SCHEDULE, clip_range=None)),
    "DPM-Solver++(2M)-20": (DPMSolverPP2MSampler(20), Denoiser(EpsOracle(), SCHEDULE, clip_range=None)),
    "Euler-200": (EulerSampler(200), velocity),
    "Heun-50": (HeunSampler(50), velocity),
    "annealed Langevin": (AnnealedLangevin(n_steps_each=100, step_lr=0.01), NoiseConditionalScore(noised_score, SIGMAS)),
    # the VE prior N(0, sigma_1^2) needs sigma_1 well above the data's scale (sigma_1 = 3 would leave M off by 0.04)
    "VE ancestral-200": (VEAncestralSampler(200), NoiseConditionalScore(noised_score, GeometricSigmas(30.0, 0.1, 10))),
    "SGLD": (SGLD(400, 0.01, langevin_noise_std(0.01), clamp=(-10.0, 10.0)), Energy()),
}


@pytest.mark.parametrize("name", CASES)
def test_every_sampler_draws_the_gaussian_with_its_oracle(name):
    sampler, fn = CASES[name]
    assert isinstance(sampler, Sampler)
    n = 4000
    x = sampler.sample(fn, (n, 2), generator=torch.Generator().manual_seed(0))
    assert x.shape == (n, 2)
    # 8,000 values: SE of the mean S / sqrt(8000) = 0.0056, of the std S / sqrt(16000) = 0.004; 5 SE, plus the
    # discretization bias of the coarsest samplers (annealed Langevin with Tweedie's step: std 0.493, see test_langevin.py)
    assert x.mean().item() == pytest.approx(M, abs=0.03)
    assert x.std().item() == pytest.approx(S, abs=0.03)


@pytest.mark.parametrize("name", CASES)
def test_one_call_shape_seeds_starts_and_trajectories(name):
    sampler, fn = CASES[name]
    shape = (6, 2)
    a = sampler.sample(fn, shape, generator=torch.Generator().manual_seed(1))
    b, path = sampler.sample(fn, shape, generator=torch.Generator().manual_seed(1), return_trajectory=True)
    torch.testing.assert_close(a, b)  # one seed, one sample, with or without the trajectory
    assert path.shape[1:] == shape and path.shape[0] >= 2
    torch.testing.assert_close(path[-1], b.cpu())
    start = torch.full(shape, 0.25)
    _, path = sampler.sample(fn, shape, generator=torch.Generator().manual_seed(1), return_trajectory=True, x_init=start)
    torch.testing.assert_close(path[0], start)  # the chains start where the caller says
    with pytest.raises(ValueError, match="x_init has shape"):
        sampler.sample(fn, shape, x_init=torch.zeros(5, 2))


def test_progress_is_one_attribute_with_an_automatic_default():
    assert all(CASES[name][0].progress is None for name in CASES)
    assert math.isclose(SCHEDULE.alpha_bar[-1].item(), 4.036e-5, rel_tol=1e-3)  # x_T is the N(0, I) prior
