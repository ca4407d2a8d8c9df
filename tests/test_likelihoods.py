"""gen_lightning.likelihoods: each distribution normalizes, matches a reference, and refuses data it cannot model."""

import itertools
import math
from types import SimpleNamespace

import pytest
import torch
from torch.distributions import Normal

from gen_lightning.data import GMMDataModule
from gen_lightning.errors import ConfigError
from gen_lightning.likelihoods import Bernoulli, DiscretizedLogistic, Gaussian, dequantize_in_range


def image_data(binarize="none", value_range=(0.0, 1.0), shape=(1, 28, 28)):
    """What `check(dm)` reads from a DataModule."""
    return SimpleNamespace(data_shape=shape, binarize=binarize, value_range=value_range, dataset_name="Tiny")


# ---- Bernoulli ----------------------------------------------------------------------------


def test_bernoulli_sums_to_one_over_all_binary_images():
    logits = torch.tensor([[[[0.3, -1.2], [2.0, 0.0]]]])  # (1, 1, 2, 2): D = 4
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4))).view(16, 1, 2, 2)  # all 2^4 images
    log_p = Bernoulli().log_prob(logits.expand(16, -1, -1, -1), images)
    assert log_p.shape == (16,)
    assert torch.allclose(log_p.exp().sum(), torch.tensor(1.0), atol=1e-6)


