"""Geometric sigmas and annealed Langevin dynamics, checked against closed forms.

The Langevin tests use the exact score of a Gaussian blurred at level sigma: for data N(mu, s^2 I),
x + sigma z ~ N(mu, (s^2 + sigma^2) I), whose score is -(x - mu) / (s^2 + sigma^2).
"""


import pytest
import torch

from gen_lightning.errors import ConfigError
from gen_lightning.losses import dsm_loss
from gen_lightning.samplers.langevin import AnnealedLangevin, NoiseConditionalScore
from gen_lightning.samplers.sigmas import GeometricSigmas, technique2_ratio_coverage


def gaussian_score(mu: float, s: float):
    """The exact score of N(mu, s^2) blurred by N(0, sigma^2): -(x - mu) / (s^2 + sigma^2)."""
    def score(x, sigma):
        var = s**2 + sigma.view(-1, *([1] * (x.ndim - 1))) ** 2
        return -(x - mu) / var
    return score


# ---- GeometricSigmas ------------------------------------------------------------------------
def test_geometric_sigmas_golden_values():
    sig = GeometricSigmas(sigma_max=10.0, sigma_min=0.01, num_levels=4)
    # 10 * (1e-3)^(k/3): 10, 1, 0.1, 0.01
    torch.testing.assert_close(sig.sigmas, torch.tensor([10.0, 1.0, 0.1, 0.01]))
    assert sig.ratio == pytest.approx(0.1)
    assert len(sig) == 4 and sig.sigmas.dtype == torch.float32


