"""GMM mode metrics on hand-made sample sets, with answers computed by hand."""

import math

import pytest
import torch

from gen_lightning.data.gmm import GaussianMixture
from gen_lightning.metrics.gmm import gmm_mode_metrics, kl_data_model, reverse_kl_modes


@pytest.fixture
def grid25():
    return GaussianMixture.preset("grid25")


def test_all_samples_in_one_mode(grid25):
    samples = torch.zeros(2500, 2)  # all exactly on the mode at (0, 0)
    m = gmm_mode_metrics(samples, grid25)
    assert m["modes_covered"] == 1
    assert m["high_quality_fraction"] == 1.0
    assert m["reverse_kl_modes"] == pytest.approx(math.log(25))  # KL(delta || uniform over 25) = log 25


def test_uniform_over_modes_is_perfect(grid25):
    samples = grid25.means.float().repeat(100, 1)  # 100 samples exactly on each of the 25 means
    m = gmm_mode_metrics(samples, grid25)
    assert m == {"modes_covered": 25, "num_modes": 25, "high_quality_fraction": 1.0, "reverse_kl_modes": 0.0}


def test_far_from_every_mode(grid25):
    samples = torch.full((2500, 2), 1.0)  # (1, 1) is 1.41 away from the nearest mode: 28 stds
    m = gmm_mode_metrics(samples, grid25)
    assert m["modes_covered"] == 0 and m["high_quality_fraction"] == 0.0
    assert m["reverse_kl_modes"] == math.inf


def test_mode_needs_twenty_high_quality_samples(grid25):
    on_mode = grid25.means[:2].float().repeat_interleave(torch.tensor([20, 19]), dim=0)
    assert gmm_mode_metrics(on_mode, grid25)["modes_covered"] == 1


def test_true_samples_match_the_chi_distribution(grid25):
    # |x - mu| / std of a 2-D isotropic Gaussian is Rayleigh: P(r <= 3) = 1 - exp(-9/2) = 0.98889
    x, _ = grid25.sample(20000, generator=torch.Generator().manual_seed(0))
    m = gmm_mode_metrics(x, grid25)
    assert m["high_quality_fraction"] == pytest.approx(1 - math.exp(-4.5), abs=0.003)
    assert m["modes_covered"] == 25
    assert m["reverse_kl_modes"] < 0.01


def test_reverse_kl_two_modes_by_hand():
    # p = (3/4, 1/4), w = (1/2, 1/2): 3/4 log(3/2) + 1/4 log(1/2)
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert reverse_kl_modes(torch.tensor([3, 1]), torch.tensor([0.5, 0.5], dtype=torch.float64)) == pytest.approx(expected)


def test_kl_data_model_is_zero_for_the_true_density(grid25):
    x, _ = grid25.sample(1000, generator=torch.Generator().manual_seed(1))
    assert kl_data_model(x, grid25.log_prob(x), grid25) == pytest.approx(0.0, abs=1e-12)
    assert kl_data_model(x, grid25.log_prob(x) - 0.5, grid25) == pytest.approx(0.5)
