"""VE ancestral sampling (Song et al. 2021, appendix F) against closed forms.

With the exact score of a point mass mu blurred at level sigma, s(x, sigma) = -(x - mu) / sigma^2, the ancestral
step keeps x - mu ~ N(0, sigma'^2 I) exactly, and Tweedie's step then lands on mu. With Gaussian data N(mu, s^2),
one step from a fixed x has the true reverse mean mu + (x - mu)(s^2 + sigma'^2) / (s^2 + sigma^2) and the
ancestral variance sigma'^2 (sigma^2 - sigma'^2) / sigma^2.
"""

import math

import pytest
import torch

from gen_lightning.errors import ConfigError
from gen_lightning.samplers.langevin import NoiseConditionalScore
from gen_lightning.samplers.sigmas import GeometricSigmas
from gen_lightning.samplers.ve_ancestral import VEAncestralSampler

MU = 0.7


def blurred_gaussian_score(s: float):
    """The exact score of N(MU, s^2) blurred by N(0, sigma^2); s = 0 is the point mass."""
    def score(x, sigma):
        return -(x - MU) / (s**2 + sigma.view(-1, *([1] * (x.ndim - 1))) ** 2)
    return score


def test_levels_are_geometric_from_sigma_max_to_sigma_min():
    levels = VEAncestralSampler(num_steps=3).levels(GeometricSigmas(sigma_max=10.0, sigma_min=0.01, num_levels=1000))
    torch.testing.assert_close(levels, torch.tensor([10.0, 1.0, 0.1, 0.01], dtype=torch.float64))
    assert VEAncestralSampler(num_steps=3).network_evaluations(GeometricSigmas()) == 4  # 3 steps and Tweedie's
    assert VEAncestralSampler(num_steps=3, denoise=False).network_evaluations(GeometricSigmas()) == 3


@pytest.mark.parametrize("steps", [1, 5, 40])
def test_a_point_mass_is_drawn_exactly_at_every_level(steps):
    sigmas = GeometricSigmas(sigma_max=5.0, sigma_min=0.05, num_levels=10)
    sampler = VEAncestralSampler(num_steps=steps)
    n = 20000
    g = torch.Generator().manual_seed(0)
    start = MU + 5.0 * torch.randn(n, 1, generator=g)  # the point mass blurred at sigma_1: the chain's exact start
    x, path = sampler.sample(NoiseConditionalScore(blurred_gaussian_score(0.0), sigmas), (n, 1), generator=g,
                             return_trajectory=True, x_init=start)
    assert path.shape == (steps + 2, n, 1)  # the start, each step, Tweedie's step
    # each level's marginal is N(MU, sigma_k^2): std within 4 standard errors (sigma / sqrt(2n))
    for k, sigma in enumerate(sampler.levels(sigmas).tolist()):
        assert path[k].std().item() == pytest.approx(sigma, rel=4 / math.sqrt(2 * n))
        assert path[k].mean().item() == pytest.approx(MU, abs=4 * sigma / math.sqrt(n))
    torch.testing.assert_close(x, torch.full((n, 1), MU), atol=1e-5, rtol=0)  # Tweedie's step lands on the point


def test_one_step_has_the_posterior_mean_and_the_ancestral_variance():
    s, sigma, sigma_next = 0.5, 2.0, 1.0
    sigmas = GeometricSigmas(sigma_max=sigma, sigma_min=sigma_next, num_levels=2)
    n, x0 = 40000, 2.3
    x = VEAncestralSampler(num_steps=1, denoise=False).sample(
        NoiseConditionalScore(blurred_gaussian_score(s), sigmas), (n, 1), generator=torch.Generator().manual_seed(0),
        x_init=torch.full((n, 1), x0))
    mean = MU + (x0 - MU) * (s**2 + sigma_next**2) / (s**2 + sigma**2)
    std = math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)
    assert x.mean().item() == pytest.approx(mean, abs=4 * std / math.sqrt(n))
    assert x.std().item() == pytest.approx(std, rel=4 / math.sqrt(2 * n))


def test_bad_step_count_is_one_clear_error():
    with pytest.raises(ConfigError, match="num_steps must be >= 1, got 0"):
        VEAncestralSampler(num_steps=0)
