"""gen_lightning.losses: closed forms checked by hand and against torch.distributions."""

import math

import pytest

import torch
from torch.distributions import Normal, kl_divergence

from gen_lightning import losses


def test_gaussian_kl_by_hand():
    # KL(N(1, 1) || N(0, 1)) = 1/2 (1 + 1 - 1 - 0) = 0.5
    assert torch.allclose(losses.gaussian_kl(torch.tensor([[1.0]]), torch.tensor([[0.0]])), torch.tensor([0.5]))
    # N(0, 1) against itself: 0, summed over 3 latent dims
    assert torch.allclose(losses.gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 3)), torch.zeros(2))


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    q = Normal(mu, torch.exp(0.5 * logvar))
    expected = kl_divergence(q, Normal(torch.zeros(4), torch.ones(4))).sum(-1)
    assert losses.gaussian_kl(mu, logvar).shape == (5,)
    assert torch.allclose(losses.gaussian_kl(mu, logvar), expected, atol=1e-5)


def test_gaussian_log_probs_match_torch_distributions():
    g = torch.Generator().manual_seed(1)
    z, mu, logvar = (torch.randn(3, 5, 4, generator=g) for _ in range(3))
    expected = Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    assert torch.allclose(losses.gaussian_log_prob(z, mu, logvar), expected, atol=1e-5)
    assert torch.allclose(losses.standard_normal_log_prob(z), Normal(0.0, 1.0).log_prob(z).sum(-1), atol=1e-5)
    # by hand: log N(0; 0, 1) = -1/2 log(2 pi)
    assert math.isclose(losses.standard_normal_log_prob(torch.zeros(1, 1)).item(), -0.5 * math.log(2 * math.pi), rel_tol=1e-6)


def test_reparameterize_by_hand():
    # mu = 1, sigma = exp(log 4 / 2) = 2, eps = 0.5 -> z = 1 + 2 * 0.5 = 2
    z = losses.reparameterize(torch.tensor([1.0]), torch.tensor([math.log(4.0)]), torch.tensor([0.5]))
    assert torch.allclose(z, torch.tensor([2.0]))


def test_iwae_log_likelihood_is_log_mean_of_weights():
    # weights 1 and 3 -> log mean = log 2; equal log weights -> that value; K = 1 -> the log weight itself
    log_w = torch.log(torch.tensor([[1.0, 5.0], [3.0, 5.0]]))  # (K=2, B=2)
    assert torch.allclose(losses.iwae_log_likelihood(log_w), torch.log(torch.tensor([2.0, 5.0])))
    assert torch.allclose(losses.iwae_log_likelihood(torch.tensor([[-7.0, 2.0]])), torch.tensor([-7.0, 2.0]))
    # stable far from 0: log weights of -1000 do not underflow
    assert torch.allclose(losses.iwae_log_likelihood(torch.full((100, 1), -1000.0)), torch.tensor([-1000.0]))


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_min_snr_weighting_is_the_clipped_snr_times_the_x0_error(prediction):
    """A net whose three parameterizations all come from one estimate x0 + delta: under Min-SNR-gamma every one
    must cost mean_t min(SNR_t, gamma) * delta^2 (Hang et al. 2023, eq. 6), and the unweighted eps loss SNR_t * delta^2."""
    from gen_lightning.losses import diffusion_simple_loss
    from gen_lightning.samplers.schedules import LinearSchedule

    schedule, delta, gamma = LinearSchedule(), 0.1, 5.0
    x0 = torch.rand(6, 1, 4, 4) * 2 - 1
    t = torch.tensor([0, 10, 100, 300, 600, 999])

    def net_of(kind):
        def net(xt, time, labels):
            x0_hat = x0 + delta
            eps_hat = schedule.eps_from_x0(xt, t, x0_hat)
            ab = schedule.alpha_bar[t].view(-1, 1, 1, 1)
            return {"x0": x0_hat, "eps": eps_hat, "v": ab.sqrt() * eps_hat - (1 - ab).sqrt() * x0_hat}[kind]
        return net

    ab = schedule.alpha_bar[t].double()
    snr = ab / (1 - ab)
    loss = diffusion_simple_loss(net_of(prediction), schedule, x0, t, prediction, generator=torch.Generator().manual_seed(0),
                                 snr_gamma=gamma)
    assert loss.item() == pytest.approx((snr.clamp(max=gamma) * delta**2).mean().item(), rel=1e-3)
    plain = diffusion_simple_loss(net_of("eps"), schedule, x0, t, "eps", generator=torch.Generator().manual_seed(0))
    assert plain.item() == pytest.approx((snr * delta**2).mean().item(), rel=1e-3)