def test_geometric_sigmas_constant_ratio_and_endpoints():
    sig = GeometricSigmas(sigma_max=50.0, sigma_min=0.01, num_levels=232)  # NCSNv2's CIFAR-10 levels
    s = sig.sigmas.double()
    assert s[0].item() == pytest.approx(50.0, rel=1e-6) and s[-1].item() == pytest.approx(0.01, rel=1e-6)
    ratios = s[1:] / s[:-1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, sig.ratio), rtol=1e-5, atol=0)
    assert sig.ratio == pytest.approx(0.9638, abs=1e-4)  # (0.01 / 50)^(1/231)
    # NCSNv2 chose these for CIFAR-10 (D = 3072) so that Technique 2's coverage is ~0.5
    assert technique2_ratio_coverage(sig.ratio, 3 * 32 * 32) == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("kwargs, message", [
    ({"sigma_min": 0.0}, "sigma_min must be > 0"),
    ({"sigma_max": 0.005, "sigma_min": 0.01}, "sigma_max must be > sigma_min"),
    ({"num_levels": 1}, "num_levels must be >= 2"),
])
def test_geometric_sigmas_refuse_bad_settings(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        GeometricSigmas(**kwargs)


# ---- AnnealedLangevin ------------------------------------------------------------------------
def test_step_sizes_and_network_evaluations():
    sig = GeometricSigmas(sigma_max=1.0, sigma_min=0.1, num_levels=2)
    sampler = AnnealedLangevin(n_steps_each=3, step_lr=1e-3, denoise=True)
    # alpha_i = eps sigma_i^2 / sigma_L^2: 1e-3 * 100 and 1e-3 * 1
    torch.testing.assert_close(sampler.step_sizes(sig.sigmas), torch.tensor([0.1, 1e-3]))
    calls = []
    def counting_score(x, sigma):
        calls.append(sigma[0].item())
        return torch.zeros_like(x)
    sampler.sample(NoiseConditionalScore(counting_score, sig), (4, 2))
    assert sampler.network_evaluations(sig) == len(calls) == 2 * 3 + 1
    assert calls == pytest.approx([1.0] * 3 + [0.1] * 3 + [0.1])  # levels in order, then the denoising step at sigma_L
    assert AnnealedLangevin(n_steps_each=3, denoise=False).network_evaluations(sig) == 6


def test_langevin_with_zero_score_is_a_random_walk_of_known_variance():
    """With s = 0 each step adds N(0, alpha_i): from x_init = 0, Var = T * sum_i alpha_i."""
    sig = GeometricSigmas(sigma_max=1.0, sigma_min=0.5, num_levels=2)
    sampler = AnnealedLangevin(n_steps_each=4, step_lr=0.01, denoise=False)
    g = torch.Generator().manual_seed(0)
    x = sampler.sample(NoiseConditionalScore(lambda x, s: torch.zeros_like(x), sig), (20000, 1), g, x_init=torch.zeros(20000, 1))
    expected = 4 * (0.01 * 4 + 0.01)  # alphas 0.04 and 0.01, 4 steps each
    assert x.var().item() == pytest.approx(expected, rel=0.05)  # SE of a variance over 20,000 draws: sqrt(2/N) = 1%


def test_langevin_on_a_gaussian_recovers_its_mean_and_variance():
    """The exact noised score of N(mu, s^2): samples end with mean mu and the discrete chain's stationary variance.

    At the last level the target is N(mu, v), v = s^2 + sigma_L^2, and one step is the AR(1) map
    x <- x - alpha/(2v) (x - mu) + sqrt(alpha) z, whose stationary variance is v / (1 - alpha / (4v)).
    The denoising step x + sigma_L^2 s(x, sigma_L) then scales x - mu by s^2 / v. Both tend to s^2 as
    eps and sigma_L go to 0; here (eps = 0.02, sigma_L = 0.1, s = 0.5) they are 0.2651 and 0.2451.
    """
    mu, s, n, dim = 2.0, 0.5, 10000, 4
    sig = GeometricSigmas(sigma_max=5.0, sigma_min=0.1, num_levels=10)
    v, eps = s**2 + 0.1**2, 0.02
    # 200 steps at alpha_L / (2v) = 0.038 each: (1 - 0.038)^200 ~ 4e-4 of the previous level's error is left
    for denoise, expected_var in [(False, v / (1 - eps / (4 * v))), (True, s**4 / v / (1 - eps / (4 * v)))]:
        sampler = AnnealedLangevin(n_steps_each=200, step_lr=eps, denoise=denoise)
        x = sampler.sample(NoiseConditionalScore(gaussian_score(mu, s), sig), (n, dim), torch.Generator().manual_seed(0))
        # 40,000 values: SE of the mean sqrt(0.265 / 4e4) = 0.0026, of the variance 0.265 sqrt(2 / 4e4) = 0.0019
        assert x.mean().item() == pytest.approx(mu, abs=0.013)  # 5 SE
        assert x.var().item() == pytest.approx(expected_var, abs=0.01)  # 5 SE
        assert x.var().item() == pytest.approx(s**2, abs=0.03)  # the target, up to the discretization bias above


def test_langevin_starts_from_the_sigma_1_prior_or_uniform_and_is_reproducible():
    sig = GeometricSigmas(sigma_max=3.0, sigma_min=0.1, num_levels=3)
    sampler = AnnealedLangevin(n_steps_each=2, step_lr=1e-3)
    score = NoiseConditionalScore(gaussian_score(0.0, 1.0), sig)
    a, traj = sampler.sample(score, (5000, 2), torch.Generator().manual_seed(1), return_trajectory=True)
    b = sampler.sample(score, (5000, 2), torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert traj.shape == (1 + 3 + 1, 5000, 2)  # start, after each level, denoised
    torch.testing.assert_close(traj[-1], a)
    assert traj[0].std().item() == pytest.approx(3.0, rel=0.03)  # x ~ N(0, sigma_1^2 I)
    uniform = AnnealedLangevin(n_steps_each=1, step_lr=1e-3, init="uniform")
    _, traj = uniform.sample(score, (5000, 2), torch.Generator().manual_seed(1), return_trajectory=True)
    assert traj[0].min() >= -1 and traj[0].max() <= 1 and traj[0].var().item() == pytest.approx(1 / 3, rel=0.05)


@pytest.mark.parametrize("kwargs, message", [
    ({"n_steps_each": 0}, "n_steps_each must be >= 1"),
    ({"step_lr": 0.0}, "step_lr"),
    ({"init": "zeros"}, "init must be"),
])
def test_langevin_refuses_bad_settings(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        AnnealedLangevin(**kwargs)


# ---- the denoising score matching loss ---------------------------------------------------------
def test_dsm_loss_of_the_exact_score_is_its_closed_form_minimum():
    """Data N(mu, s^2 I_D), x~ = x0 + sigma z, the exact score -(x~ - mu)/(s^2 + sigma^2):

    sigma s + z = (s^2 z - sigma s w) / (s^2 + sigma^2) with x0 = mu + s w, so E 1/2 ||sigma s + z||^2
    = D/2 * s^2 / (s^2 + sigma^2): 0 for point-mass data (s = 0), where -x~/sigma^2 denoises exactly.
    A zero score gives D/2 (E||z||^2 / 2); a mis-scaled score gives more than the minimum.
    """
    g = torch.Generator().manual_seed(0)
    n, dim, mu, s = 50000, 3, 1.0, 0.5
    for sigma_value in (0.2, 1.0, 3.0):
        x0 = mu + s * torch.randn(n, dim, generator=g)
        z = torch.randn(n, dim, generator=g)
        sigma = torch.full((n,), sigma_value)
        exact = dsm_loss(gaussian_score(mu, s), x0, sigma, z)
        assert exact.shape == (n,)
        minimum = dim / 2 * s**2 / (s**2 + sigma_value**2)
        assert exact.mean().item() == pytest.approx(minimum, rel=0.03)  # per-example values ~ minimum * chi2_3/3: SE 0.4%
        wrong = dsm_loss(lambda x, sg: 1.2 * gaussian_score(mu, s)(x, sg), x0, sigma, z)
        assert wrong.mean().item() > exact.mean().item()
        assert dsm_loss(lambda x, sg: torch.zeros_like(x), x0, sigma, z).mean().item() == pytest.approx(dim / 2, rel=0.02)
    # point mass at 0: the optimal score -x~/sigma^2 leaves nothing to learn, exactly
    x0 = torch.zeros(8, 1, 2, 2)
    z = torch.randn(8, 1, 2, 2, generator=g)
    sigma = torch.linspace(0.1, 2.0, 8)
    loss = dsm_loss(lambda x, sg: -x / sg.view(-1, 1, 1, 1) ** 2, x0, sigma, z)
    torch.testing.assert_close(loss, torch.zeros(8), atol=1e-6, rtol=0)