def test_bernoulli_by_hand_and_mean():
    # logit 0 -> p = 1/2 for each of 4 pixels: log p(x) = 4 log(1/2) whatever x is
    log_p = Bernoulli().log_prob(torch.zeros(2, 1, 2, 2), torch.tensor([0.0, 1.0]).view(2, 1, 1, 1).expand(2, 1, 2, 2))
    assert torch.allclose(log_p, torch.full((2,), 4 * math.log(0.5)))
    assert torch.allclose(Bernoulli().mean(torch.zeros(1, 1, 2, 2)), torch.full((1, 1, 2, 2), 0.5))
    sample = Bernoulli().sample(torch.zeros(1, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    assert set(sample.unique().tolist()) <= {0.0, 1.0}


def test_bernoulli_refuses_non_binarized_data():
    Bernoulli().check(image_data(binarize="dynamic"))
    with pytest.raises(ConfigError, match="binarize='none'.*'dynamic'"):
        Bernoulli().check(image_data(binarize="none"))
    with pytest.raises(ConfigError, match="binary data"):
        Bernoulli().check(GMMDataModule(preset="ring8"))


# ---- DiscretizedLogistic ------------------------------------------------------------------


def all_256_values_of_one_subpixel(mu: float, log_scale: float) -> torch.Tensor:
    """log P(k) for k = 0..255 of one subpixel (data shape (1, 1, 1)): (256,)."""
    x = (torch.arange(256, dtype=torch.float32) / 255).view(256, 1, 1, 1)
    params = torch.tensor([mu, log_scale]).view(1, 2, 1, 1).expand(256, -1, -1, -1)
    return DiscretizedLogistic().log_prob(params, x)


@pytest.mark.parametrize(
    "mu, log_scale",
    [(0.5, -3.0), (0.0, -5.0), (1.0, -2.0), (0.2, -7.0), (0.7, 2.0), (-3.0, -1.0), (4.0, -7.0), (0.5, -12.0)],
)
def test_discretized_logistic_sums_to_one_over_256_values(mu, log_scale):
    log_p = all_256_values_of_one_subpixel(mu, log_scale)
    assert torch.isfinite(log_p).all()
    assert torch.allclose(log_p.exp().sum(), torch.tensor(1.0), atol=1e-5)


def test_discretized_logistic_matches_cdf_differences():
    # P(k) = sigmoid((x - mu + h)/s) - sigmoid((x - mu - h)/s) inside, the tails at 0 and 255, h = 1/510 (float64 reference)
    mu, s, h = 0.4, math.exp(-3.0), 0.5 / 255
    x = torch.arange(256, dtype=torch.float64) / 255
    cdf_hi, cdf_lo = torch.sigmoid((x - mu + h) / s), torch.sigmoid((x - mu - h) / s)
    expected = cdf_hi - cdf_lo
    expected[0], expected[255] = cdf_hi[0], 1 - cdf_lo[255]
    assert torch.allclose(all_256_values_of_one_subpixel(mu, -3.0).double(), expected.log(), atol=1e-4)


def test_discretized_logistic_edges_and_gradients_are_finite():
    # far tails: x = 255 with mu at 0 and the sharpest scale, and the mass piled at the edges
    params = torch.tensor([[0.0, -7.0], [-5.0, -3.0], [6.0, -3.0]]).view(3, 2, 1, 1).requires_grad_()
    x = torch.tensor([1.0, 0.0, 1.0]).view(3, 1, 1, 1)
    log_p = DiscretizedLogistic().log_prob(params, x)
    assert torch.isfinite(log_p).all() and log_p[0] < -100
    assert torch.allclose(log_p[1:], torch.zeros(2), atol=1e-6)  # all the mass below 0 lands on k = 0, above 1 on k = 255
    log_p.sum().backward()
    assert torch.isfinite(params.grad).all()


def test_discretized_logistic_mean_and_sample_stay_on_the_8bit_grid():
    params = torch.cat([torch.full((4, 3, 2, 2), 0.5), torch.full((4, 3, 2, 2), -4.0)], dim=1)  # (B, 2*C, H, W)
    assert DiscretizedLogistic().mean(params).shape == (4, 3, 2, 2)
    assert torch.allclose(DiscretizedLogistic().mean(torch.full((1, 2, 1, 1), 3.0)), torch.ones(1, 1, 1, 1))
    x = DiscretizedLogistic().sample(params, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 3, 2, 2) and x.min() >= 0 and x.max() <= 1
    assert torch.allclose(x * 255, (x * 255).round(), atol=1e-4)


def test_discretized_logistic_samples_follow_its_probabilities():
    # the sharpest scale (log_scale clamped at -7): draws land in bins 99, 100, 101 as often as log_prob says
    params = torch.tensor([100 / 255, -7.0]).view(1, 2, 1, 1).expand(20_000, -1, -1, -1)
    draws = DiscretizedLogistic().sample(params, generator=torch.Generator().manual_seed(0))
    for k in (99, 100, 101):
        frequency = (torch.round(draws * 255) == k).float().mean()
        probability = DiscretizedLogistic().log_prob(params[:1], torch.full((1, 1, 1, 1), k / 255)).exp()
        assert abs(frequency - probability) < 0.01


def test_discretized_logistic_refuses_data_that_is_not_8bit_in_unit_range():
    DiscretizedLogistic().check(image_data(shape=(3, 32, 32)))
    for dm in (image_data(binarize="dynamic"), image_data(value_range=(-1.0, 1.0)), GMMDataModule(preset="ring8")):
        with pytest.raises(ConfigError, match="8-bit images in \\[0, 1\\]"):
            DiscretizedLogistic().check(dm)


# ---- Gaussian ---------------------------------------------------------------------------------


def test_gaussian_with_decoder_std_matches_torch_normal():
    g = torch.Generator().manual_seed(0)
    mu, log_std, x = torch.randn(5, 2, generator=g), torch.randn(5, 2, generator=g), torch.randn(5, 2, generator=g)
    params = torch.cat([mu, log_std], dim=1)  # (B, 2*C) for data of shape (2,)
    expected = Normal(mu, log_std.exp()).log_prob(x).sum(1)
    assert torch.allclose(Gaussian(min_std=1e-8).log_prob(params, x), expected, atol=1e-4)  # the floor far below
    assert Gaussian().param_shape((2,)) == (4,) and torch.equal(Gaussian().mean(params), mu)


def test_gaussian_std_floor():
    # raw log-std far below log(min_std) is held at the floor: N(0; 0, 0.01^2) has log density -log(0.01 sqrt(2 pi))
    params = torch.tensor([[0.0, -50.0]])
    log_p = Gaussian(min_std=0.01).log_prob(params, torch.zeros(1, 1))
    assert torch.allclose(log_p, torch.tensor([-math.log(0.01 * math.sqrt(2 * math.pi))]), atol=1e-5)


def test_gaussian_global_std_fixed_and_learned():
    x, mu = torch.tensor([[0.5, -1.0]]), torch.tensor([[0.0, 0.0]])
    expected = Normal(mu, 0.3).log_prob(x).sum(1)
    fixed = Gaussian(std=0.3)
    assert fixed.param_shape((1, 4, 4)) == (1, 4, 4)
    assert torch.allclose(fixed.log_prob(mu, x), expected, atol=1e-5)
    assert not fixed.global_log_std.requires_grad
    learned = Gaussian(std=0.3, learn_std=True)
    learned.log_prob(mu, x).sum().backward()
    assert learned.global_log_std.grad is not None


def test_gaussian_dequantizes_8bit_images_into_their_bins():
    k = torch.arange(256, dtype=torch.float32).view(1, 1, 16, 16)
    x = Gaussian(dequantize=True).prepare(k / 255, generator=torch.Generator().manual_seed(0))
    assert ((x * 256 >= k) & (x * 256 < k + 1)).all()  # (k + u)/256 with u in [0, 1)
    assert torch.equal(Gaussian().prepare(k / 255), k / 255)


def test_gaussian_refuses_bad_values_and_dequantizing_non_images():
    for kwargs, message in [({"std": -1.0}, "std must be > 0"), ({"min_std": 0.0}, "min_std"), ({"learn_std": True}, "learn_std")]:
        with pytest.raises(ConfigError, match=message):
            Gaussian(**kwargs)
    Gaussian().check(GMMDataModule(preset="ring8"))
    Gaussian(dequantize=True).check(image_data(shape=(3, 32, 32)))
    with pytest.raises(ConfigError, match="dequantize: false"):
        Gaussian(dequantize=True).check(GMMDataModule(preset="ring8"))


def test_dequantize_in_range_keeps_each_8bit_value_in_its_own_bin():
    """x = lo + (hi - lo) k/255 -> lo + (hi - lo)(k + u)/256: bin k of 256 equal bins of [lo, hi), any range."""
    k = torch.arange(256, dtype=torch.float64).repeat(40)
    for lo, hi in [(-1.0, 1.0), (0.0, 1.0)]:
        y = dequantize_in_range(lo + (hi - lo) * k / 255, (lo, hi), torch.Generator().manual_seed(0))
        assert torch.equal(torch.floor((y - lo) / (hi - lo) * 256), k)
        u = (y - lo) / (hi - lo) * 256 - k  # the noise: U[0, 1), mean 1/2, sd 1/sqrt(12) over 10,240 draws
        assert abs(u.mean().item() - 0.5) < 4 / math.sqrt(12 * u.numel())
